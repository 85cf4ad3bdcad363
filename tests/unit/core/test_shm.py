"""System shared-memory regions without a server: what can be registered, read, written."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from server.core.errors import InvalidInputError, ModelNotFoundError
from server.core.errors import AlreadyExistsError
from server.core.shm import SharedMemoryRegistry


@pytest.fixture()
def shm_key():
    key = f"/onnxserve-test-{uuid.uuid4().hex[:12]}"
    path = "/dev/shm" + key
    with open(path, "wb") as f:
        f.write(bytes(4096))
    yield key
    os.unlink(path)


def test_register_read_write_status_unregister(shm_key):
    registry = SharedMemoryRegistry()
    registry.register("input", shm_key, 1024, 2048)
    with open("/dev/shm" + shm_key, "r+b") as f:
        f.seek(1024 + 8)
        f.write(np.arange(4, dtype=np.float32).tobytes())
    data = registry.hold("input", 8, 16, "input x").copy_out()
    assert np.frombuffer(data, np.float32).tolist() == [0, 1, 2, 3]
    registry.hold("input", 100, 8, "output y").copy_in(np.array([7.5, -1], np.float32))
    with open("/dev/shm" + shm_key, "rb") as f:
        f.seek(1024 + 100)
        assert np.frombuffer(f.read(8), np.float32).tolist() == [7.5, -1]
    assert [(s.name, s.key, s.offset, s.byte_size) for s in registry.status()] == [
        ("input", shm_key, 1024, 2048)]
    registry.unregister("input")
    assert registry.status() == []


def test_a_name_twice_is_refused(shm_key):
    registry = SharedMemoryRegistry()
    registry.register("r", shm_key, 0, 64)
    with pytest.raises(AlreadyExistsError, match="already in manager"):
        registry.register("r", shm_key, 0, 64)


@pytest.mark.parametrize("key, message", [
    ("/../etc/passwd", "not a POSIX shared-memory name"),
    ("/a/b", "not a POSIX shared-memory name"),
    ("/onnxserve-missing-object", "unable to open"),
])
def test_only_shared_memory_objects_are_mapped(key, message):
    with pytest.raises(InvalidInputError, match=message):
        SharedMemoryRegistry().register("r", key, 0, 16)


def test_a_symlink_in_dev_shm_is_refused(shm_key, tmp_path):
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = f"/dev/shm/onnxserve-link-{uuid.uuid4().hex[:8]}"
    os.symlink(target, link)
    try:
        with pytest.raises(InvalidInputError, match="unable to open"):
            SharedMemoryRegistry().register("r", "/" + os.path.basename(link), 0, 16)
    finally:
        os.unlink(link)


def test_bounds_are_checked_at_register_and_per_request(shm_key):
    registry = SharedMemoryRegistry()
    with pytest.raises(InvalidInputError, match="past the end"):
        registry.register("r", shm_key, 4000, 200)
    registry.register("r", shm_key, 0, 128)
    with pytest.raises(InvalidInputError, match=r"outside shared memory region 'r' \(128 bytes\)"):
        registry.hold("r", 120, 16, "input x")
    with pytest.raises(InvalidInputError, match="not registered"):
        registry.hold("other", 0, 4, "input x")
    with pytest.raises(ModelNotFoundError):
        registry.unregister("other")


def test_unregister_under_a_request_keeps_the_memory_until_it_is_done(shm_key):
    registry = SharedMemoryRegistry()
    registry.register("r", shm_key, 0, 64)
    lease = registry.hold("r", 0, 8, "input x")
    registry.unregister()  # all regions
    assert registry.status() == []
    assert lease.copy_out() == bytes(8)  # still mapped for the request that held it
    with pytest.raises(InvalidInputError, match="not registered"):
        registry.hold("r", 0, 8, "input x")
