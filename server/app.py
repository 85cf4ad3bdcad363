"""Server assembly and life cycle: repository, dataplane, faces, metrics, drain.

Start: bind the port (health NOT_SERVING), load and warm the models, then report
ready. SIGTERM/SIGINT: report not ready at once, stop accepting, let in-flight
requests finish (bounded by the drain timeout), unload, exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from dataclasses import dataclass, field

from server.cluster import worker as workers
from server.cluster.coordinator import Coordinator
from server.cluster.servicer import PeerServicer
from server.config import ServerConfig, grpc_frontend
from server.core.admission import ByteBudget
from server.core.drift_window import DriftOptions, DriftService
from server.core.errors import StartupError
from server.core.lifecycle import Lifecycle
from server.core.memory import HeapTrimmer
from server.core.repository import ModelRepository
from server.core.response_cache import ResponseCache
from server.core.runtime import RuntimeOptions
from server.dataplane.dataplane import DataPlane
from server.grpc.server import GrpcPort
from server.grpc.servicer import InferenceServicer

log = logging.getLogger("server")


@dataclass
class RunningServer:
    """What the faces, tests and the metrics module reach while the server runs."""

    config: ServerConfig
    repository: ModelRepository
    lifecycle: Lifecycle
    dataplane: DataPlane
    grpc: GrpcPort
    stop_event: asyncio.Event
    request_budget: ByteBudget
    # The other worker processes (``--workers N``); None when this process serves alone.
    peers: object = None
    # The native gRPC face (server.native) on the public port; ``grpc`` then listens on
    # its private fallback socket only. None when grpcio serves the public port.
    native: object = None
    sync: object = None  # server.cluster.sync.WorkerSync, with peers
    _health_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def grpc_port(self) -> int:
        return self.native.port if self.native is not None else self.grpc.port

    async def sync_health(self) -> None:
        """grpc.health from the same rule as ServerReady, after every readiness change.

        Serialised so that concurrent loads cannot leave an older answer last.
        """
        async with self._health_lock:
            await self.grpc.set_serving(await self.dataplane.ready())


async def build_server(config: ServerConfig, observer=None) -> RunningServer:
    options = RuntimeOptions(intra_op_threads=config.intra_op_threads,
                             spinning=config.ort_spinning, use_gpu=config.use_gpu)
    drift = (DriftService(DriftOptions(config.drift_window_rows, config.drift_window_s,
                                       config.drift_max_rows_per_s))
             if config.drift_enabled else None)
    repository = ModelRepository(config.model_repository, options, config.drain_timeout_s,
                                 require_models=config.model_control_mode != "explicit",
                                 drift=drift)
    lifecycle = Lifecycle()
    peers = workers.peers(config)
    sync = None if peers is None else workers.worker_sync(config, repository)
    coordinator = None if peers is None else Coordinator(repository, peers, sync)
    dataplane = DataPlane(repository, lifecycle, model_control_mode=config.model_control_mode,
                          repository_api_key=config.repository_api_key,
                          access_log_enabled=config.access_log, observer=observer,
                          cluster=coordinator,
                          cache=(ResponseCache(config.response_cache_bytes)
                                 if config.response_cache_bytes else None))
    servicer = InferenceServicer(dataplane) if peers is None else PeerServicer(dataplane, sync)
    budget = ByteBudget(config.max_inflight_request_bytes, HeapTrimmer().released)
    native = None
    if grpc_frontend(config) == "native":
        # The native front serves the public port and forwards what it does not serve
        # itself (streams, health, reflection) to the grpcio server on a private socket.
        from server.native.front import NativePort
        native = NativePort(config, dataplane, servicer, budget)
        port = GrpcPort(config, servicer, budget, address=f"unix:{native.fallback_socket}")
    else:
        port = GrpcPort(config, servicer, budget)
    # With workers the REST port is shared the same way (server.rest.server).
    if peers is not None:
        workers.add_private_port(port, config)
    running = RunningServer(config, repository, lifecycle, dataplane, port, asyncio.Event(),
                            budget, peers, native)
    running.sync = sync
    await port.set_serving(False)
    repository.on_change.append(running.sync_health)  # load/unload RPCs and polls
    return running


async def start(running: RunningServer) -> None:
    """Listen, load the models, then report ready (or say why not).

    A worker among several (``--workers``) loads first and listens after: the kernel
    gives connections on the shared port to every listening worker, and a restarted
    worker must not take connections it cannot serve yet.
    """
    config = running.config
    if running.peers is None:
        await _listen(running)
    if config.model_control_mode == "explicit" and config.startup_models:
        names = list(config.startup_models)
    elif config.model_control_mode == "explicit":
        names = []
    else:
        names = running.repository.discover()
    # A model that fails is logged and recorded; the others serve regardless. A worker
    # joining running workers loads what they serve instead (server.cluster.sync).
    if running.sync is not None:
        await running.sync.join(names)
    else:
        await running.repository.load_startup(names)
    if running.peers is not None:
        await _listen(running)
    running.lifecycle.accepting = True
    ready = running.dataplane.ready_here()
    await running.sync_health()
    if running.peers is not None:  # the supervisor says "server ready" once all are
        workers.report_started(running, ready)
    elif ready:
        log.info("server ready: %d model version(s) loaded",
                 len(running.repository.loaded_versions()))
    else:
        log.warning("server started but NOT ready: %s",
                    "; ".join(running.repository.not_ready_reasons()))


async def _listen(running: RunningServer) -> None:
    config = running.config
    await running.grpc.server.start()
    if running.native is not None:
        running.native.start()
    face = ("native front end, pygrpc-native" if running.native is not None
            else "grpcio front end")
    log.info("gRPC listening on %s:%d (%s, %s; --grpc-frontend %s)", config.grpc_host,
             running.grpc_port, "TLS" if config.tls_cert_file else "plaintext", face,
             config.grpc_frontend)
    if running.native is not None and (config.grpc_max_connection_idle_s
                                       or config.grpc_max_connection_age_s):
        log.info("native gRPC front end: connection idle/age limits are not applied "
                 "(the library has none); use --grpc-frontend grpcio to have them")


async def drain_and_stop(running: RunningServer) -> None:
    timeout = running.config.drain_timeout_s
    log.info("shutting down: not ready, finishing in-flight requests (up to %.0f s)", timeout)
    running.lifecycle.draining = True
    await running.sync_health()  # after any health update in flight: NOT_SERVING last
    # While the port stays open, new calls get a clean UNAVAILABLE from our handlers;
    # stopping the gRPC server at once would instead cancel calls caught in flight
    # between the transport and a handler.
    deadline = time.monotonic() + timeout
    while running.lifecycle.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    # Open streams carry no work now: end them, so they do not hold the stop below.
    running.lifecycle.close_streams()
    await running.grpc.server.stop(max(0.0, deadline - time.monotonic()))
    if running.native is not None:  # after the fallback: streams pass through it
        await running.native.stop()
    await running.repository.close()
    if running.peers is not None:
        await running.peers.close()
    log.info("stopped")


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    if config.worker_index < 0:  # workers share ports their supervisor bound
        check_ports_free(config)
    metrics = None
    if config.metrics_enabled:
        from server.observability.metrics import ServerMetrics
        metrics = ServerMetrics()
    raise_fd_limit()
    running = await build_server(config, metrics.observe if metrics else None)
    if metrics is not None:
        # Before the models load: their load events feed the metrics, and the endpoint
        # answers (server_ready 0) while they warm up.
        metrics.attach(running)
        try:
            if config.worker_index >= 0:  # private: the supervisor scrapes and sums
                workers.publish_metrics_port(
                    config, metrics.start_http("127.0.0.1", 0, "private worker metrics"))
            else:
                metrics.start_http(config.metrics_host, config.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve /metrics on {config.metrics_host}:"
                               f"{config.metrics_port}: {exc.strerror or exc}; pick another "
                               "port with --metrics-port (0 = any free port) or turn it off "
                               "with --metrics-enabled false") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.stop_event.set)
    rest = None  # the KServe v2 REST port (server.rest)
    if config.http_enabled:
        from server.rest.server import start_rest
        rest = await start_rest(running)
    await start(running)
    pollers = []
    if config.model_control_mode == "poll" and config.worker_index <= 0:
        # With workers only worker 0 scans, and loads/unloads on every worker.
        pollers.append(loop.create_task(_poll_forever(running)))
    if running.peers is not None:  # health follows the peers; heartbeat; repairs
        pollers += [loop.create_task(job) for job in workers.background(running)]
    await running.stop_event.wait()
    for poller in pollers:
        poller.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    await drain_and_stop(running)
    if rest is not None:  # after the drain, which waited for REST requests (in_flight) too
        await rest.stop()
    if metrics is not None:
        metrics.stop_http()


def check_ports_free(config: ServerConfig) -> None:
    """Each public port can be bound, or one StartupError line naming the flag and the
    Makefile variable, before a library tries and logs an error line of its own."""
    wanted = [("gRPC", config.grpc_host, config.grpc_port, "--grpc-port", "GRPC_PORT")]
    if config.http_enabled:
        wanted.append(("REST", config.http_host, config.http_port, "--http-port", "HTTP_PORT"))
    if config.metrics_enabled:
        wanted.append(("/metrics", config.metrics_host, config.metrics_port, "--metrics-port",
                       "METRICS_PORT"))
    for what, host, port, flag, variable in wanted:
        if port == 0:
            continue
        try:
            family, _, _, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
                probe.bind(address)
        except OSError as exc:
            raise StartupError(f"cannot listen for {what} on {host}:{port}: "
                               f"{exc.strerror or exc}; pick another port with {flag} "
                               f"(make serve {variable}=...; 0 = any free port)") from None


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: each client connection is a file
    descriptor, and a 1,024 soft limit locks new clients out after ~1,000 of them."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            log.info("open files limit raised from %d to %d", soft, wanted)
    except (ImportError, ValueError, OSError) as exc:  # not on this platform, or refused
        log.warning("could not raise the open files limit: %s", exc)


async def _poll_forever(running: RunningServer) -> None:
    interval = running.config.repository_poll_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            cluster = running.dataplane.cluster
            if cluster is None:
                await running.repository.poll()
            else:
                await running.repository.poll(cluster.load, cluster.unload)
        except Exception:  # a scan must never take the server down
            log.exception("repository poll failed")
        await running.sync_health()
