"""The use cases every face calls: inference, metadata, readiness, statistics,
repository control and the access log. A face only translates its wire form to these
calls and their answers (or their ``ServingError``) back to the wire.

With worker processes (``--workers N``) what must look like one server (readiness,
statistics, load and unload, shared-memory registrations) also goes through ``cluster``
(server.cluster.coordinator), so every face gets the same one-server answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from server import __version__
from server.core.errors import (InternalError, ModelNotFoundError, ModelNotReadyError,
                                ServingError)
from server.core.lifecycle import Lifecycle
from server.core.model import ModelVersion
from server.core.repository import ModelRepository
from server.core.response_cache import ResponseCache
from server.core.shm import SharedMemoryRegistry
from server.kserve.shared_memory import place_outputs, read_input
from server.dataplane import reports
from server.dataplane.caching import forget_on_change, look_up
from server.dataplane.control import RepositoryControl
from server.dataplane.load_options import load_config
from server.kserve.statistics import statistics_response
from server.kserve.tensors import InputHeader

log = logging.getLogger("server.dataplane")
access_log = logging.getLogger("server.access")

SERVER_NAME = "onnx-serve"
# Only what is really served: Triton clients decide what to call from this list.
EXTENSIONS = ("model_configuration", "statistics", "model_repository",
              "system_shared_memory")


class WireRequest(Protocol):
    """One inference request as a face received it, read in this order: headers (names,
    datatypes, shapes; no tensor data), then the data, once the model accepted them."""

    model_name: str
    model_version: str

    def request_id(self) -> str: ...

    def headers(self) -> list[InputHeader]: ...

    def decode_is_heavy(self, headers: list[InputHeader]) -> bool: ...

    def decode(self, headers: list[InputHeader]) -> dict[str, np.ndarray]: ...

    def outputs(self) -> tuple[str, ...]: ...

    def output_regions(self) -> dict: ...  # output name -> kserve.shared_memory.ShmRef

    def deadline(self, started: float) -> float: ...  # monotonic seconds; inf = none


class Cluster(Protocol):
    """The other workers of one server (server.cluster.coordinator.Coordinator)."""

    async def peers_ready(self) -> bool: ...

    async def statistics(self, name: str, version: str, mine): ...

    async def load(self, name: str, config: str | None = None) -> None: ...

    async def unload(self, name: str) -> None: ...

    async def report(self, kind: str, name: str, version: str, mine: dict) -> dict: ...

    def attach_shm(self, registry: SharedMemoryRegistry) -> None: ...

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    async def shm_unregister(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: list[int]  # -1 for the batch dimension and variable dimensions


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class DataPlane:
    def __init__(self, repository: ModelRepository, lifecycle: Lifecycle, *,
                 model_control_mode: str = "none", repository_api_key: str = "",
                 access_log_enabled: bool = False, observer=None,
                 cluster: Cluster | None = None, cache: ResponseCache | None = None):
        self.repository = repository
        self.lifecycle = lifecycle
        self.control = RepositoryControl(model_control_mode, repository_api_key)
        self._access = access_log_enabled
        # observer(model name, model or None, exc or None, seconds, protocol=) -> metrics
        self._observe = observer
        self.cluster = cluster
        self.cache = cache  # Triton's response cache (models opt in); None = off
        self.shm = SharedMemoryRegistry()  # system shared-memory regions clients registered
        if cluster is not None:  # every worker maps the cluster's regions (joins, repairs)
            cluster.attach_shm(self.shm)
        if cache is not None:
            repository.listeners.append(forget_on_change(cache))

    # ---- health and metadata -----------------------------------------------------------
    def ready_here(self) -> bool:
        """This process's readiness (the one local rule; health probes of a worker)."""
        return self.lifecycle.ready(self.repository)

    async def ready(self) -> bool:
        """Server readiness: here and, with workers, on every worker."""
        if not self.ready_here():
            return False
        return self.cluster is None or await self.cluster.peers_ready()

    def model_ready(self, name: str, version: str) -> bool:
        return not self.lifecycle.draining and self.repository.is_ready(name, version)

    def known_model_ready(self, name: str, version: str) -> bool:
        """``model_ready`` for a model (and version) the repository knows; an unknown one
        raises ModelNotFoundError, as every other model endpoint does (REST: 404)."""
        try:
            self.repository.get(name, version)
        except ModelNotReadyError:
            return False
        return not self.lifecycle.draining

    @staticmethod
    def server_metadata() -> tuple[str, str, tuple[str, ...]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def model_metadata(self, name: str, version: str) -> ModelMetadata:
        model = self.repository.get(name, version)
        spec = model.spec
        batch = [-1] if spec.max_batch_size else []
        entry = self.repository.entry(model.name)
        versions = sorted(entry.versions) if entry else [model.version]
        return ModelMetadata(
            model.name, [str(v) for v in versions], spec.proto.platform or "onnxruntime_onnx",
            [TensorMetadata(t.name, t.datatype, batch + list(t.dims)) for t in spec.inputs],
            [TensorMetadata(t.name, t.datatype, batch + list(t.dims)) for t in spec.outputs])

    def model_config(self, name: str, version: str):
        """The version's ModelConfig message (what config.pbtxt says, as served)."""
        return self.repository.get(name, version).spec.proto

    def model_card(self, name: str, version: str) -> dict:
        """The version's model card (accuracy, data, date: what its pipeline wrote)."""
        model = self.repository.get(name, version)
        card = self.repository.folders.model_card(model.name, model.version)
        if card is None:
            raise ModelNotFoundError(f"model '{model.name}' version {model.version} has no "
                                     "model card (a model_card.json beside its model.onnx)")
        return card

    def drift(self, name: str, version: str):
        """The version's drift window against its reference (this process's window: with
        workers, each worker measures the requests it serves, a sample of the same traffic)."""
        model = self.repository.get(name, version)
        if model.drift is None:
            raise ModelNotFoundError(f"model '{model.name}' version {model.version} has no drift "
                                     "reference (a reference.json beside its model.onnx; "
                                     "python -m server.reference writes one)")
        return model.drift.snapshot()

    def report_here(self, kind: str, name: str, version: str = "") -> dict:
        """This process's raw counts for a report (dataplane.reports: rollout, latency)."""
        return reports.build(kind, self.repository, name, version)

    async def report(self, kind: str, name: str, version: str = "") -> dict:
        """Our extensions' reports (the canary split and shadow agreement, latency
        quantiles from buckets); with workers, the counts of every worker summed."""
        mine = self.report_here(kind, name, version)
        if self.cluster is not None:
            mine = await self.cluster.report(kind, name, version, mine)
        return reports.finish(kind, mine)

    def statistics_here(self, name: str, version: str):
        return statistics_response(self.repository, name, version)

    async def statistics(self, name: str, version: str):
        """Triton's ModelStatisticsResponse; with workers, summed over every worker."""
        mine = self.statistics_here(name, version)
        if self.cluster is None:
            return mine
        return await self.cluster.statistics(name, version, mine)

    # ---- repository --------------------------------------------------------------------
    def index(self, ready_only: bool):
        return self.repository.index(ready_only=ready_only)

    async def load(self, name: str, sent_key: str | None, transport: str,
                   parameters: dict | None = None) -> None:
        """``parameters``: the call's, as plain values (dataplane.load_options: a
        ``config`` ModelConfig as JSON replaces config.pbtxt for this load, as Triton's
        does). The key is checked before them: a caller without it learns nothing."""
        self.control.check(sent_key, "load", transport)
        config = load_config("load", parameters or {})
        await (self.cluster or self.repository).load(name, config)

    async def unload(self, name: str, sent_key: str | None, transport: str,
                     parameters: dict | None = None) -> None:
        self.control.check(sent_key, "unload", transport)
        load_config("unload", parameters or {})  # refuses all but the harmless ones
        await (self.cluster or self.repository).unload(name)

    # ---- inference ---------------------------------------------------------------------
    async def infer(self, wire: WireRequest, protocol: str):
        """(model, outputs), or the ServingError to answer (returned, not raised, so the
        face fails the call from a frame that holds no request: see the gRPC servicer).

        Names, datatypes, shapes and batch size are checked from the request's header
        before any tensor data is decoded, on every face; big decodes run off the loop.
        """
        life = self.lifecycle
        life.in_flight += 1
        started = time.monotonic()
        model = None
        try:
            life.check()
            model = self.repository.get(wire.model_name, wire.model_version)
            try:
                headers = wire.headers()
                model.check_inputs({h.name: (h.datatype, h.shape) for h in headers})
                if wire.decode_is_heavy(headers):
                    inputs = await asyncio.get_running_loop().run_in_executor(
                        None, self.decode, wire, headers)
                else:
                    inputs = self.decode(wire, headers)
            except ServingError as exc:
                model.stats.record_failure(0.0, exc.reason)
                raise
            outputs, entry = look_up(self.cache, model, inputs, wire.outputs(), started)
            if outputs is None:
                # checked: the header passed check_inputs and the arrays were decoded to it.
                outputs = await model.infer(inputs, wire.outputs(), wire.deadline(started),
                                            checked=True)
                if entry is not None:
                    entry.store(model, outputs)
            outputs = self.place_outputs(wire, model, outputs)
        except ServingError as exc:
            self._record(wire, model, protocol, type(exc).__name__, started, exc)
            return exc
        except Exception:
            log.exception("%s infer %s failed unexpectedly", protocol, wire.model_name[:100])
            error = InternalError("internal error; see the server log")
            if model is not None:
                model.stats.record_failure(time.monotonic() - started, error.reason)
            self._record(wire, model, protocol, "InternalError", started, error)
            return error
        finally:
            life.in_flight -= 1
        self._record(wire, model, protocol, "OK", started, None)
        return model, outputs

    def decode(self, wire: WireRequest, headers) -> dict[str, np.ndarray]:
        """The request's tensors: from the message, and from shared memory where named."""
        inputs = wire.decode(headers)
        for h in headers:
            if h.shm is not None:
                inputs[h.name] = read_input(self.shm, h.name, h.datatype, h.shape, h.count, h.shm)
        return inputs

    def place_outputs(self, wire: WireRequest, model: ModelVersion, outputs: dict) -> dict:
        """Outputs the request wants in shared memory written there (ShmOutput markers)."""
        regions = wire.output_regions()
        return place_outputs(self.shm, outputs, regions, model.output_datatypes) if regions \
            else outputs

    # ---- system shared memory ----------------------------------------------------------
    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Register a region; with workers, on every worker (or on none)."""
        if self.cluster is None:
            self.shm.register(name, key, offset, byte_size)
        else:
            await self.cluster.shm_register(name, key, offset, byte_size)

    async def shm_unregister(self, name: str) -> None:
        """One region, or all when ``name`` is empty; with workers, on every worker."""
        if self.cluster is None:
            self.shm.unregister(name)
        else:
            await self.cluster.shm_unregister(name)

    def shm_status(self, name: str):
        """This process's regions: with workers, every worker holds the same ones."""
        return self.shm.status(name)

    def refused(self, error: ServingError, protocol: str) -> None:
        """A request refused before it could be read (request-byte budget, undecodable)."""
        if self._observe is not None:
            self._observe("", None, error, 0.0, protocol=protocol)
        if self._access:
            _access_line(protocol, "", "", "", type(error).__name__, 0.0)

    def _record(self, wire: WireRequest, model: ModelVersion | None, protocol: str,
                outcome: str, started: float, exc: ServingError | None) -> None:
        seconds = time.monotonic() - started
        if self._observe is not None:
            self._observe(wire.model_name, model, exc, seconds, protocol=protocol)
        if self._access:
            _access_line(protocol, wire.model_name, wire.model_version, wire.request_id(),
                         outcome, seconds)


def _access_line(protocol: str, model: str, version: str, request_id: str, outcome: str,
                 seconds: float) -> None:
    """The one access-log format of every face (names cut: a client chooses them)."""
    access_log.info("infer protocol=%s model=%s version=%s id=%s status=%s ms=%.3f",
                    protocol, model[:100], version[:20], request_id[:64], outcome,
                    seconds * 1e3)
