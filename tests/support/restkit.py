"""Helpers for the REST tests: one HTTP call with the standard library, JSON bodies."""

from __future__ import annotations

import http.client
import json
import ssl

import numpy as np


def call(port: int, method: str, path: str, body=None, headers: dict | None = None,
         context: ssl.SSLContext | None = None, timeout_s: float = 60.0):
    """(status, headers, body bytes); dicts and lists are sent as JSON."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout_s,
                                                 context=context)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def call_json(port: int, method: str, path: str, body=None, headers=None, **kwargs):
    """(status, parsed JSON body or None)."""
    status, _, data = call(port, method, path, body, headers, **kwargs)
    return status, (json.loads(data) if data else None)


def image_infer_body(images: np.ndarray, request_id: str = "") -> dict:
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(images.shape),
                        "data": images.reshape(-1).tolist()}]}
    if request_id:
        body["id"] = request_id
    return body


def text_infer_body(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts), 1],
                        "data": texts}]}


def output(doc: dict, name: str) -> np.ndarray:
    for tensor in doc["outputs"]:
        if tensor["name"] == name:
            return np.array(tensor["data"], np.float32).reshape(tensor["shape"])
    raise AssertionError(f"no output {name!r} in {doc}")
