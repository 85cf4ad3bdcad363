"""``python -m server --workers N`` (N >= 2): a supervisor and N worker processes.

One Python event loop saturates near one core; worker processes serve on every core.
Each worker is a fresh interpreter (``sys.executable -m server``), never a fork of a
process that holds gRPC or ORT state, with its own ORT session(s) and batchers. All
bind the public gRPC port with SO_REUSEPORT, so the kernel spreads connections over
them. The supervisor imports neither gRPC nor ONNX Runtime; it

- reserves the public port (bound, never listening: it gets no connections) so that
  port 0 resolves to one port for every worker and a taken port fails at once;
- runs the workers, and restarts one that dies (backing off if it keeps dying);
- replaces a worker that hangs: each worker's event loop touches ``worker-<i>.alive``
  every second; one whose file is older than LATE_S is reported (log,
  ``onnxserve_workers_unresponsive``, ``onnxserve_server_ready`` 0), and one older
  than ``--worker-hang-timeout-s`` is killed (SIGKILL) and restarted;
- forwards SIGTERM/SIGINT to every worker (each drains as a lone server does) and
  exits 0 once all exited cleanly;
- serves the one public /metrics: every worker's private /metrics, summed
  (server.cluster.metrics_merge), whose counters never go back when a worker dies or
  hangs, with its own ``onnxserve_workers``, ``onnxserve_workers_unresponsive``,
  ``onnxserve_worker_restarts_total`` and ``onnxserve_worker_hangs_total``.

The workers keep the rest one server among themselves (server.cluster.worker):
statistics, readiness and model load/unload fan out over private unix sockets.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.config import ServerConfig, effective_workers
from server.core.errors import StartupError

log = logging.getLogger("server.cluster.supervisor")

POLL_S = 0.05
# A worker that dies within this long of its start counts as crashing: restarts back
# off (0.5 s doubling to 30 s) instead of spinning.
CRASH_WINDOW_S = 10.0
MAX_BACKOFF_S = 30.0
# A worker's heartbeat (server.cluster.worker.heartbeat_forever) older than this (or
# than half the hang timeout, if less) is reported as unresponsive.
LATE_S = 5.0


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    crashes: int = 0  # consecutive quick deaths
    respawn_at: float | None = None
    exit_code: int | None = None
    late_since: float | None = None  # heartbeat stale since (wall clock), None = beating

    @property
    def pid(self) -> int | None:
        proc = self.proc  # read once: the metrics thread asks while the loop replaces it
        return proc.pid if proc is not None else None


def threads_per_worker(config: ServerConfig, count: int) -> int:
    """ORT intra-op threads of each worker: the requested (or CPU) count shared out."""
    total = config.intra_op_threads or os.cpu_count() or 1
    return max(1, total // count)


def reserve_port(host: str, port: int, what: str = "gRPC",
                 flag: str = "--grpc-port") -> socket.socket:
    """A bound, non-listening SO_REUSEPORT socket on the public port (0 = a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen for {what} on {host}:{port}: "
                           f"{exc.strerror or exc}; pick another with {flag} (0 = any free "
                           "port)") from None
    return sock


def die_with_parent() -> None:
    """A worker ends (SIGTERM: drains) if its supervisor is killed outright (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


FOLDER_PREFIX = "onnxserve-workers-"


def remove_orphaned_folder(folder: Path, supervisor_pid: int) -> None:
    """A worker's last act when its supervisor was killed outright (it cannot clean up):
    remove the private folder. The other workers' open sockets keep working."""
    if os.getppid() != supervisor_pid:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_folders(temp_dir: Path) -> None:
    """Folders of supervisors that died without cleaning up (``kill -9`` of the whole
    group, a crash): their name carries the dead supervisor's pid."""
    for folder in temp_dir.glob(FOLDER_PREFIX + "*"):
        pid = folder.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by a supervisor that was killed", folder)
        except PermissionError:  # alive, someone else's
            continue


