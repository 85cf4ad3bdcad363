"""Files the REST port serves as they are: the console (GET /) and the OpenAPI document.

Read once when the server starts (a few kilobytes), from a fixed list of names, so no
request path ever reaches the file system.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from server.rest.api import Reply

CONSOLE_DIR = Path(__file__).with_name("console")
_CONSOLE_FILES = {  # URL path -> (file in console/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/console/panels.js": ("panels.js", "text/javascript; charset=utf-8"),
    "/console/digits.js": ("digits.js", "text/javascript; charset=utf-8"),
    "/console/drift.js": ("drift.js", "text/javascript; charset=utf-8"),
    "/console/rollout.js": ("rollout.js", "text/javascript; charset=utf-8"),
    "/console/latency.js": ("latency.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/console/style.css": ("style.css", "text/css; charset=utf-8"),
}
OPENAPI_PATH = "/v2/openapi.json"


def static_replies() -> dict[str, Reply]:
    from server.rest.openapi import openapi_document

    # The console must work offline and cannot be framed by another site.
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                          "frame-ancestors 'none'"}
    replies = {path: Reply(200, (CONSOLE_DIR / name).read_bytes(), kind, dict(headers))
               for path, (name, kind) in _CONSOLE_FILES.items()
               if (CONSOLE_DIR / name).is_file()}
    replies[OPENAPI_PATH] = Reply(200, orjson.dumps(openapi_document()))
    return replies
