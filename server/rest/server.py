"""The REST port: the HTTP library glue around RestApi (same event loop as grpc.aio)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from server.core.admission import ByteBudget
from server.core.errors import StartupError
from server.rest.api import Request, RestApi, error_reply

log = logging.getLogger("server.http")


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The gRPC port's TLS settings for the REST port: same files, same mutual TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _too_large(limit: int) -> tuple[int, bytes]:
    import orjson
    return 413, orjson.dumps({"error": f"request body over {limit} bytes "
                                       "(--max-message-bytes)"})


class RestServer:
    """aiohttp's server in the running loop: one catch-all route into RestApi."""

    def __init__(self, api: RestApi, host: str, port: int, max_body_bytes: int,
                 ssl_context: ssl.SSLContext | None, shutdown_timeout_s: float = 30.0,
                 budget: ByteBudget | None = None, reuse_port: bool = False):
        self._api, self._host, self._port = api, host, port
        self._limit = max_body_bytes
        self._budget = budget  # the request bytes held at once, shared with gRPC
        self._reuse_port = reuse_port  # worker processes share one port (SO_REUSEPORT)
        self._ssl = ssl_context
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner = None

    async def start(self) -> int:
        from aiohttp import web

        # aiohttp refuses a body of client_max_size bytes or more; the limit is inclusive.
        app = web.Application(client_max_size=self._limit + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Signals belong to app.serve(); our own access log covers inference.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=self._shutdown_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl,
                           reuse_port=self._reuse_port or None)
        await site.start()
        return self._runner.addresses[0][1]

    async def _handle(self, request):
        from aiohttp import web

        if (request.content_length or 0) > self._limit:  # refused before reading it
            status, text = _too_large(self._limit)
            return web.Response(status=status, body=text, content_type="application/json")
        # A body counts against the request-bytes budget from before it is read (its
        # announced length) until the reply is built, as gRPC messages do.
        held = request.content_length or 0
        if self._budget is not None and not self._budget.take(held):
            reply = error_reply(self._budget.refusal(held))
            return web.Response(status=reply.status, body=reply.body,
                                content_type="application/json")
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body that grew past the limit
                status, text = _too_large(self._limit)
                return web.Response(status=status, body=text, content_type="application/json")
            reply = await self._api.handle(Request(request.method, request.path,
                                                   request.headers, body))
        finally:
            if self._budget is not None:
                self._budget.give(held)
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": reply.content_type, **reply.headers})

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
    rest = RestServer(api, config.http_host, config.http_port, config.max_message_bytes,
                      context, shutdown_timeout_s=config.drain_timeout_s,
                      budget=running.request_budget, reuse_port=config.worker_index >= 0)
    try:
        port = await rest.start()
    except OSError as exc:  # one line for the operator, like the other ports' errors
        raise StartupError(f"cannot serve REST on {config.http_host}:{config.http_port}: "
                           f"{exc.strerror or exc}; pick another port with --http-port (0 = "
                           "any free port) or turn it off with --http-enabled false") from None
    log.info("HTTP listening on %s:%d (%s)", config.http_host, port,
             "TLS" if context else "plaintext")
    return rest
