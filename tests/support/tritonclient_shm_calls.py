"""Run by tests/system/grpc/test_shared_memory.py in its own process: tritonclient's own
shared-memory utilities and clients, unmodified, over gRPC and REST. Prints JSON."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException


def _error(call) -> str:
    try:
        call()
    except InferenceServerException as exc:
        return str(exc)
    return ""


def _round(client, module, images, tag: str) -> dict:
    rows = len(images)
    in_bytes, out_bytes = images.nbytes, rows * 10 * 4
    key_in, key_out = f"/onnxserve-{tag}-in", f"/onnxserve-{tag}-out"
    region_in = shm.create_shared_memory_region(f"{tag}_in", key_in, in_bytes)
    region_out = shm.create_shared_memory_region(f"{tag}_out", key_out, out_bytes)
    try:
        shm.set_shared_memory_region(region_in, [images])
        client.unregister_system_shared_memory()
        client.register_system_shared_memory(f"{tag}_in", key_in, in_bytes)
        client.register_system_shared_memory(f"{tag}_out", key_out, out_bytes)
        tensor = module.InferInput("image", list(images.shape), "FP32")
        tensor.set_shared_memory(f"{tag}_in", in_bytes)
        wanted = module.InferRequestedOutput("probabilities")
        wanted.set_shared_memory(f"{tag}_out", out_bytes)
        answer = client.infer("mnist", [tensor], outputs=[wanted])
        described = answer.get_output("probabilities")  # JSON over http, protobuf over grpc
        via_shm = shm.get_contents_as_numpy(region_out, np.float32, [rows, 10])
        plain = module.InferInput("image", list(images.shape), "FP32")
        plain.set_data_from_numpy(images)
        direct = client.infer("mnist", [plain]).as_numpy("probabilities")
        status = client.get_system_shared_memory_status()
        result = {
            "equal": bool(np.array_equal(via_shm, direct)),
            "shm_output": described if isinstance(described, dict) else None,
            "status": status if isinstance(status, list) else
            [{"name": r.name, "key": r.key, "byte_size": r.byte_size}
             for r in status.regions.values()],
            "twice": _error(lambda: client.register_system_shared_memory(
                f"{tag}_in", key_in, in_bytes)),
            "past_end": _error(lambda: client.register_system_shared_memory(
                f"{tag}_big", key_in, in_bytes + 4096)),
            "not_shm": _error(lambda: client.register_system_shared_memory(
                f"{tag}_etc", "/../etc/passwd", 16)),
        }
        small = module.InferRequestedOutput("probabilities")
        small.set_shared_memory(f"{tag}_out", 8)
        result["output_too_small"] = _error(lambda: client.infer("mnist", [tensor], outputs=[small]))
        client.unregister_system_shared_memory(f"{tag}_in")
        result["after_unregister"] = _error(lambda: client.infer("mnist", [tensor]))
        client.unregister_system_shared_memory()
        return result
    finally:
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)


def main(grpc_address: str, http_address: str) -> None:
    images = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    grpc_side = grpc_client.InferenceServerClient(grpc_address)
    result = {"grpc": _round(grpc_side, grpc_client, images, "g"),
              "http": _round(http_client.InferenceServerClient(http_address), http_client,
                             images, "h"),
              "extensions": grpc_side.get_server_metadata(as_json=True)["extensions"],
              "cuda": _error(lambda: grpc_side.get_cuda_shared_memory_status())}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
