"""Run by test_tritonclient.py in its own process: the official client, unmodified.

(tritonclient's protobuf modules clash with ours in one process, so it never shares
one with the server stubs.) Prints one JSON document with what the client saw.
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(address: str, images_path: str) -> None:
    client = triton.InferenceServerClient(address)
    images = np.load(images_path)
    result: dict = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready("mnist"),
        "extensions": list(client.get_server_metadata(as_json=True)["extensions"]),
        "metadata": client.get_model_metadata("mnist", as_json=True),
        "config_max_batch": client.get_model_config("sentiment", as_json=True)["config"]["max_batch_size"],
        "index": sorted(m["name"] for m in client.get_model_repository_index(as_json=True)["models"]),
    }
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    wanted = [triton.InferRequestedOutput("probabilities")]
    answer = client.infer("mnist", [tensor], outputs=wanted, request_id="t1")
    result["mnist"] = answer.as_numpy("probabilities").tolist()
    result["mnist_id"] = answer.get_response().id

    texts = np.array([[b"An absolute masterpiece, I loved it."], [b"Dull, boring, awful."]],
                     dtype=object)
    text = triton.InferInput("text", list(texts.shape), "BYTES")
    text.set_data_from_numpy(texts)
    result["sentiment"] = client.infer("sentiment", [text]).as_numpy("probability").tolist()

    try:
        client.infer("no_such_model", [tensor])
        result["error"] = None
    except InferenceServerException as exc:
        result["error"] = [exc.status(), exc.message()]

    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    for i in range(len(images)):
        one = triton.InferInput("image", [1, 28, 28, 1], "FP32")
        one.set_data_from_numpy(images[i:i + 1])
        client.async_stream_infer("mnist", [one], request_id=f"stream{i}")
    streamed = {}
    for _ in range(len(images)):
        res, err = replies.get(timeout=30)
        assert err is None, err
        streamed[res.get_response().id] = res.as_numpy("probabilities")[0].tolist()
    client.stop_stream()
    result["stream"] = [streamed[f"stream{i}"] for i in range(len(images))]
    stats = client.get_inference_statistics("mnist", as_json=True)["model_stats"][0]
    result["stats"] = {k: int(stats[k]) for k in ("inference_count", "execution_count")}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
