"""Triton's system shared memory: tensors that clients on this host pass by reference.

A client creates a POSIX shared-memory object (``shm_open``: a file in /dev/shm), registers
a region of it by name, and names that region (with an offset and a byte size) in an
input's or requested output's parameters instead of sending the bytes. Only what the
client registered can be reached: the key must name a regular file directly in /dev/shm
(no path, no symlink), every offset and size is checked against its region, and an
output is written only inside its region. A region unregistered while requests use it
stays mapped until the last of them is done (reference count), so no request reads or
writes freed memory. Event loop only (registration and requests), but the mapping is
plain memory that ORT and decoders read from any thread.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from dataclasses import dataclass

import numpy as np

from server.core.errors import AlreadyExistsError, InvalidInputError, ModelNotFoundError

SHM_DIR = "/dev/shm"
_KEY_RE = re.compile(r"/?[A-Za-z0-9_.-]{1,200}")


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


def already_registered(name: str) -> AlreadyExistsError:
    """Triton's refusal of a name registered twice (its words: tools match them)."""
    return AlreadyExistsError(f"shared memory region '{name}' already in manager: "
                              "unregister it first, or pick another name")


def not_registered(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"shared memory region '{name}' is not registered")


class _Region:
    __slots__ = ("status", "mapping", "view", "users", "retired")

    def __init__(self, status: RegionStatus, mapping: mmap.mmap):
        self.status = status
        self.mapping = mapping
        self.view = memoryview(mapping)[status.offset:status.offset + status.byte_size]
        self.users = 0  # requests holding the region now
        self.retired = False  # unregistered; unmapped when the last user leaves

    def close(self) -> None:
        self.view.release()
        self.mapping.close()


class SharedMemoryRegistry:
    def __init__(self) -> None:
        self._regions: dict[str, _Region] = {}

    # ---- control -------------------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidInputError("a shared-memory region needs a name")
        if name in self._regions:
            raise already_registered(name)
        if not _KEY_RE.fullmatch(key) or key.strip("/") in (".", ".."):
            raise InvalidInputError(f"shared memory key {key!r} is not a POSIX shared-memory "
                                    "name (letters, digits, '_', '-', '.', one optional "
                                    "leading '/')")
        if offset < 0 or byte_size <= 0:
            raise InvalidInputError(f"shared memory region '{name}': offset {offset} and "
                                    f"byte_size {byte_size} must be >= 0 and > 0")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInputError(f"unable to open shared memory region '{name}' with key "
                                    f"{key!r}: {exc.strerror} (create it with shm_open, e.g. "
                                    "tritonclient.utils.shared_memory)") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInputError(f"shared memory key {key!r} is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInputError(
                    f"shared memory region '{name}': offset {offset} + byte_size {byte_size} "
                    f"is past the end of {key!r} ({info.st_size} bytes)")
            mapping = mmap.mmap(fd, offset + byte_size, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._regions[name] = _Region(RegionStatus(name, key, offset, byte_size), mapping)

    def unregister(self, name: str = "") -> None:
        """One region, or every region when ``name`` is empty."""
        if name and name not in self._regions:
            raise not_registered(name)
        for region_name in ([name] if name else list(self._regions)):
            region = self._regions.pop(region_name)
            region.retired = True
            if region.users == 0:
                region.close()

    def status(self, name: str = "") -> list[RegionStatus]:
        if name and name not in self._regions:
            raise not_registered(name)
        return [r.status for n, r in sorted(self._regions.items()) if not name or n == name]

    def regions(self) -> dict[str, RegionStatus]:
        """What is registered now (name -> its key and span)."""
        return {n: r.status for n, r in self._regions.items()}

    def __len__(self) -> int:
        return len(self._regions)

    # ---- requests ------------------------------------------------------------------------
    def hold(self, name: str, offset: int, byte_size: int, what: str) -> "Lease":
        """The region's bytes [offset, offset + byte_size) for one request."""
        region = self._regions.get(name)
        if region is None:
            raise InvalidInputError(f"{what}: shared memory region '{name}' is not registered")
        size = region.status.byte_size
        if offset < 0 or byte_size < 0 or offset + byte_size > size:
            raise InvalidInputError(f"{what}: offset {offset} + byte_size {byte_size} is outside "
                                    f"shared memory region '{name}' ({size} bytes)")
        region.users += 1
        return Lease(region, offset, byte_size)


class Lease:
    """A request's hold on part of a region: ``view`` until ``release``.

    Inputs are copied out (``copy_out``) and outputs copied in (``copy_in``) at once: no
    array the server keeps afterwards (a batch, the response cache, drift) points into
    memory a client can change or unmap.
    """

    __slots__ = ("_region", "view")

    def __init__(self, region: _Region, offset: int, byte_size: int):
        self._region = region
        self.view = region.view[offset:offset + byte_size]

    def copy_out(self) -> bytes:
        try:
            return bytes(self.view)
        finally:
            self.release()

    def copy_in(self, data: np.ndarray) -> None:
        try:
            flat = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
            target = np.frombuffer(self.view, dtype=np.uint8, count=flat.size)
            target[:] = flat
            del target  # the export on the view ends here, before release
        finally:
            self.release()

    def release(self) -> None:
        region, self._region = self._region, None
        if region is None:
            return
        self.view.release()
        region.users -= 1
        if region.retired and region.users == 0:
            region.close()
