"""Triton's shared-memory endpoints over REST (what tritonclient.http calls):

    GET  /v2/systemsharedmemory[/region/{name}]/status
    POST /v2/systemsharedmemory/region/{name}/register   {"key", "offset", "byte_size"}
    POST /v2/systemsharedmemory[/region/{name}]/unregister
    /v2/cudasharedmemory/...  -> 501: not served here
"""

from __future__ import annotations

import re

import orjson

from server.core.errors import InvalidInputError, UnimplementedError
from server.dataplane.dataplane import DataPlane

_PATH = re.compile(r"/v2/systemsharedmemory(?:/region/(?P<name>[^/]+))?/"
                   r"(?P<action>status|register|unregister)")
PREFIXES = ("/v2/systemsharedmemory", "/v2/cudasharedmemory")


def allowed(path: str) -> str:
    """The method a shared-memory path answers ("" if none)."""
    m = _PATH.fullmatch(path)
    if m is None or (m["action"] == "register" and not m["name"]):
        return ""
    return "GET" if m["action"] == "status" else "POST"


async def handle(plane: DataPlane, method: str, path: str, body: bytes):
    """(status, JSON document) of a shared-memory request, or None when not one."""
    if path.startswith("/v2/cudasharedmemory"):
        raise UnimplementedError("CUDA shared memory is not supported by this server; use "
                                 "system shared memory (/v2/systemsharedmemory)")
    m = _PATH.fullmatch(path)
    if m is None or allowed(path) != ("GET" if method == "HEAD" else method):
        return None
    name = m["name"] or ""
    if m["action"] == "status":
        return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in plane.shm_status(name)]
    if m["action"] == "unregister":
        await plane.shm_unregister(name)
        return {}
    request = _json(body)
    await plane.shm_register(name, _text(request.get("key")), _count(request, "offset", 0),
                             _count(request, "byte_size", None))
    return {}


def _json(body: bytes) -> dict:
    try:
        doc = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the register request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInputError('the register request must be a JSON object like {"key": '
                                '"/name", "offset": 0, "byte_size": 1024}')
    return doc


def _text(value) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"the register request's key must be a string, got {value!r}")
    return value


def _count(doc: dict, field: str, default):
    value = doc.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"the register request's {field} must be an integer >= 0, "
                                f"got {value!r}")
    return value
