"""Server assembly and life cycle: gRPC server, health, reflection, models, drain.

Start: bind the port (health NOT_SERVING), load and warm the models, then report
ready. SIGTERM/SIGINT: report not ready at once, stop accepting, let in-flight
requests finish (bounded by the drain timeout), unload, exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.core.admission import ByteBudget
from server.config import ServerConfig
from server.core.errors import StartupError
from server.core.memory import HeapTrimmer
from server.protocol import grpc_service_pb2 as pb
from server.core.repository import ModelRepository
from server.core.runtime import RuntimeOptions
from server.grpc import handlers
from server.cluster import worker as workers
from server.grpc.servicer import InferenceServicer, Lifecycle

log = logging.getLogger("server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass
class RunningServer:
    """What tests and the metrics module need to reach while the server runs."""

    config: ServerConfig
    repository: ModelRepository
    lifecycle: Lifecycle
    grpc_server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_port: int
    stop_event: asyncio.Event
    request_budget: ByteBudget
    # The other worker processes (``--workers N``); None when this process serves alone.
    peers: object = None
    _health_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def sync_health(self) -> None:
        """grpc.health from the same rule as ServerReady, after every readiness change.

        Serialised so that concurrent loads cannot leave an older answer last.
        """
        async with self._health_lock:
            ready = self.lifecycle.ready(self.repository)
            if ready and self.peers is not None:  # one server: every worker ready
                ready = await self.peers.all_ready()
            await self.set_serving(ready)


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Channel arguments: message sizes and the HTTP/2 limits against abusive clients."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000) if seconds > 0 else 2**31 - 1  # INT_MAX: never

    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Worker processes share the public port (the kernel spreads connections);
        # a lone server must fail loudly when the port is taken instead.
        ("grpc.so_reuseport", 1 if config.worker_index >= 0 else 0),
        ("grpc.max_concurrent_streams", config.grpc_max_concurrent_streams),
        ("grpc.max_connection_idle_ms", ms(config.grpc_max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(config.grpc_max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(config.grpc_max_connection_age_grace_s)),
        ("grpc.keepalive_time_ms", ms(config.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(config.grpc_keepalive_timeout_s)),
        # Clients may ping (keepalive) at most every 10 s, even with no call open; a
        # client that pings faster is disconnected after two strikes (gRPC's default).
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _server_credentials(config: ServerConfig):
    key = config.tls_key_file.read_bytes()
    cert = config.tls_cert_file.read_bytes()
    client_ca = config.tls_client_ca_file.read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


async def build_server(config: ServerConfig, observer=None) -> RunningServer:
    options = RuntimeOptions(intra_op_threads=config.intra_op_threads,
                             spinning=config.ort_spinning, use_gpu=config.use_gpu)
    repository = ModelRepository(config.model_repository, options, config.drain_timeout_s,
                                 require_models=config.model_control_mode != "explicit")
    lifecycle = Lifecycle()
    server = grpc.aio.server(options=grpc_options(config))
    peers = workers.peers(config)
    servicer_class, extra = ((InferenceServicer, {}) if peers is None
                             else (workers.ClusterServicer, {"peers": peers}))
    servicer = servicer_class(repository, lifecycle,
                              model_control_mode=config.model_control_mode,
                              repository_api_key=config.repository_api_key,
                              access_log_enabled=config.access_log, observer=observer,
                              **extra)
    budget = ByteBudget(config.max_inflight_request_bytes, HeapTrimmer().released)
    handlers.add_to_server(servicer, server, budget)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{config.grpc_host}:{config.grpc_port}"
    try:
        if config.tls_cert_file:
            port = server.add_secure_port(address, _server_credentials(config))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:
        raise StartupError(f"cannot listen for gRPC on {address}: the port is in use or the "
                           "address is not this machine's; pick another with --grpc-port "
                           "(0 = any free port) or --grpc-host") from None
    # With workers the REST port is shared the same way (server.rest.server).
    if peers is not None:
        peers.servicer = servicer  # the poller fans its loads out through it
        workers.add_private_port(server, config)
    running = RunningServer(config, repository, lifecycle, server, health_servicer, port,
                            asyncio.Event(), budget, peers)
    await running.set_serving(False)
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
    restored = await workers.models_of_a_ready_peer(running)
    if restored is not None:  # a restarted worker: serve what the others serve
        names = restored
    elif config.model_control_mode == "explicit" and config.startup_models:
        names = list(config.startup_models)
    elif config.model_control_mode == "explicit":
        names = []
    else:
        names = running.repository.discover()
    # A model that fails is logged and recorded; the others serve regardless.
    await running.repository.load_startup(names)
    if running.peers is not None:
        await _listen(running)
    running.lifecycle.accepting = True
    ready = running.lifecycle.ready(running.repository)
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
    await running.grpc_server.start()
    log.info("gRPC listening on %s:%d (%s)", config.grpc_host, running.grpc_port,
             "TLS" if config.tls_cert_file else "plaintext")


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
    await running.grpc_server.stop(max(0.0, deadline - time.monotonic()))
    await running.repository.close()
    if running.peers is not None:
        await running.peers.close()
    log.info("stopped")


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
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
        rest = await start_rest(running, metrics.observe if metrics else None)
    await start(running)
    pollers = []
    if config.model_control_mode == "poll" and config.worker_index <= 0:
        # With workers only worker 0 scans, and loads/unloads on every worker.
        pollers.append(loop.create_task(_poll_forever(running)))
    if running.peers is not None:  # health follows the peers' readiness too
        pollers.append(loop.create_task(workers.refresh_health_forever(running)))
    await running.stop_event.wait()
    for poller in pollers:
        poller.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    await drain_and_stop(running)
    if rest is not None:  # after the drain, which waited for REST requests (in_flight) too
        await rest.stop()
    if metrics is not None:
        metrics.stop_http()


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
            if running.peers is None:
                await running.repository.poll()
            else:
                servicer = running.peers.servicer
                await running.repository.poll(servicer.load_everywhere,
                                              servicer.unload_everywhere)
        except Exception:  # a scan must never take the server down
            log.exception("repository poll failed")
        await running.sync_health()
