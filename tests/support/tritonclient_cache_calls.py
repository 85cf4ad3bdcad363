"""Run by tests/system/grpc/test_response_cache.py in its own process: tritonclient,
unmodified, drives the response cache (its protobuf modules clash with ours in one
process). Prints one JSON document with what the client saw."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http


def _infer(client, images, outputs=("probabilities",)):
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    wanted = [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer("mnist", [tensor], outputs=wanted, request_id="same")


def _cache_counts(client) -> dict:
    stats = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    infer = stats["inference_stats"]
    return {k: int(infer.get(k, {}).get("count", 0)) for k in ("success", "queue", "cache_hit", "cache_miss")} | {
        "execution_count": int(stats.get("execution_count", 0))}


def main(grpc_address: str, http_address: str) -> None:
    client = triton.InferenceServerClient(grpc_address)
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    first = _infer(client, images)
    second = _infer(client, images)
    result = {
        "same_bytes": first.get_response().SerializeToString() == second.get_response().SerializeToString(),
        "after_two": _cache_counts(client),
    }
    _infer(client, images[:1])  # other shape and bytes: a miss
    result["after_other"] = _cache_counts(client)
    http = triton_http.InferenceServerClient(http_address)
    tensor = triton_http.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    answer = http.infer("mnist", [tensor])
    result["http_same_values"] = bool(np.array_equal(answer.as_numpy("probabilities"),
                                                     first.as_numpy("probabilities")))
    result["after_http"] = _cache_counts(client)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