class Supervisor:
    def __init__(self, config: ServerConfig, argv: list[str], count: int):
        self.config = config
        self.argv = argv
        self.count = count
        self.workers = [Worker(i) for i in range(count)]
        self.restarts = 0
        self.hangs = 0
        self.stopping = False
        self.announced = False
        remove_stale_folders(Path(tempfile.gettempdir()))
        self.folder = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-"))
        self.port = 0
        self.http_port = 0
        self._reserved: socket.socket | None = None
        self._reserved_http: socket.socket | None = None
        self._metrics = None

    # ---- life cycle -------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._reserved = reserve_port(self.config.grpc_host, self.config.grpc_port)
            self.port = self._reserved.getsockname()[1]
            log.info("gRPC listening on %s:%d (%s; %d worker processes, SO_REUSEPORT)",
                     self.config.grpc_host, self.port,
                     "TLS" if self.config.tls_cert_file else "plaintext", self.count)
            self._start_metrics()
            if self.config.http_enabled:
                # REST: the same SO_REUSEPORT pattern; its readiness, statistics and
                # load/unload go through each worker's dataplane and coordinator.
                self._reserved_http = reserve_port(self.config.http_host,
                                                   self.config.http_port, "HTTP",
                                                   "--http-port")
                self.http_port = self._reserved_http.getsockname()[1]
                log.info("HTTP listening on %s:%d (%d worker processes, SO_REUSEPORT)",
                         self.config.http_host, self.http_port, self.count)
            for worker in self.workers:
                self._spawn(worker)
            self._loop()
        finally:
            self._cleanup()
        failed = [w.index for w in self.workers if w.exit_code not in (0, None)]
        if failed:
            log.error("workers %s exited with errors", failed)
            return 1
        log.info("stopped")
        return 0

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("signal %d: stopping every worker (each drains)", signum)
        self.stopping = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                try:
                    worker.proc.send_signal(signal.SIGTERM)
                except OSError:
                    pass

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            for worker in self.workers:
                self._check(worker, now)
            if self.stopping and all(w.proc is None for w in self.workers):
                return
            if not self.announced:
                self._announce_when_started()
            time.sleep(POLL_S)

    def _check(self, worker: Worker, now: float) -> None:
        if worker.proc is None:
            if worker.respawn_at is not None and now >= worker.respawn_at and not self.stopping:
                self._spawn(worker)
            return
        code = worker.proc.poll()
        if code is None:
            self._check_heartbeat(worker)
            return
        worker.proc, worker.exit_code = None, code
        self._forget_files(worker.index)
        if self.stopping:
            return
        # Died on its own: only its in-flight requests are lost; a new one takes over.
        self.restarts += 1
        quick = now - worker.started_at < CRASH_WINDOW_S
        worker.crashes = worker.crashes + 1 if quick else 0
        delay = 0.0 if not worker.crashes else min(MAX_BACKOFF_S, 0.5 * 2 ** (worker.crashes - 1))
        worker.respawn_at = now + delay
        log.error("worker %d exited unexpectedly (code %s); restarting it%s", worker.index,
                  code, f" in {delay:.1f} s" if delay else "")
        worker.late_since = None
        if not self.announced and worker.crashes >= 3:
            # Crashing at start-up, again and again: give up rather than spin forever.
            log.error("worker %d keeps failing at start-up; stopping the server", worker.index)
            self._on_signal(signal.SIGTERM, None)

    def _check_heartbeat(self, worker: Worker) -> None:
        timeout = self.config.worker_hang_timeout_s
        if not timeout or self.stopping:
            return
        try:
            age = time.time() - (self.folder / f"worker-{worker.index}.alive").stat().st_mtime
        except OSError:  # not beating yet: still importing or loading its models
            return
        if age < min(LATE_S, timeout / 2):
            if worker.late_since is not None:
                log.warning("worker %d answers again after %.1f s", worker.index,
                            time.time() - worker.late_since)
                worker.late_since = None
            return
        if worker.late_since is None:
            worker.late_since = time.time() - age
            log.warning("worker %d (pid %d) has not answered for %.1f s: reported not "
                        "ready; it is replaced after %.0f s (--worker-hang-timeout-s)",
                        worker.index, worker.pid, age, timeout)
        if age >= timeout:
            self.hangs += 1
            log.error("worker %d (pid %d) has not answered for %.1f s (--worker-hang-"
                      "timeout-s %.0f): killing it; a new one takes over", worker.index,
                      worker.pid, age, timeout)
            worker.proc.kill()  # SIGKILL ends a stopped (SIGSTOP) process too
            worker.proc.wait()
            self.restarts += 1
            worker.proc, worker.exit_code = None, -signal.SIGKILL
            worker.late_since = None
            self._forget_files(worker.index)
            worker.crashes, worker.respawn_at = 0, time.monotonic()

    def unresponsive(self) -> int:
        return sum(1 for w in self.workers if w.proc is not None and w.late_since is not None)

    def _spawn(self, worker: Worker) -> None:
        self._forget_files(worker.index)
        command = [sys.executable, "-m", "server", *self.argv,
                   "--grpc-port", str(self.port),
                   "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                   *(("--http-port", str(self.http_port)) if self.config.http_enabled
                     else ()),
                   "--intra-op-threads", str(threads_per_worker(self.config, self.count)),
                   "--workers", "1", "--worker-index", str(worker.index),
                   "--worker-dir", str(self.folder), "--worker-count", str(self.count)]
        worker.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        worker.started_at = time.monotonic()
        worker.respawn_at = None
        worker.exit_code = None
        log.info("worker %d started (pid %d, folder %s)", worker.index, worker.proc.pid,
                 self.folder)

    def _forget_files(self, index: int) -> None:
        for suffix in ("started", "metrics", "alive"):
            (self.folder / f"worker-{index}.{suffix}").unlink(missing_ok=True)

    def _announce_when_started(self) -> None:
        """One "server ready" (or "NOT ready") line once every worker has started."""
        states = []
        for worker in self.workers:
            try:
                states.append((self.folder / f"worker-{worker.index}.started").read_text())
            except OSError:
                return
        self.announced = True
        problems = [f"worker {i}: {s}" for i, s in enumerate(states) if s != "ready"]
        if problems:
            log.warning("server started but NOT ready: %s", "; ".join(problems))
        else:
            log.info("server ready: %d workers serving on port %d", self.count, self.port)

    # ---- metrics ----------------------------------------------------------------------
    def _start_metrics(self) -> None:
        if not self.config.metrics_enabled:
            return
        from server.observability import metrics_http
        from server.cluster.metrics_merge import supervisor_registry
        registry = supervisor_registry(self)
        try:
            self._metrics = metrics_http.start(self.config.metrics_host,
                                               self.config.metrics_port, registry)
        except OSError as exc:
            raise StartupError(f"cannot serve /metrics on {self.config.metrics_host}:"
                               f"{self.config.metrics_port}: {exc.strerror or exc}; pick "
                               "another port with --metrics-port (0 = any free port)") from None
        log.info("metrics listening on http://%s:%d/metrics", self.config.metrics_host,
                 self._metrics.server_address[1])

    def scrape_targets(self) -> list[tuple[int, int | None, int | None]]:
        """(index, pid, private /metrics port) of every worker; port None for one that
        is not running, has not published its port yet, or is unresponsive."""
        targets = []
        for worker in self.workers:
            port = None
            if worker.proc is not None and worker.late_since is None:
                try:
                    port = int((self.folder / f"worker-{worker.index}.metrics").read_text())
                except (OSError, ValueError):
                    pass
            targets.append((worker.index, worker.pid, port))
        return targets

    def live_workers(self) -> int:
        return sum(1 for w in self.workers if w.proc is not None and w.proc.poll() is None)

    def _cleanup(self) -> None:
        for worker in self.workers:  # only after an error in the supervisor itself
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.terminate()
                try:
                    worker.exit_code = worker.proc.wait(self.config.drain_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    worker.proc.kill()
        if self._metrics is not None:
            from server.observability import metrics_http
            metrics_http.stop(self._metrics)
        for reserved in (self._reserved, self._reserved_http):
            if reserved is not None:
                reserved.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def supervise(config: ServerConfig, argv: list[str]) -> int:
    count = effective_workers(config)
    try:
        return Supervisor(config, argv, count).run()
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    finally:
        logging.shutdown()
