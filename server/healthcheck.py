"""``python -m server.healthcheck``: one grpc.health.v1 Check, for container HEALTHCHECKs.

Exit status 0 when the server reports SERVING, 1 otherwise (NOT_SERVING, unknown
service, unreachable, timeout); one line of output says which. It imports only
grpc and the health stubs, so a probe every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _default_address() -> str:
    # The server's own port setting, so an image run with SERVE_GRPC_PORT=9001 still
    # probes the right port. 127.0.0.1, not localhost: the server binds IPv4 by default.
    return f"127.0.0.1:{os.environ.get('SERVE_GRPC_PORT', '8001')}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.healthcheck",
        description="Ask a server's grpc.health.v1 service whether it is SERVING.")
    parser.add_argument("--address", default=_default_address(),
                        help="host:port of the gRPC server (default 127.0.0.1 and "
                             "$SERVE_GRPC_PORT, else 8001)")
    parser.add_argument("--service", default="",
                        help="service name to check; empty = the whole server (default)")
    parser.add_argument("--timeout-s", type=float, default=3.0,
                        help="seconds before giving up (default 3)")
    parser.add_argument("--ca-file", type=Path, default=None,
                        help="PEM CA bundle: connect over TLS (for servers run with "
                             "--tls-cert-file)")
    return parser


def _channel(address: str, ca_file: Path | None):
    import grpc

    if ca_file is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())
    return grpc.secure_channel(address, credentials)


def check(address: str, service: str = "", timeout_s: float = 3.0,
          ca_file: Path | None = None) -> tuple[bool, str]:
    """(serving?, one-line description) for the server at ``address``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(address, ca_file) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service),
                               timeout=timeout_s)
        except grpc.RpcError as exc:
            return False, f"{address}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.timeout_s <= 0:
        print(f"--timeout-s must be > 0, got {args.timeout_s!r}", file=sys.stderr)
        return 2
    serving, line = check(args.address, args.service, args.timeout_s, args.ca_file)
    print(line)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
