"""The REST port: the HTTP library glue around RestApi (same event loop as grpc.aio)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path

from server.transport.http.api import Request, RestApi

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


class AiohttpServer:
    def __init__(self, api: RestApi, host: str, port: int, max_body_bytes: int,
                 ssl_context: ssl.SSLContext | None):
        self._api, self._host, self._port = api, host, port
        self._limit = max_body_bytes
        self._ssl = ssl_context
        self._runner = None

    async def start(self) -> int:
        from aiohttp import web

        # aiohttp refuses a body of client_max_size bytes or more; the limit is inclusive.
        app = web.Application(client_max_size=self._limit + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        return self._runner.addresses[0][1]

    async def _handle(self, request):
        from aiohttp import web

        try:
            if (request.content_length or 0) > self._limit:  # refused before reading it
                raise web.HTTPRequestEntityTooLarge(self._limit, request.content_length)
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            status, text = _too_large(self._limit)
            return web.Response(status=status, body=text, content_type="application/json")
        reply = await self._api.handle(Request(request.method, request.path, request.headers,
                                               body))
        return web.Response(status=reply.status, body=reply.body,
                            headers={"Content-Type": reply.content_type, **reply.headers})

    async def stop(self, timeout_s: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class UvicornServer:
    def __init__(self, api: RestApi, host: str, port: int, max_body_bytes: int,
                 ssl_context):
        self._api, self._host, self._port = api, host, port
        self._limit = max_body_bytes
        self._server = None
        self._task = None

    async def start(self) -> int:
        import uvicorn

        sock = socket.create_server((self._host, self._port), reuse_port=False)
        config = uvicorn.Config(self._app, http="httptools", lifespan="off", log_config=None,
                                interface="asgi3",
                                access_log=False, ws="none")

        class _Server(uvicorn.Server):
            def capture_signals(self):  # the process's signals belong to app.serve()
                import contextlib
                return contextlib.nullcontext()

        self._server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)
        return sock.getsockname()[1]

    async def _app(self, scope, receive, send):
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                status, text = _too_large(self._limit)
                await self._send(send, status, text, "application/json", {})
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        reply = await self._api.handle(Request(scope["method"], scope["path"], headers,
                                               b"".join(chunks)))
        await self._send(send, reply.status, reply.body, reply.content_type, reply.headers)

    @staticmethod
    async def _send(send, status, body, content_type, extra):
        headers = [(b"content-type", content_type.encode()),
                   (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def stop(self, timeout_s: float) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._task


def make_http_server(api, host, port, max_body_bytes, ssl_context):
    backend = os.environ.get("SERVE_HTTP_BACKEND_FOR_BENCH", "aiohttp")
    kind = UvicornServer if backend == "uvicorn" else AiohttpServer
    return kind(api, host, port, max_body_bytes, ssl_context)


async def start_rest(running, observer=None):
    """Build the REST API for a RunningServer and open its port (logged with the port)."""
    from server.transport.http.static import static_replies

    config = running.config
    api = RestApi(running.repository, running.lifecycle,
                  model_control_mode=config.model_control_mode,
                  repository_api_key=config.repository_api_key,
                  access_log_enabled=config.access_log, observer=observer,
                  static=static_replies())
    context = None
    if config.tls_cert_file:
        context = server_ssl_context(config.tls_cert_file, config.tls_key_file,
                                     config.tls_client_ca_file)
    rest = make_http_server(api, config.http_host, config.http_port, config.max_message_bytes,
                            context)
    port = await rest.start()
    log.info("HTTP listening on %s:%d (%s)", config.http_host, port,
             "TLS" if context else "plaintext")
    return rest
