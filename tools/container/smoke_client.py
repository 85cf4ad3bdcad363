"""One MNIST and one sentiment inference against a running server, with tritonclient.

Used by tools/container_test.sh from the host (any Triton-compatible client would do:
that is the point). Prints one line per check; exits 1 on the first failure.

Usage: python smoke_client.py HOST:PORT
"""

from __future__ import annotations

import sys

import numpy as np
import tritonclient.grpc as grpcclient


def _fail(message: str) -> int:
    print(f"FAIL {message}")
    return 1


def check_mnist(client: grpcclient.InferenceServerClient) -> str | None:
    image = np.zeros((2, 28, 28, 1), dtype=np.float32)
    image[1, 4:24, 13:15, 0] = 1.0  # a vertical stroke, roughly a "1"
    request = grpcclient.InferInput("image", list(image.shape), "FP32")
    request.set_data_from_numpy(image)
    result = client.infer("mnist", [request],
                          outputs=[grpcclient.InferRequestedOutput("probabilities")])
    probabilities = result.as_numpy("probabilities")
    if probabilities is None or probabilities.shape != (2, 10):
        return f"mnist: expected probabilities [2,10], got {getattr(probabilities, 'shape', None)}"
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
        return f"mnist: rows do not sum to 1: {probabilities.sum(axis=1)}"
    print(f"ok   mnist: probabilities {probabilities.shape}, argmax {probabilities.argmax(1)}")
    return None


def check_sentiment(client: grpcclient.InferenceServerClient) -> str | None:
    texts = np.array([[b"A wonderful, moving film with superb acting."],
                      [b"Dull, predictable and far too long. A waste of time."]], dtype=object)
    request = grpcclient.InferInput("text", list(texts.shape), "BYTES")
    request.set_data_from_numpy(texts)
    result = client.infer("sentiment", [request],
                          outputs=[grpcclient.InferRequestedOutput("probability")])
    probability = result.as_numpy("probability")
    if probability is None or probability.shape != (2, 1):
        return f"sentiment: expected probability [2,1], got {getattr(probability, 'shape', None)}"
    if not ((probability >= 0) & (probability <= 1)).all():
        return f"sentiment: probabilities outside [0, 1]: {probability.ravel()}"
    print(f"ok   sentiment: probability {probability.ravel().round(3).tolist()}")
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    client = grpcclient.InferenceServerClient(url=argv[0])
    if not client.is_server_ready():
        return _fail(f"server at {argv[0]} is not ready")
    for name in ("mnist", "sentiment"):
        if not client.is_model_ready(name):
            return _fail(f"model {name!r} is not ready")
    for check in (check_mnist, check_sentiment):
        problem = check(client)
        if problem:
            return _fail(problem)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
