"""The REST port: the HTTP library glue around RestApi (same event loop as grpc.aio)."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from server.core.admission import ByteBudget
from server.core.errors import InvalidInputError, StartupError
from server.kserve.status import short_details
from server.rest import protocol
from server.rest.api import Request, RestApi
from server.rest.body import BodyAdmission, BodyError, ClientGone, read_body, too_large

log = logging.getLogger("server.http")


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The gRPC port's TLS settings for the REST port: same files, same mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


LINGERING_S = 2.0


@dataclass(frozen=True)
class RestTimeouts:
    """Seconds (0 = none): a whole request body, a request head from its first byte, an
    idle keep-alive connection (above common load balancers' 60 s idle timeouts, so
    they, not we, close pooled connections)."""

    body_read_s: float = 60.0
    header_read_s: float = 10.0
    keepalive_s: float = 75.0


class RestServer:
    """aiohttp's low-level server in the running loop: every request into RestApi.

    Bodies are read here (server.rest.body: budget per chunk, decompression, deadline);
    connections' limits and aiohttp's own error answers are server.rest.protocol's.
    """

    def __init__(self, api: RestApi, host: str, port: int, max_body_bytes: int,
                 ssl_context: ssl.SSLContext | None, shutdown_timeout_s: float = 30.0,
                 budget: ByteBudget | None = None, reuse_port: bool = False,
                 timeouts: RestTimeouts | None = None):
        self._api, self._host, self._port = api, host, port
        self._limit = max_body_bytes
        # The request bytes held at once, shared with gRPC, counted as bodies arrive.
        self._admission = BodyAdmission(budget)
        self._reuse_port = reuse_port  # worker processes share one port (SO_REUSEPORT)
        self._ssl = ssl_context
        self._shutdown_timeout_s = shutdown_timeout_s
        self._timeouts = timeouts or RestTimeouts()
        self._runner = None
        self._server: protocol.Server | None = None

    async def start(self) -> int:
        from aiohttp import web

        timeouts = self._timeouts
        self._server = protocol.Server(
            self._handle, header_timeout_s=timeouts.header_read_s,
            keepalive_timeout=timeouts.keepalive_s or 1e9, max_line_size=protocol.MAX_LINE_BYTES,
            max_field_size=protocol.MAX_FIELD_BYTES, max_headers=protocol.MAX_HEADERS,
            auto_decompress=False,  # server.rest.body inflates, within the limits
            # After refusing a body (413, 429, 415, 400) its rest is read and dropped
            # this long, so a client still sending sees the answer instead of a reset;
            # aiohttp's 10 s let each refused upload cost the server 10 s of reading.
            lingering_time=LINGERING_S,
            access_log=None)  # our own access log covers inference
        # Signals belong to app.serve().
        self._runner = web.ServerRunner(self._server, handle_signals=False,
                                        shutdown_timeout=self._shutdown_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl,
                           reuse_port=self._reuse_port or None)
        await site.start()
        return self._runner.addresses[0][1]

    async def _handle(self, request):
        """Every request; answers every error itself (JSON), never raises."""
        try:
            return await self._serve(request)
        except ClientGone as exc:  # nobody to answer: the write below fails quietly
            self._server.errors.note(f"client left mid-body: {exc}")
            return protocol.json_error(400, "the request body ended early", close=True)
        except BodyError as exc:
            if exc.status in (400, 408):  # broken or stalled clients; not plain refusals
                self._server.errors.note(f"{exc.status}: {exc}")
            self._api.dataplane.refused(exc.error, "http")
            return protocol.json_error(exc.status, short_details(str(exc.error)),
                                       close=exc.close)

    async def _serve(self, request):
        from aiohttp import web

        body, held = b"", 0
        if request.body_exists:
            await self._continue(request)
            body, held = await read_body(
                request.content, content_length=request.content_length,
                content_encoding=request.headers.get("Content-Encoding"), limit=self._limit,
                admission=self._admission, timeout_s=self._timeouts.body_read_s)
        try:
            reply = await self._api.handle(Request(request.method, request.path,
                                                   request.headers, body))
        finally:
            del body
            self._admission.give(held)
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": reply.content_type, **reply.headers})

    async def _continue(self, request) -> None:
        """``Expect: 100-continue`` (curl sends it for large bodies and waits a second
        for it): refuse an announced body over the limit first, else invite it."""
        expect = request.headers.get("Expect")
        if expect is None or request.version < (1, 1):
            return
        if expect.lower() != "100-continue":
            raise BodyError(417, InvalidInputError(
                f"Expect: {expect[:60]!r} is not supported (only 100-continue)"))
        if request.content_length is not None and request.content_length > self._limit:
            raise too_large(self._limit)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started

    async def stop(self) -> None:
        """Close the port and idle connections; handlers still running may finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_rest(running):
    """Build the REST API for a RunningServer and open its port (logged with the port)."""
    from server.rest.static import static_replies

    config = running.config
    api = RestApi(running.dataplane, static=static_replies())
    context = None
    if config.tls_cert_file:
        context = server_ssl_context(config.tls_cert_file, config.tls_key_file,
                                     config.tls_client_ca_file)
    timeouts = RestTimeouts(body_read_s=config.http_body_read_timeout_s,
                            header_read_s=config.http_header_read_timeout_s,
                            keepalive_s=config.http_keepalive_timeout_s)
    rest = RestServer(api, config.http_host, config.http_port, config.max_message_bytes,
                      context, shutdown_timeout_s=config.drain_timeout_s,
                      budget=running.request_budget, reuse_port=config.worker_index >= 0,
                      timeouts=timeouts)
    try:
        port = await rest.start()
    except OSError as exc:  # one line for the operator, like the other ports' errors
        raise StartupError(f"cannot serve REST on {config.http_host}:{config.http_port}: "
                           f"{exc.strerror or exc}; pick another port with --http-port (0 = "
                           "any free port) or turn it off with --http-enabled false") from None
    log.info("HTTP listening on %s:%d (%s)", config.http_host, port,
             "TLS" if context else "plaintext")
    return rest
