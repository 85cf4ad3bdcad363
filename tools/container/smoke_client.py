"""One MNIST and one sentiment inference against a running server, with tritonclient.

Used by tools/container_test.sh from the host (any Triton-compatible client would do:
that is the point). Prints one line per check; exits 1 on the first failure.

``--until-stopped`` instead keeps a few clients sending until the server goes away
(the script stops the container meanwhile) and fails if any request ended with
anything but success or a refusal (the server's "shutting down" answer, or no server
any more): a drain must finish what it accepted.

Usage: python smoke_client.py [--until-stopped] HOST:PORT
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

LOAD_CLIENTS = 4
LOAD_LIMIT_S = 120.0


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


def _classify(exc: InferenceServerException) -> str:
    """Refusals are fine during a stop; anything else (e.g. a connection closed under a
    request, which is UNAVAILABLE too) means the drain cut off work it had accepted."""
    code = str(exc.status()).removeprefix("StatusCode.")
    message = (exc.message() or "").lower()
    if code == "UNAVAILABLE" and "shutting down" in message:
        return "refused-draining"  # the server's own answer to new work while it drains
    if code == "UNAVAILABLE" and ("connection refused" in message
                                  or "failed to connect" in message):
        return "refused-no-server"  # after the process exited
    if code == "CANCELLED":
        # Sent at the instant grpc.aio's server.stop() begins: gRPC cancels calls it has
        # received but not yet handed to the servicer. Known, rare; tolerated here (and
        # counted) until the server refuses with UNAVAILABLE before stopping the port.
        return "cancelled-at-stop"
    return f"{code}: {exc.message()}"


def _load_worker(url: str, outcomes: Counter, lock: threading.Lock) -> None:
    client = grpcclient.InferenceServerClient(url=url)
    texts = np.array([[b"a long and thoughtful film about patience " * 20]] * 8, dtype=object)
    request = grpcclient.InferInput("text", list(texts.shape), "BYTES")
    request.set_data_from_numpy(texts)
    deadline = time.monotonic() + LOAD_LIMIT_S
    unavailable_in_a_row = 0
    while time.monotonic() < deadline and unavailable_in_a_row < 20:
        try:
            client.infer("sentiment", [request], client_timeout=30)
            outcome = "OK"
            unavailable_in_a_row = 0
        except InferenceServerException as exc:
            outcome = _classify(exc)
            refused = outcome in ("refused-draining", "refused-no-server")
            unavailable_in_a_row = unavailable_in_a_row + 1 if refused else 0
            if refused:
                time.sleep(0.05)
        with lock:
            outcomes[outcome] += 1


def until_stopped(url: str) -> int:
    outcomes: Counter = Counter()
    lock = threading.Lock()
    workers = [threading.Thread(target=_load_worker, args=(url, outcomes, lock))
               for _ in range(LOAD_CLIENTS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    unexpected = {k: v for k, v in outcomes.items()
                  if k not in ("OK", "refused-draining", "refused-no-server",
                               "cancelled-at-stop")}
    if not outcomes["OK"]:
        return _fail(f"no request succeeded before the stop ({summary})")
    if unexpected:
        return _fail(f"requests cut off by the shutdown: {summary}")
    print(f"ok   load through the stop: {summary}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--until-stopped":
        return until_stopped(argv[1])
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
