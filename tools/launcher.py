"""One way to start the server for the tools and the tests: ``python -m server`` as a
subprocess on ports the OS picks, its log read in a thread.

    with ServerLauncher("models", "--workers", "2") as server:
        print(server.address, server.http_url, server.metrics_port, server.rss_mib())

The gRPC, REST and metrics ports come from the server's own start-up lines ("gRPC
listening on HOST:PORT", "HTTP listening on HOST:PORT", "metrics listening on
http://HOST:PORT/metrics"); start-up ends at "server ready" or "... NOT ready ...".
``tests/conftest.py::ServerProcess``, ``tools.soak.Server``, ``tools.bench.BenchServer``
and ``tools.rest_bench`` are this class, or thin subclasses of it.

Talks to the server only as a process and through its log: nothing here imports the
serving package (and the tools import from it only ``server.client`` and
``server.protocol``; ``tools/pathbench.py`` aside, and ``tools/bench.py``'s tokenizer).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

_GRPC_RE = re.compile(r"gRPC listening on \S+:(\d+)")
_HTTP_RE = re.compile(r"HTTP listening on \S+:(\d+)")
_METRICS_RE = re.compile(r"metrics listening on http://\S+:(\d+)/metrics")
READY, NOT_READY = "server ready", "NOT ready"


class LaunchError(RuntimeError):
    """The server did not start, exited during start-up, or started but is not ready."""


class ServerLauncher:
    """``python -m server`` in a subprocess on OS-chosen local ports, until :meth:`stop`.

    ``extra_args`` come after the launcher's own flags (the server's last flag wins, so
    they can override any of them). The constructor waits for start-up unless
    ``wait=False`` (then call :meth:`wait_ready`); with ``expect_ready`` a server that
    starts NOT ready is stopped and raises :class:`LaunchError`, like one that exits or
    is too slow. ``cwd`` is where ``python -m server`` runs (whose checkout serves;
    default: this repository); a relative ``repository`` is taken from the caller's
    working directory. ``max_lines`` keeps only the newest lines of the log (for long
    runs with an access log); by default every line is kept.
    """

    def __init__(self, repository: str | os.PathLike, *extra_args: str,
                 env: dict | None = None, cwd: str | os.PathLike | None = None,
                 ready_timeout_s: float = 120.0, expect_ready: bool = True,
                 wait: bool = True, max_lines: int | None = None,
                 python: str = sys.executable):
        self.args = [python, "-m", "server", "--model-repository",
                     str(Path(repository).absolute()),
                     "--grpc-host", HOST, "--grpc-port", "0",
                     "--metrics-host", HOST, "--metrics-port", "0",
                     "--http-host", HOST, "--http-port", "0", *extra_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] | collections.deque[str] = (
            [] if max_lines is None else collections.deque(maxlen=max_lines))
        self.grpc_port: int | None = None
        self.http_port: int | None = None  # KServe v2 REST
        self.metrics_port: int | None = None
        self.ready: bool | None = None  # None until "server ready" or "NOT ready"
        self._started = threading.Event()
        self.proc = subprocess.Popen(self.args, cwd=cwd if cwd is not None else REPO_ROOT,
                                     env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"server-log-{self.proc.pid}")
        self._reader.start()
        if wait:
            self.wait_ready(ready_timeout_s, expect_ready)

    # ---- the log -----------------------------------------------------------------------
    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.grpc_port is None and (m := _GRPC_RE.search(line)):
                self.grpc_port = int(m.group(1))
            if self.metrics_port is None and (m := _METRICS_RE.search(line)):
                self.metrics_port = int(m.group(1))
            if self.http_port is None and (m := _HTTP_RE.search(line)):
                self.http_port = int(m.group(1))
            self.handle_line(line)
            if self.ready is None and (READY in line or NOT_READY in line):
                self.ready = READY in line
                self._started.set()
        self._started.set()

    def handle_line(self, line: str) -> None:
        """Called (in the reader thread) for every log line; subclasses screen them."""

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def log_tail(self, count: int = 20) -> str:
        return "\n".join(list(self.lines)[-count:])

    # ---- start-up ----------------------------------------------------------------------
    def wait_ready(self, timeout_s: float = 120.0, expect_ready: bool = True) -> None:
        """Until "server ready" / "NOT ready"; :class:`LaunchError` on anything else."""
        if not self._started.wait(timeout_s):
            self.stop()
            raise LaunchError("server did not start in time:\n" + self.log)
        if self.proc.poll() is not None or self.grpc_port is None:
            self.stop()
            raise LaunchError("server exited during start-up:\n" + self.log)
        if expect_ready and not self.ready:
            self.stop()
            raise LaunchError("server started but is not ready:\n" + self.log)

    # ---- addresses ---------------------------------------------------------------------
    @property
    def address(self) -> str:
        """host:port of gRPC (what ``server.client.connect`` and grpc channels take)."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    # ---- the process -------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mib(self) -> float:
        """Resident memory of the server process (the supervisor with --workers)."""
        return rss_mib(self.proc.pid)

    def fds(self) -> int:
        return open_fds(self.proc.pid)

    def threads(self) -> int:
        return thread_count(self.proc.pid)

    def terminate(self) -> None:
        """SIGTERM: the server drains and exits (see :meth:`wait`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60.0) -> int:
        """The exit code (``subprocess.TimeoutExpired`` if still running); the log is
        complete once this returns."""
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, up to ``timeout_s`` to drain, then SIGKILL; the exit code."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                return self.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> "ServerLauncher":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ScreenedServer(ServerLauncher):
    """A launcher that also sets aside every log line holding one of ``bad_markers``
    (tracebacks and asyncio's complaints by default) in ``bad_lines``."""

    BAD_MARKERS = ("Traceback", "failed unexpectedly", "never retrieved", "Task was destroyed")

    def __init__(self, repository, *extra_args: str, bad_markers: Iterable[str] | None = None,
                 **kwargs):
        self.bad_markers: Sequence[str] = tuple(
            self.BAD_MARKERS if bad_markers is None else bad_markers)
        self.bad_lines: list[str] = []
        super().__init__(repository, *extra_args, **kwargs)

    def handle_line(self, line: str) -> None:
        if any(marker in line for marker in self.bad_markers):
            self.bad_lines.append(line)


# ---- /proc and limits (Linux) ------------------------------------------------------------
def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB; NaN once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid``; -1 once the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def thread_count(pid: int) -> int:
    """Threads of ``pid``; -1 once the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return -1


def raise_fd_limit() -> None:
    """Lift this process's soft open-files limit to the hard one: each client connection
    is a file descriptor, and a 1,024 soft limit stops a client at ~1,000 connections.
    (The server does the same for itself; this is the client side's copy.)"""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError) as exc:  # not on this platform, or refused
        print(f"could not raise the open files limit: {exc}", file=sys.stderr)
