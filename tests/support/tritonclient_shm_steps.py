"""Run by tests/system/cluster/test_worker_shm.py in its own process (tritonclient.grpc
and our stubs register the same protobuf symbols): shared-memory steps with tritonclient,
unmodified, each on a FRESH connection (a new client; gRPC without the process-wide
subchannel pool), so that with ``--workers N`` the kernel picks a worker per step.

    python tritonclient_shm_steps.py GRPC_ADDRESS HTTP_ADDRESS 'JSON list of steps'

Each step is {"op": ..., "protocol": "grpc" | "http", ...}; prints the JSON list of
their results:

- register {name, key, byte_size}  -> "" or the error's message
- unregister {name}                -> "" or the error's message ("" name: all)
- status {}                        -> sorted [name, key, offset, byte_size] rows
- infer {input: {name, bytes}, output: {name, key, bytes}, shape, times}
    -> one entry per request: the output region's contents after it (a list of rows),
       or the error's message

The test process creates the regions (tritonclient.utils.shared_memory) and fills them.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

MODULES = {"grpc": grpc_client, "http": http_client}


def _client(protocol: str, addresses: dict):
    if protocol == "grpc":
        return grpc_client.InferenceServerClient(
            addresses["grpc"], channel_args=[("grpc.use_local_subchannel_pool", 1)])
    return http_client.InferenceServerClient(addresses["http"])


def _status_rows(status) -> list:
    if isinstance(status, list):  # http: dicts
        rows = [[r["name"], r["key"], int(r.get("offset", 0)), int(r["byte_size"])]
                for r in status]
    else:
        rows = [[r.name, r.key, r.offset, r.byte_size] for r in status.regions.values()]
    return sorted(rows)


def _infer_once(step: dict, addresses: dict, out: np.ndarray) -> object:
    protocol = step["protocol"]
    module = MODULES[protocol]
    client = _client(protocol, addresses)
    try:
        out[:] = 0  # what the server writes there now, not a previous answer
        tensor = module.InferInput("image", step["shape"], "FP32")
        tensor.set_shared_memory(step["input"]["name"], step["input"]["bytes"])
        wanted = module.InferRequestedOutput("probabilities")
        wanted.set_shared_memory(step["output"]["name"], step["output"]["bytes"])
        client.infer("mnist", [tensor], outputs=[wanted])
        return out.tolist()
    except InferenceServerException as exc:
        return str(exc)
    finally:
        client.close()


def _step(step: dict, addresses: dict) -> object:
    op = step["op"]
    if op == "infer":
        # The test process's output region, read here as a plain mapping (attaching with
        # tritonclient.utils would have Python's resource tracker unlink it at exit).
        out = np.memmap("/dev/shm/" + step["output"]["key"].lstrip("/"), np.float32, "r+",
                        shape=(step["shape"][0], 10))
        return [_infer_once(step, addresses, out) for _ in range(step["times"])]
    client = _client(step["protocol"], addresses)
    try:
        if op == "register":
            client.register_system_shared_memory(step["name"], step["key"], step["byte_size"])
        elif op == "unregister":
            client.unregister_system_shared_memory(step["name"])
        elif op == "status":
            return _status_rows(client.get_system_shared_memory_status())
        else:
            raise ValueError(f"unknown step {op!r}")
        return ""
    except InferenceServerException as exc:
        return str(exc)
    finally:
        client.close()


def main(grpc_address: str, http_address: str, steps: str) -> None:
    addresses = {"grpc": grpc_address, "http": http_address}
    print(json.dumps([_step(step, addresses) for step in json.loads(steps)]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
