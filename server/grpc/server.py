"""The gRPC port: grpc.aio server, its channel options, TLS, health and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import ServerConfig
from server.core.admission import ByteBudget
from server.core.errors import StartupError
from server.grpc import handlers
from server.protocol import grpc_service_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


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


class GrpcPort:
    """The gRPC server with the inference service, health and reflection, bound (not
    yet started): ``port`` is the one the OS gave."""

    def __init__(self, config: ServerConfig, servicer, budget: ByteBudget,
                 address: str | None = None):
        """``address``: where to listen instead of the public port (the native face's
        private fallback socket: plaintext, whatever the TLS settings)."""
        self.config = config
        self.server = grpc.aio.server(options=grpc_options(config))
        handlers.add_to_server(servicer, self.server, budget)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.server)
        private = address is not None
        address = address or f"{config.grpc_host}:{config.grpc_port}"
        try:
            if config.tls_cert_file and not private:
                self.port = self.server.add_secure_port(address, _server_credentials(config))
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            raise StartupError(f"cannot listen for gRPC on {address}: the port is in use or "
                               "the address is not this machine's; pick another with "
                               "--grpc-port (0 = any free port) or --grpc-host") from None

    def add_private_port(self, address: str) -> None:
        """A unix socket for the other workers (server.cluster.peers)."""
        self.server.add_insecure_port(address)

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
