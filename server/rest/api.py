"""The KServe v2 REST API, independent of the HTTP library: Request in, Reply out.

Every route translates to a dataplane call (server.dataplane) and back; only the wire
form differs from gRPC. Domain errors become an HTTP status (server.kserve.status)
and ``{"error": message}`` with the gRPC status details' text; anything else is
logged with its traceback and answered 500 without details.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping

import orjson

from server.core.errors import InternalError, InvalidInputError, ServingError
from server.dataplane.dataplane import DataPlane
from server.kserve.status import http_status, short_details
from server.rest import codec, shared_memory
from server.rest.limits import CHECK_FROM_BYTES, JsonLimits, json_limits
from server.rest.protojson import to_json

log = logging.getLogger("server.http")

_MODEL_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                         r"(?:/(?P<action>ready|config|stats|card|drift|rollout|latency|"
                         r"infer))?")
_REPOSITORY_PATH = re.compile(r"/v2/repository/models/(?P<model>[^/]+)/(?P<action>load|unload)")
_FIXED_PATHS = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats",
                "/v2/models/latency", "/v2/repository/index"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    headers: Mapping[str, str]  # lower-case names
    body: bytes | bytearray = b""  # bytearray: as read (server.rest.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(doc, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc))


def error_reply(exc: ServingError) -> Reply:
    return json_reply({"error": short_details(str(exc))}, http_status(exc))


class RestApi:
    def __init__(self, dataplane: DataPlane, *, static=None):
        self.dataplane = dataplane
        self._static = static  # path -> Reply for GET (console, OpenAPI); None = none

    async def handle(self, request: Request) -> Reply:
        try:
            return await self._route(request)
        except ServingError as exc:
            return error_reply(exc)
        except Exception:
            log.exception("HTTP %s %s failed unexpectedly", request.method, request.path[:100])
            return error_reply(InternalError("internal error; see the server log"))

    async def _route(self, request: Request) -> Reply:
        method, path = request.method, request.path
        if method == "POST" and (m := _MODEL_PATH.fullmatch(path)) and m["action"] == "infer":
            return await self.infer(m["model"], m["version"] or "", request)
        if path.startswith(shared_memory.PREFIXES):
            answer = await shared_memory.handle(self.dataplane, method, path, request.body)
            if answer is not None:
                return json_reply(answer)
            return self._not_served(method, path)
        if method in ("GET", "HEAD"):
            return await self._get(path)
        if method == "POST" and path == "/v2/repository/index":
            return self._index(request.body)
        if method == "POST" and (m := _REPOSITORY_PATH.fullmatch(path)):
            return await self._control_model(m["model"], m["action"], request)
        return self._not_served(method, path)

    def _not_served(self, method: str, path: str) -> Reply:
        """405 with ``Allow`` for a path other methods answer, else 404."""
        allowed = self._allowed(path)
        if allowed:
            reply = json_reply({"error": f"method {method[:20]} is not allowed on "
                                         f"{path[:200]}; use {allowed}"}, 405)
            reply.headers["Allow"] = allowed
            return reply
        return json_reply({"error": f"no such endpoint: {path[:200]}"}, 404)

    def _allowed(self, path: str) -> str:
        """The methods a path answers ("" for none: 404)."""
        if path.startswith(shared_memory.PREFIXES):
            return shared_memory.allowed(path)
        if path in ("/v2/repository/index",) or _REPOSITORY_PATH.fullmatch(path):
            return "POST"
        m = _MODEL_PATH.fullmatch(path)
        if m is not None and m["action"] == "infer":
            return "POST"
        if path in _FIXED_PATHS or m is not None or (self._static and path in self._static):
            return "GET, HEAD"
        return ""

    # ---- GET: health, metadata, config, statistics, static files -----------------------
    async def _get(self, path: str) -> Reply:
        plane = self.dataplane
        if path == "/v2/health/live":
            return json_reply({"live": True})
        if path == "/v2/health/ready":
            ready = await plane.ready()
            return json_reply({"ready": ready}, 200 if ready else 503)
        if path == "/v2":
            name, version, extensions = plane.server_metadata()
            return json_reply({"name": name, "version": version,
                               "extensions": list(extensions)})
        if path == "/v2/models/stats":
            return json_reply(to_json(await plane.statistics("", ""), defaults=True))
        if path == "/v2/models/latency":  # our extension: every loaded version's quantiles
            return json_reply(await plane.report("latency", ""))
        m = _MODEL_PATH.fullmatch(path)
        if m is not None and m["action"] != "infer":
            return await self._model_get(m["model"], m["version"] or "", m["action"])
        if self._static and path in self._static:
            return self._static[path]
        return self._not_served("GET", path)

    async def _model_get(self, name: str, version: str, action: str | None) -> Reply:
        plane = self.dataplane
        if action == "ready":
            ready = plane.known_model_ready(name, version)
            return json_reply({"name": name, "ready": ready}, 200 if ready else 503)
        if action == "stats":
            return json_reply(to_json(await plane.statistics(name, version), defaults=True))
        if action == "config":
            return json_reply(to_json(plane.model_config(name, version)))
        if action == "drift":  # our extension: live signals against the reference
            return json_reply(asdict(plane.drift(name, version)))
        if action in ("rollout", "latency"):  # our extensions (dataplane.reports)
            if action == "rollout" and version:
                raise InvalidInputError("a rollout spans a model's versions: ask "
                                        f"/v2/models/{name[:100]}/rollout")
            return json_reply(await plane.report(action, name, version))
        if action == "card":  # our extension: what the model's pipeline measured
            return json_reply(plane.model_card(name, version))
        meta = plane.model_metadata(name, version)
        return json_reply({"name": meta.name, "versions": meta.versions,
                           "platform": meta.platform,
                           "inputs": [asdict(t) for t in meta.inputs],
                           "outputs": [asdict(t) for t in meta.outputs]})

    # ---- inference ---------------------------------------------------------------------
    async def infer(self, name: str, version: str, request: Request) -> Reply:
        wire = codec.RestRequest(name, version, request.body,
                                 request.headers.get(codec.HEADER_LENGTH),
                                 self._json_limits(name, version, len(request.body)))
        result = await self.dataplane.infer(wire, "http")
        if isinstance(result, ServingError):
            return error_reply(result)
        model, outputs = result
        payload, header_length = codec.encode_infer(wire, model.name, model.version,
                                                    outputs, model.output_datatypes)
        if header_length is None:
            return Reply(200, payload)
        return Reply(200, payload, "application/octet-stream",
                     {"Inference-Header-Content-Length": str(header_length)})

    def _json_limits(self, name: str, version: str, size: int) -> JsonLimits | None:
        """The model's JSON size bounds for a body big enough to check (None: no such
        model; the dataplane says so in its own words)."""
        if size < CHECK_FROM_BYTES:
            return None
        try:
            return json_limits(name, self.dataplane.model_config(name, version))
        except ServingError:
            return None

    # ---- repository --------------------------------------------------------------------
    def _index(self, raw: bytes) -> Reply:
        options = codec.parse_json(raw) if raw.strip() else {}
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise InvalidInputError("the index request must be a JSON object like "
                                    '{"ready": true}')
        rows = self.dataplane.index(ready_only=options.get("ready", False))
        return json_reply([{"name": r.name, "version": r.version, "state": r.state,
                            "reason": r.reason} for r in rows])

    async def _control_model(self, name: str, action: str, request: Request) -> Reply:
        plane = self.dataplane
        header = plane.control.header
        sent = request.headers.get(header) if header else None
        # The key first: a caller without it learns nothing from the body's checks.
        plane.control.check(sent, action, "HTTP")
        options = codec.parse_json(request.body) if request.body.strip() else {}
        parameters = options.get("parameters", {}) if isinstance(options, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidInputError(f"the {action} request must be a JSON object, optionally "
                                    'with "parameters"')
        if action == "load":
            await plane.load(name, sent, "HTTP", parameters)
        else:
            await plane.unload(name, sent, "HTTP", parameters)
        return Reply(200, b"")
