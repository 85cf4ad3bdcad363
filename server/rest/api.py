"""The KServe v2 REST API, independent of the HTTP library: Request in, Reply out.

Same domain calls, errors, statistics and metrics as the gRPC servicer; only the
wire form differs. Domain errors become an HTTP status (``status.http_status_for``)
and ``{"error": message}`` with the gRPC status details' text; anything else is
logged with its traceback and answered 500 without details.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Mapping

import orjson

from server import __version__
from server.core.errors import InternalError, InvalidInputError, ServingError
from server.core.model import ModelVersion
from server.core.repository import ModelRepository
from server.dataplane.control import RepositoryControl
from server.rest import codec
from server.rest.protojson import to_json
from server.rest.status import http_status_for
from server.grpc.servicer import EXTENSIONS, Lifecycle, short_details
from server.kserve.statistics import statistics_response

log = logging.getLogger("server.http")
access_log = logging.getLogger("server.access")

_MODEL_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                         r"(?:/(?P<action>ready|config|stats|infer))?")
_REPOSITORY_PATH = re.compile(r"/v2/repository/models/(?P<model>[^/]+)/(?P<action>load|unload)")
_FIXED_PATHS = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats",
                "/v2/repository/index"}
# Load parameters tritonclient sends that change nothing here.
_HARMLESS_LOAD_PARAMETERS = {"unload_dependents"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(doc, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc))


def error_reply(exc: ServingError) -> Reply:
    return json_reply({"error": short_details(str(exc))}, http_status_for(exc))


class RestApi:
    def __init__(self, repository: ModelRepository, lifecycle: Lifecycle, *,
                 model_control_mode: str, repository_api_key: str = "",
                 access_log_enabled: bool = False, observer=None, static=None,
                 cluster=None):
        self._repo = repository
        self._life = lifecycle
        self._control = RepositoryControl(model_control_mode, repository_api_key)
        self._access = access_log_enabled
        # Metrics: observer(model_name, model or None, exc or None, seconds, protocol=).
        self._observe = observer
        self._static = static  # path -> Reply for GET (console, OpenAPI); None = none
        # With worker processes, what must look like one server (ready, statistics,
        # load/unload) goes through the cluster (server.rest.cluster).
        self.cluster = cluster

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
        if method in ("GET", "HEAD"):
            if self.cluster is not None and (reply := await self._cluster_get(path)):
                return reply
            return self._get(path)
        if method == "POST" and path == "/v2/repository/index":
            return self._index(request.body)
        if method == "POST" and (m := _REPOSITORY_PATH.fullmatch(path)):
            return await self._control_model(m["model"], m["action"], request)
        if self._known(path):
            return json_reply({"error": f"method {method} is not allowed on {path[:200]}"}, 405)
        return json_reply({"error": f"no such endpoint: {path[:200]}"}, 404)

    async def _cluster_get(self, path: str) -> Reply | None:
        """Server readiness and statistics summed over every worker; None for the rest."""
        if path == "/v2/health/ready":
            ready = self._life.ready(self._repo) and await self.cluster.ready()
            return json_reply({"ready": ready}, 200 if ready else 503)
        m = _MODEL_PATH.fullmatch(path)
        if path == "/v2/models/stats" or (m is not None and m["action"] == "stats"):
            name, version = ("", "") if m is None else (m["model"], m["version"] or "")
            return json_reply(to_json(await self.cluster.statistics(name, version),
                                      defaults=True))
        return None

    def _known(self, path: str) -> bool:
        """A path some method answers (405 for the others), else 404."""
        return bool(path in _FIXED_PATHS or _MODEL_PATH.fullmatch(path)
                    or _REPOSITORY_PATH.fullmatch(path) or (self._static and path in self._static))

    # ---- GET: health, metadata, config, statistics, static files -----------------------
    def _get(self, path: str) -> Reply:
        if path == "/v2/health/live":
            return json_reply({"live": True})
        if path == "/v2/health/ready":
            ready = self._life.ready(self._repo)
            return json_reply({"ready": ready}, 200 if ready else 503)
        if path == "/v2":
            return json_reply({"name": "onnx-serve", "version": __version__,
                               "extensions": list(EXTENSIONS)})
        if path == "/v2/models/stats":
            return json_reply(to_json(statistics_response(self._repo, "", ""), defaults=True))
        m = _MODEL_PATH.fullmatch(path)
        if m is not None and m["action"] != "infer":
            return self._model_get(m["model"], m["version"] or "", m["action"])
        if self._static and path in self._static:
            return self._static[path]
        if self._known(path):
            return json_reply({"error": f"method GET is not allowed on {path[:200]}"}, 405)
        return json_reply({"error": f"no such endpoint: {path[:200]}"}, 404)

    def _model_get(self, name: str, version: str, action: str | None) -> Reply:
        if action == "ready":
            ready = not self._life.draining and self._repo.is_ready(name, version)
            return json_reply({"name": name, "ready": ready}, 200 if ready else 503)
        if action == "stats":
            return json_reply(to_json(statistics_response(self._repo, name, version),
                                      defaults=True))
        model = self._repo.get(name, version)
        if action == "config":
            return json_reply(to_json(model.spec.proto))
        return json_reply(self._metadata(model))

    def _metadata(self, model: ModelVersion) -> dict:
        spec = model.spec
        batch = [-1] if spec.max_batch_size else []
        entry = self._repo.entry(model.name)
        versions = sorted(entry.versions) if entry else [model.version]
        return {"name": model.name, "versions": [str(v) for v in versions],
                "platform": spec.proto.platform or "onnxruntime_onnx",
                "inputs": [{"name": t.name, "datatype": t.datatype,
                            "shape": batch + list(t.dims)} for t in spec.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype,
                             "shape": batch + list(t.dims)} for t in spec.outputs]}

    # ---- inference ---------------------------------------------------------------------
    async def infer(self, name: str, version: str, request: Request) -> Reply:
        self._life.in_flight += 1
        try:
            return await self._infer(name, version, request)
        finally:
            self._life.in_flight -= 1

    async def _infer(self, name: str, version: str, request: Request) -> Reply:
        started = time.monotonic()
        model = None
        body = None
        try:
            self._life.check()
            model = self._repo.get(name, version)
            try:
                body = codec.decode_infer(request.body,
                                          request.headers.get(codec.HEADER_LENGTH))
            except ServingError as exc:
                model.stats.record_failure(0.0, exc.reason)
                raise
            deadline = math.inf if body.timeout_s is None else started + body.timeout_s
            outputs = await model.infer(body.inputs, body.outputs, deadline)
            payload, header_length = codec.encode_infer(body, model.name, model.version,
                                                        outputs, model.output_datatypes)
        except ServingError as exc:
            self._record(name, version, body, model, type(exc).__name__, started, exc)
            return error_reply(exc)
        except Exception:
            log.exception("HTTP infer %s failed unexpectedly", name[:100])
            exc = InternalError("internal error; see the server log")
            if model is not None:
                model.stats.record_failure(time.monotonic() - started, exc.reason)
            self._record(name, version, body, model, "InternalError", started, exc)
            return error_reply(exc)
        self._record(name, version, body, model, "OK", started, None)
        if header_length is None:
            return Reply(200, payload)
        return Reply(200, payload, "application/octet-stream",
                     {"Inference-Header-Content-Length": str(header_length)})

    def _record(self, name, version, body, model, outcome: str, started: float, exc) -> None:
        seconds = time.monotonic() - started
        if self._observe is not None:
            self._observe(name, model, exc, seconds, protocol="http")
        if self._access:
            access_log.info("HTTP infer model=%s version=%s id=%s status=%s ms=%.3f",
                            name[:100], version[:20], (body.id if body else "")[:64],
                            outcome, seconds * 1e3)

    # ---- repository --------------------------------------------------------------------
    def _index(self, raw: bytes) -> Reply:
        options = codec.parse_json(raw) if raw.strip() else {}
        if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
            raise InvalidInputError("the index request must be a JSON object like "
                                    '{"ready": true}')
        rows = self._repo.index(ready_only=options.get("ready", False))
        return json_reply([{"name": r.name, "version": r.version, "state": r.state,
                            "reason": r.reason} for r in rows])

    async def _control_model(self, name: str, action: str, request: Request) -> Reply:
        self._check_control(request.headers, action)
        options = codec.parse_json(request.body) if request.body.strip() else {}
        parameters = options.get("parameters", {}) if isinstance(options, dict) else None
        if not isinstance(parameters, dict):
            raise InvalidInputError(f"the {action} request must be a JSON object, optionally "
                                    'with "parameters"')
        unsupported = sorted(set(parameters) - _HARMLESS_LOAD_PARAMETERS)
        if unsupported:
            raise InvalidInputError(f"{action} parameters {unsupported} are not supported: "
                                    "models load from the repository as they are")
        target = self.cluster if self.cluster is not None else self._repo
        if action == "load":
            await target.load(name)
        else:
            await target.unload(name)
        return Reply(200, b"")

    def _check_control(self, headers: Mapping[str, str], action: str) -> None:
        self._control.check(headers.get(self._control.header), action, "HTTP")
