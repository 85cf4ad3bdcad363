"""Run by test_rest_tritonclient.py in its own process: tritonclient.http, unmodified.

Prints one JSON document with what the client saw. (Its own process, like the gRPC
client's script, so that nothing of the test process leaks into the client.)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def _error(call) -> list | None:
    try:
        call()
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    return None


def main(url: str, images_path: str) -> None:
    client = triton.InferenceServerClient(url, concurrency=4)
    images = np.load(images_path)
    result: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist"),
        "missing_ready": client.is_model_ready("no_such_model"),
        "extensions": client.get_server_metadata()["extensions"],
        "metadata": client.get_model_metadata("mnist", model_version="1"),
        "config": client.get_model_config("sentiment"),
        "index": sorted(m["name"] for m in client.get_model_repository_index()),
    }
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)  # binary_data=True: the binary tensor extension
    answer = client.infer("mnist", [tensor], request_id="h1")  # binary outputs by default
    result["mnist_binary"] = answer.as_numpy("probabilities").tolist()
    result["mnist_id"] = answer.get_response()["id"]
    as_json = triton.InferInput("image", list(images.shape), "FP32")
    as_json.set_data_from_numpy(images, binary_data=False)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result["mnist_json"] = client.infer("mnist", [as_json], outputs=wanted).as_numpy(
        "probabilities").tolist()
    result["mnist_gzip"] = client.infer(
        "mnist", [tensor], request_compression_algorithm="gzip").as_numpy(
        "probabilities").tolist()
    pending = [client.async_infer("mnist", [tensor], request_id=f"a{i}") for i in range(8)]
    result["async_ids"] = [p.get_result().get_response()["id"] for p in pending]

    texts = np.array([[b"An absolute masterpiece, I loved it."], [b"Dull, boring, awful."]],
                     dtype=object)
    for binary in (True, False):
        text = triton.InferInput("text", list(texts.shape), "BYTES")
        text.set_data_from_numpy(texts, binary_data=binary)
        result[f"sentiment_{binary}"] = client.infer("sentiment", [text]).as_numpy(
            "probability").tolist()

    result["error"] = _error(lambda: client.infer("no_such_model", [tensor]))
    result["load_error"] = _error(lambda: client.load_model("mnist"))
    stats = client.get_inference_statistics("mnist")["model_stats"][0]
    result["stats"] = {k: stats[k] for k in ("inference_count", "execution_count")}
    client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
