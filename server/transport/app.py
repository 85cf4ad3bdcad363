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
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import ServerConfig
from server.errors import ServingError
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server.repository import ModelRepository
from server.runtime import RuntimeOptions
from server.transport.servicer import InferenceServicer, Lifecycle

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

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


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
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ])
    servicer = InferenceServicer(repository, lifecycle,
                                 model_control_mode=config.model_control_mode,
                                 repository_api_key=config.repository_api_key,
                                 access_log_enabled=config.access_log, observer=observer)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{config.grpc_host}:{config.grpc_port}"
    if config.tls_cert_file:
        port = server.add_secure_port(address, _server_credentials(config))
    else:
        port = server.add_insecure_port(address)
    running = RunningServer(config, repository, lifecycle, server, health_servicer, port,
                            asyncio.Event())
    await running.set_serving(False)
    return running


async def start(running: RunningServer) -> None:
    """Listen, load the models, then report ready (or say why not)."""
    config = running.config
    await running.grpc_server.start()
    log.info("gRPC listening on %s:%d (%s)", config.grpc_host, running.grpc_port,
             "TLS" if config.tls_cert_file else "plaintext")
    if config.model_control_mode == "explicit" and config.startup_models:
        names = list(config.startup_models)
    elif config.model_control_mode == "explicit":
        names = []
    else:
        names = running.repository.discover()
    for name in names:
        try:
            await running.repository.load(name)
        except ServingError:
            pass  # logged by the repository; the model reports not ready with the reason
    running.lifecycle.accepting = True
    ready = running.repository.all_ready()
    await running.set_serving(ready)
    if ready:
        log.info("server ready: %d model version(s) loaded",
                 len(running.repository.loaded_versions()))
    else:
        log.warning("server started but NOT ready: %s",
                    "; ".join(running.repository.not_ready_reasons()))


async def drain_and_stop(running: RunningServer) -> None:
    timeout = running.config.drain_timeout_s
    log.info("shutting down: not ready, finishing in-flight requests (up to %.0f s)", timeout)
    running.lifecycle.draining = True
    await running.set_serving(False)
    # While the port stays open, new calls get a clean UNAVAILABLE from our handlers;
    # stopping the gRPC server at once would instead cancel calls caught in flight
    # between the transport and a handler.
    deadline = time.monotonic() + timeout
    while running.lifecycle.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await running.grpc_server.stop(max(0.0, deadline - time.monotonic()))
    await running.repository.close()
    log.info("stopped")


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    metrics = None
    if config.metrics_enabled:
        from server.metrics import ServerMetrics
        metrics = ServerMetrics()
    running = await build_server(config, metrics.observe if metrics else None)
    if metrics is not None:
        # Before the models load: their load events feed the metrics, and the endpoint
        # answers (server_ready 0) while they warm up.
        metrics.attach(running)
        metrics.start_http(config.metrics_host, config.metrics_port)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, running.stop_event.set)
    rest = None  # the KServe v2 REST port (server.transport.http)
    if config.http_enabled:
        from server.transport.http.server import start_rest
        rest = await start_rest(running, metrics.observe if metrics else None)
    await start(running)
    poller = None
    if config.model_control_mode == "poll":
        poller = loop.create_task(_poll_forever(running))
    await running.stop_event.wait()
    if poller is not None:
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
    await drain_and_stop(running)
    if rest is not None:  # after the drain, which waited for REST requests (in_flight) too
        await rest.stop()
    if metrics is not None:
        metrics.stop_http()


async def _poll_forever(running: RunningServer) -> None:
    interval = running.config.repository_poll_interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            await running.repository.poll()
        except Exception:  # a scan must never take the server down
            log.exception("repository poll failed")
        await running.set_serving(running.repository.all_ready())
