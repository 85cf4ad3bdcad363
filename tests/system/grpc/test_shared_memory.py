"""Triton's system shared memory with tritonclient's own utilities, over gRPC and REST.

64 images go in through a POSIX shared-memory region and the probabilities come back in
another; they equal a plain request's. Registering a name twice, a span past the end of
the object, a key that is not a shared-memory object, an output region too small and a
request naming an unregistered region each get a clear error; CUDA shared memory is
UNIMPLEMENTED with a message.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_tritonclient_shared_memory_round_trip(server):
    run = subprocess.run([sys.executable, str(REPO_ROOT / "tests/support/tritonclient_shm_calls.py"),
                          server.address, server.http_url.removeprefix("http://")],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert "system_shared_memory" in seen["extensions"]
    for protocol in ("grpc", "http"):
        side = seen[protocol]
        assert side["equal"] is True, protocol
        assert sorted(r["name"] for r in side["status"]) == [f"{protocol[0]}_in", f"{protocol[0]}_out"]
        assert "already in manager" in side["twice"]
        assert "past the end" in side["past_end"]
        assert "not a POSIX shared-memory name" in side["not_shm"]
        assert "needs 2560 bytes" in side["output_too_small"]
        assert "is not registered" in side["after_unregister"]
    # As in Triton: an output in shared memory is described without data or parameters
    # (Triton's C++ HTTP client, perf_analyzer's, reads an output with "parameters" as
    # binary data and fails without parameters.binary_data_size)
    assert seen["http"]["shm_output"] == {"name": "probabilities", "datatype": "FP32",
                                          "shape": [64, 10]}
    assert "CUDA shared memory is not supported" in seen["cuda"]
