"""The OpenAPI 3.1 document of the REST API (served at GET /v2/openapi.json).

Written from the same route table the API answers (``ROUTES``); a test checks that
every route the server answers is described and every described route answers.
"""

from __future__ import annotations

from server import __version__

# (method, OpenAPI path, summary, request schema or None, answer schema or None)
MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"
ROUTES: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("get", "/v2/health/live", "Server liveness", None, "Live"),
    ("get", "/v2/health/ready", "Server readiness (503 while loading or draining)", None,
     "Ready"),
    ("get", "/v2", "Server metadata", None, "ServerMetadata"),
    ("get", "/v2/models/stats", "Statistics of every loaded model version", None,
     "Statistics"),
    ("get", "/v2/models/latency", "Latency of every loaded model version: bucket counts, "
     "mean and p50/p90/p99 estimated from the buckets", None, "Object"),
    ("get", MODEL + "/rollout", "Canary split per version and shadow agreement (summed "
     "over workers)", None, "Object"),
    *((method, base + suffix, summary, request, answer)
      for base in (MODEL, VERSION)
      for method, suffix, summary, request, answer in (
          ("get", "", "Model metadata", None, "ModelMetadata"),
          ("get", "/ready", "Model readiness (503 when not ready)", None, "ModelReady"),
          ("get", "/config", "Model configuration (Triton ModelConfig as JSON)", None,
           "Object"),
          ("get", "/stats", "Model statistics", None, "Statistics"),
          ("get", "/card", "Model card: what the training pipeline measured (404 when "
           "the version has no model_card.json)", None, "Object"),
          ("get", "/drift", "Drift: PSI and live vs reference proportions per signal "
           "(404 when the version has no reference.json)", None, "Object"),
          ("get", "/latency", "Latency: bucket counts, mean and p50/p90/p99 estimated "
           "from the buckets", None, "Object"),
          ("post", "/infer", "Inference: JSON tensors, or JSON plus binary tensor data",
           "InferRequest", "InferResponse"))),
    ("post", "/v2/repository/index", "Every model in the repository with its state", "Index",
     "IndexRows"),
    ("post", "/v2/repository/models/{model}/load", "Load or reload a model (explicit mode)",
     "Control", None),
    ("post", "/v2/repository/models/{model}/unload", "Unload a model (explicit mode)",
     "Control", None),
)

_ERRORS = {"400": "Bad request: malformed JSON or tensors that do not fit the model",
           "403": "Repository API key missing or wrong",
           "404": "Unknown model or version", "409": "Model control mode forbids this",
           "413": "Body over --max-message-bytes", "429": "Model queue full",
           "500": "Internal error or failed load", "503": "Not ready or draining",
           "504": "Timeout passed while queued"}

_TENSOR_META = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}}}
_PARAMETERS = {"type": "object", "additionalProperties": True}


def _schemas() -> dict:
    string_list = {"type": "array", "items": {"type": "string"}}
    return {
        "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "properties": {"name": {"type": "string"},
                                                        "ready": {"type": "boolean"}}},
        "Object": {"type": "object"},
        "ServerMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": string_list}},
        "ModelMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "versions": string_list,
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _TENSOR_META},
            "outputs": {"type": "array", "items": _TENSOR_META}}},
        "Statistics": {"type": "object", "properties": {
            "model_stats": {"type": "array", "items": {"type": "object"}}},
            "description": "Triton's ModelStatisticsResponse; counts are numbers, times ns"},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {**_PARAMETERS, "description": "binary_data_output (bool): all "
                           "outputs as binary data; timeout (int, microseconds)"},
            "inputs": {"type": "array", "items": {**_TENSOR_META, "properties": {
                **_TENSOR_META["properties"],
                "data": {"type": "array", "description": "row-major, flat or nested; BYTES "
                         "as strings"},
                "parameters": {**_PARAMETERS, "description": "binary_data_size (int): the "
                               "tensor's bytes follow the JSON header, in input order"}}}},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "parameters": {**_PARAMETERS, "description": "binary_data (bool)"}}}}}},
        "InferResponse": {"type": "object", "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": {**_TENSOR_META, "properties": {
                **_TENSOR_META["properties"], "data": {"type": "array"},
                "parameters": _PARAMETERS}}}}},
        "Index": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "IndexRows": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "state": {"type": "string"}, "reason": {"type": "string"}}}},
        "Control": {"type": "object", "properties": {"parameters": _PARAMETERS}},
    }


def _operation(path: str, summary: str, request: str | None, answer: str | None) -> dict:
    operation: dict = {"summary": summary, "responses": {
        "200": {"description": "OK"},
        **{code: {"description": text, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"}}}}
           for code, text in _ERRORS.items()}}}
    if answer is not None:
        operation["responses"]["200"]["content"] = {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{answer}"}}}
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    if names:
        operation["parameters"] = [{"name": n, "in": "path", "required": True,
                                    "schema": {"type": "string"}} for n in names]
    if path.endswith("/infer"):
        operation["parameters"].append({
            "name": "Inference-Header-Content-Length", "in": "header", "required": False,
            "schema": {"type": "integer"},
            "description": "Binary tensor extension: length of the JSON header; the rest "
                           "of the body is tensor data (application/octet-stream)"})
        operation["responses"]["200"]["content"]["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "When outputs are asked for as binary data: the JSON header "
                           "(length in the Inference-Header-Content-Length answer header), "
                           "then the output bytes"}
    if request is not None:
        operation["requestBody"] = {"required": request == "InferRequest", "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}}
    return operation


def openapi_document() -> dict:
    paths: dict[str, dict] = {}
    for method, path, summary, request, answer in ROUTES:
        paths.setdefault(path, {})[method] = _operation(path, summary, request, answer)
    paths["/"] = {"get": {"summary": "The web console (HTML)", "responses": {
        "200": {"description": "OK", "content": {"text/html": {}}}}}}
    paths["/v2/openapi.json"] = {"get": {"summary": "This document", "responses": {
        "200": {"description": "OK", "content": {"application/json": {}}}}}}
    return {"openapi": "3.1.0",
            "info": {"title": "onnx-serve KServe v2 REST API", "version": __version__,
                     "description": "KServe v2 / Triton HTTP protocol with Triton's binary "
                                    "tensor data extension. Errors: {\"error\": message}."},
            "paths": paths, "components": {"schemas": _schemas()}}
