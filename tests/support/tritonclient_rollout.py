"""Run by the load-override tests in its own process (tritonclient's generated protobuf
modules clash with ours): tritonclient, unmodified, loads a model with a config override
and sends unversioned requests.

    python tritonclient_rollout.py grpc|http URL MODEL CONFIG_JSON_FILE|- REQUESTS

Prints one JSON document: the load's error ([status, message]) or null, and how many of
the requests each version answered.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
from tritonclient.utils import InferenceServerException


def main(protocol: str, url: str, model: str, config_path: str, requests: int) -> None:
    if protocol == "grpc":
        import tritonclient.grpc as triton
    else:
        import tritonclient.http as triton
    client = triton.InferenceServerClient(url)
    error = None
    if config_path != "-":
        config = open(config_path, encoding="utf-8").read()
        try:
            client.load_model(model, config=config)
        except InferenceServerException as exc:
            error = [str(exc.status()), exc.message()]
    versions: Counter = Counter()
    image = np.random.default_rng(0).random((1, 28, 28, 1), dtype=np.float32)
    tensor = triton.InferInput("image", [1, 28, 28, 1], "FP32")
    tensor.set_data_from_numpy(image)
    for _ in range(requests):
        response = client.infer(model, [tensor]).get_response()
        version = response.model_version if protocol == "grpc" else response["model_version"]
        versions[str(version)] += 1
    print(json.dumps({"error": error, "versions": dict(versions)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
