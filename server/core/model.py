"""One loaded model version: validates requests, feeds its batcher, keeps its stats."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.core.batcher import BatchTimes, Completed, DynamicBatcher
from server.core.datatypes import NUMPY_TO_V2
from server.core.errors import InvalidInputError, ModelLoadError, ServingError
from server.core.model_config import ModelSpec, TensorSpec
from server.core.preprocess import TEXT_PREPROCESSOR, TextPreprocessor, build_text_preprocessor
from server.core.runtime import OnnxSession, OrtTensor, RuntimeOptions, error_summary
from server.core.stats import ModelStats

log = logging.getLogger("server.core.model")


@dataclass(frozen=True)
class Part:
    """A slice of a request that joins a batch on its own: feeds, rows, merge key."""

    feeds: dict[str, np.ndarray]
    rows: int
    key: tuple


_GENERATIONS = itertools.count(1)  # each ModelVersion object: a load of a version


class ModelVersion:
    """A model version that serves: ONNX session, optional text pre-processing, batcher."""

    def __init__(self, spec: ModelSpec, version: int, version_dir: Path,
                 options: RuntimeOptions):
        self.spec = spec
        self.name = spec.name
        self.version = version
        self.label = f"{spec.name}:{version}"
        self.stats = ModelStats()
        started = time.monotonic()
        self.session = OnnxSession(version_dir / spec.model_filename, options, self.label)
        self._ort_inputs = {t.name: t.datatype for t in self.session.inputs}
        self.preprocessor: TextPreprocessor | None = None
        self.drift = None  # a DriftMonitor when the version has a reference (repository)
        self.rollout = None  # server.core.rollout: this model's canary/shadow routing
        self.shadow = None  # a ShadowLink when a shadow version watches this one
        try:
            if TEXT_PREPROCESSOR in spec.parameters:
                if len(spec.inputs) != 1 or spec.inputs[0].datatype != "BYTES":
                    raise ModelLoadError(f"{self.label}: a text pre-processor needs exactly "
                                         "one BYTES input")
                self.preprocessor = build_text_preprocessor(
                    spec.parameters, version_dir, spec.inputs[0].name, self._ort_inputs,
                    self.label)
            self._check_against_onnx()
        except BaseException:
            self.session.close()  # a refused model frees its session now
            raise
        self._output_names = tuple(t.name for t in spec.outputs)
        self.output_datatypes = {t.name: t.datatype for t in spec.outputs}
        self.input_datatypes = {t.name: t.datatype for t in spec.inputs}
        self.generation = next(_GENERATIONS)  # response-cache keys of another load never match
        # (name, datatype, full shape with -1 for the batch) of each input: the hot
        # path's checks compare against these instead of rebuilding them per request.
        self._expected = tuple((t.name, t.datatype,
                                ((-1,) if spec.max_batch_size else ()) + tuple(t.dims))
                               for t in spec.inputs)
        self.batcher = DynamicBatcher(
            self.label, self._run, max_batch_size=spec.max_batch_size,
            max_queue_size=spec.batching.max_queue_size,
            max_queue_delay_us=spec.batching.max_queue_delay_us,
            preferred_batch_sizes=spec.batching.preferred_batch_sizes,
            instances=spec.instance_count, on_batch=self._on_batch)
        self._queue_timeout_s = spec.batching.default_timeout_us / 1e6
        self.load_seconds = time.monotonic() - started

    # ---- loading ----------------------------------------------------------------------
    def _check_against_onnx(self) -> None:
        """The config must describe the ONNX graph it ships with: names, types, dims."""
        ort_inputs = {t.name: t for t in self.session.inputs}
        ort_outputs = {t.name: t for t in self.session.outputs}
        fed = {self.preprocessor.output_name} if self.preprocessor else {
            t.name for t in self.spec.inputs}
        for tensor in () if self.preprocessor else self.spec.inputs:
            self._check_tensor(tensor, ort_inputs, "input")
        for tensor in self.spec.outputs:
            self._check_tensor(tensor, ort_outputs, "output")
        if self.preprocessor is not None:
            self._check_token_input(ort_inputs[self.preprocessor.output_name])
        missing = set(self._ort_inputs) - fed
        if missing:
            raise ModelLoadError(f"{self.label}: the ONNX graph also needs inputs "
                                 f"{sorted(missing)} that config.pbtxt does not provide")

    def _check_tensor(self, tensor: TensorSpec, onnx: dict[str, OrtTensor], kind: str) -> None:
        if tensor.name not in onnx:
            raise ModelLoadError(f"{self.label}: config {kind} {tensor.name!r} is not in the "
                                 f"ONNX graph, whose {kind}s are {sorted(onnx)}")
        graph = onnx[tensor.name]
        if graph.datatype != tensor.datatype:
            raise ModelLoadError(f"{self.label}: config {kind} {tensor.name!r} is "
                                 f"{tensor.datatype} but the ONNX graph has {graph.datatype}")
        problem = _graph_mismatch(self._served_shape(tensor.dims), graph.shape)
        if problem:
            raise ModelLoadError(
                f"{self.label}: config {kind} {tensor.name!r} has dims {list(tensor.dims)}, "
                f"served as {self._served_shape(tensor.dims)} (-1 = any size), but the ONNX "
                f"graph's {kind} is {_graph_shape(graph.shape)}: {problem}")
        self._check_batch_dim(graph, kind)

    def _check_token_input(self, graph: OrtTensor) -> None:
        """Text models: the ONNX graph must take what the tokenizer feeds, [rows, bucket]."""
        for (bucket,) in self.preprocessor.warmup_shapes():
            problem = _graph_mismatch([-1, bucket], graph.shape)
            if problem:
                raise ModelLoadError(
                    f"{self.label}: the tokenizer feeds ONNX input {graph.name!r} token ids "
                    f"of shape [rows, {bucket}], but the graph's input is "
                    f"{_graph_shape(graph.shape)}: {problem}")
        self._check_batch_dim(graph, "input")

    def _check_batch_dim(self, graph: OrtTensor, kind: str) -> None:
        """A batching model needs a free first dimension: batches have 1..max rows."""
        if not self.spec.max_batch_size or not graph.shape:
            return
        first = graph.shape[0]
        if _static(first) and not first == self.spec.max_batch_size == 1:
            raise ModelLoadError(
                f"{self.label}: ONNX {kind} {graph.name!r} fixes its first (batch) "
                f"dimension at {first}, but max_batch_size {self.spec.max_batch_size} "
                "sends batches of 1..max_batch_size rows; export the model with a dynamic "
                "batch dimension, or set max_batch_size 0 and list the full shape in dims")

    def _served_shape(self, dims: tuple[int, ...]) -> list[int]:
        return ([-1] if self.spec.max_batch_size else []) + list(dims)

    async def start(self) -> None:
        """Warm every shape it will run, then start batching (before it reports ready)."""
        await asyncio.get_running_loop().run_in_executor(None, self.warmup)
        await self.batcher.start()

    def warmup(self) -> None:
        """Run every warm-up batch and check that what comes out fits the config.

        A graph whose outputs disagree with config.pbtxt would otherwise answer every
        request with wrongly shaped tensors; here it fails the load instead.
        """
        for rows, feeds in self._warmup_feeds():
            try:
                outputs = self._run(feeds)
            except Exception as exc:  # ORT's own exception types: a load failure
                raise ModelLoadError(f"{self.label}: the warm-up run with a batch of "
                                     f"{rows} rows failed in ONNX Runtime: "
                                     f"{error_summary(exc)}") from None
            self._check_outputs(rows, outputs)

    def _check_outputs(self, rows: int, outputs: dict[str, np.ndarray]) -> None:
        for tensor in self.spec.outputs:
            value = outputs[tensor.name]
            expected = ([rows] if self.spec.max_batch_size else []) + list(tensor.dims)
            if value.dtype != tensor.numpy_dtype or _shape_mismatch(expected, value.shape):
                got = NUMPY_TO_V2.get(value.dtype, str(value.dtype))
                raise ModelLoadError(
                    f"{self.label}: the warm-up run with a batch of {rows} rows returned "
                    f"output {tensor.name!r} as {got} {list(value.shape)}, but config.pbtxt "
                    f"says {tensor.datatype} {expected} (-1 = any size)")

    def _warmup_feeds(self):
        """(rows, feeds) of every shape the model will run; rows 0 = no batch dimension."""
        sizes = ([0] if self.spec.max_batch_size == 0
                 else range(self.spec.max_batch_size, 0, -1))
        if self.preprocessor is not None:
            # Every bucket at powers of two and the maximum: enough for ORT to size its
            # arenas without hundreds of long BiLSTM runs at start-up.
            sizes = [s for s in sizes if s & (s - 1) == 0 or s == self.spec.max_batch_size]
            for shape in self.preprocessor.warmup_shapes():
                for size in sizes:
                    yield max(size, 1), {self.preprocessor.output_name:
                                         np.zeros((max(size, 1), *shape),
                                                  self.preprocessor.dtype)}
            return
        graph = {t.name: t.shape for t in self.session.inputs}
        for size in sizes:
            yield size, {t.name: _zeros(t, size, graph[t.name]) for t in self.spec.inputs}

    async def close(self, drain_timeout_s: float) -> None:
        """Drain, then free the session and threads at once (not at the next cyclic GC)."""
        try:
            await self.batcher.close(drain_timeout_s)
        finally:
            self.session.close()

    # ---- serving ----------------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(feeds)
        if self.drift is not None:  # keeps references only; a drift thread measures them
            self.drift.offer(feeds, outputs, len(next(iter(feeds.values()))))
        if self.shadow is not None:  # the same: a shadow thread runs the candidate
            self.shadow.offer(feeds, outputs, len(next(iter(feeds.values()))))
        return outputs

    @property
    def feed_names(self) -> tuple[str, ...]:
        """What the ONNX model is fed (a text model: its token ids, not the text)."""
        return tuple(self._ort_inputs)

    def feed_signature(self) -> tuple:
        """Equal for versions that take the same model inputs from the same request."""
        text = self.preprocessor
        return (tuple(sorted(self._ort_inputs.items())), text and (
            text.output_name, tuple(text.tokenizer.vocabulary), text.tokenizer.config.to_dict()))

    def _on_batch(self, times: BatchTimes) -> None:
        self.stats.record_execution(times.rows, times.compute_input_s,
                                    times.compute_infer_s, times.compute_output_s)

    async def infer(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = (),
                    deadline: float = math.inf, checked: bool = False) -> dict[str, np.ndarray]:
        """Validate, queue, await. Returns the requested outputs (all when empty).

        ``checked``: the caller has passed these inputs' names, datatypes and shapes
        through :meth:`check_inputs` (transports do, from the request header) and
        decoded them to exactly those: they are not checked a second time.
        """
        started = time.monotonic()
        self.stats.in_flight += 1
        try:
            wanted = self._requested(outputs)
            if self.preprocessor is not None and self.preprocessor.is_heavy(inputs):
                # Long texts tokenize in a worker thread: the event loop keeps serving.
                parts = await asyncio.get_running_loop().run_in_executor(
                    None, self.prepare, inputs, checked)
            else:
                parts = self.prepare(inputs, checked)
            # Tokenizing time, for the text models that do any.
            preprocess_s = None if self.preprocessor is None else time.monotonic() - started
            futures: list[asyncio.Future] = []
            done: list[Completed] = []
            future = None
            try:
                for part in parts:
                    futures.append(self.batcher.submit(part.feeds, part.rows, part.key,
                                                       deadline, self._queue_timeout_s))
                for future in futures:
                    done.append(await future)
            except BaseException:
                _abandon(futures)
                # The error's traceback holds this frame; a future it reached from here
                # would hold the error back: a cycle keeping this version and the
                # request alive until the cyclic GC.
                futures = future = None
                raise
        except ServingError as exc:
            self.stats.record_failure(time.monotonic() - started, exc.reason)
            raise
        except asyncio.CancelledError:
            self.stats.record_failure(time.monotonic() - started, "cancelled")
            raise
        finally:
            self.stats.in_flight -= 1
        first = done[0]
        self.stats.record_success(time.monotonic() - started, first.queue_s,
                                  first.compute_input_s, first.compute_infer_s,
                                  first.compute_output_s, preprocess_s)
        if len(done) == 1:
            return {name: first.outputs[name] for name in wanted}
        return {name: np.concatenate([d.outputs[name] for d in done]) for name in wanted}

    @property
    def queue_timeout_s(self) -> float:
        return self._queue_timeout_s

    def requested_outputs(self, outputs: tuple[str, ...]) -> tuple[str, ...]:
        """The outputs to answer with (all when ``outputs`` is empty); unknown ones refused."""
        return self._requested(outputs)

    def _requested(self, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if not outputs:
            return self._output_names
        for name in outputs:
            if name not in self._output_names:
                raise InvalidInputError(f"model {self.name!r} has no output {name!r}; its "
                                        f"outputs are {list(self._output_names)}")
        return outputs

    def check_inputs(self, inputs: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        """Names, datatypes, shapes and batch size of a request, from its header alone.

        ``inputs`` maps each input name to (V2 datatype, shape). Transports call this
        before decoding any data, so a wrong shape or an oversized batch costs nothing.
        """
        if len(inputs) == len(self._expected) and self._header_rows(inputs):
            return  # the common case: everything fits, no message to build
        self._check_names(inputs)
        rows = 0
        for tensor in self.spec.inputs:
            datatype, shape = inputs[tensor.name]
            rows = self._check_input(tensor, datatype, shape, rows)

    def _header_rows(self, inputs: dict[str, tuple[str, tuple[int, ...]]]) -> int:
        """The batch rows when every expected input fits its spec, else 0 (the slow
        path then finds the problem and words it). Only compares precomputed tuples."""
        rows = 0
        max_batch = self.spec.max_batch_size
        for name, datatype, expected in self._expected:
            got = inputs.get(name)
            if got is None or got[0] != datatype:
                return 0
            shape = got[1]
            if len(shape) != len(expected):
                return 0
            for have, want in zip(shape, expected):
                if want != -1 and have != want:
                    return 0
            if max_batch:
                if not 1 <= shape[0] <= max_batch or (rows and shape[0] != rows):
                    return 0
                rows = shape[0]
        return rows or 1

    def prepare(self, inputs: dict[str, np.ndarray], checked: bool = False) -> list[Part]:
        """Check inputs against the config (unless ``checked``: see :meth:`infer`) and
        turn them into batch parts."""
        if checked:
            rows = 0
            if self.spec.max_batch_size and self._expected:
                rows = inputs[self._expected[0][0]].shape[0]
        else:
            rows = self._checked_rows(inputs)
        if self.preprocessor is not None:
            values = inputs[self.preprocessor.input_name]
            name = self.preprocessor.output_name
            return [Part({name: ids}, 1, (ids.shape[1],)) for ids in self.preprocessor.rows(values)]
        feeds = {name: inputs[name] for name, _, _ in self._expected}
        key = tuple(value.shape[1:] for value in feeds.values())
        return [Part(feeds, max(rows, 1), key)]

    def _checked_rows(self, inputs: dict[str, np.ndarray]) -> int:
        self._check_names(inputs)
        rows = 0
        for tensor in self.spec.inputs:
            value = inputs[tensor.name]
            datatype = NUMPY_TO_V2.get(value.dtype) or str(value.dtype)
            rows = self._check_input(tensor, datatype, value.shape, rows)
        return rows

    def _check_names(self, inputs) -> None:
        expected = [t.name for t in self.spec.inputs]
        missing = [n for n in expected if n not in inputs]
        extra = [n for n in inputs if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise InvalidInputError(f"model {self.name!r} inputs: {', '.join(parts)}; it "
                                    f"takes exactly {expected}")

    def _check_input(self, tensor: TensorSpec, datatype: str, shape: tuple, rows: int) -> int:
        where = f"model {self.name!r} input {tensor.name!r}"
        if datatype != tensor.datatype:
            raise InvalidInputError(f"{where}: datatype {datatype}, expected {tensor.datatype}")
        max_batch = self.spec.max_batch_size
        dims = tensor.dims
        expected = ([-1] if max_batch else []) + list(dims)
        if len(shape) != len(expected) or any(
                e != -1 and s != e for s, e in zip(shape, expected)):
            raise InvalidInputError(f"{where}: shape {list(shape)}, expected {expected} "
                                    "(-1 = any size)")
        if max_batch:
            if not 1 <= shape[0] <= max_batch:
                raise InvalidInputError(f"{where}: batch size {shape[0]} is outside "
                                        f"1..{max_batch} (max_batch_size)")
            if rows and shape[0] != rows:
                raise InvalidInputError(f"{where}: batch size {shape[0]} differs from the "
                                        f"other inputs' {rows}")
            return shape[0]
        return 1


def _abandon(futures: list[asyncio.Future]) -> None:
    """Cancel the parts still queued so they never run; mark failed ones as seen."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _zeros(tensor: TensorSpec, batch: int, graph_shape: tuple = ()) -> np.ndarray:
    """Warm-up input; a -1 dim takes the graph's static size there, else 1."""
    below_batch = graph_shape[1:] if batch else graph_shape
    if len(below_batch) != len(tensor.dims):
        below_batch = (None,) * len(tensor.dims)
    dims = tuple(d if d != -1 else (g if _static(g) and g > 0 else 1)
                 for d, g in zip(tensor.dims, below_batch))
    shape = ((batch,) if batch else ()) + dims
    if tensor.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, tensor.numpy_dtype)


def _static(dim) -> bool:
    """A fixed graph dimension; ORT reports free ones as names, None or -1."""
    return isinstance(dim, int) and dim >= 0


def _graph_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if _static(d) else repr(d) for d in shape) + "]"


def _graph_mismatch(expected: list[int], graph_shape: tuple) -> str:
    """Why a graph tensor's shape cannot take ``expected`` (-1 = any); "" if it can.

    ORT reports a tensor of unknown rank as [], which leaves the check to the warm-up
    run: it sees the real outputs.
    """
    return _shape_mismatch(expected, graph_shape) if graph_shape else ""


def _shape_mismatch(expected: list[int], shape: tuple) -> str:
    """Why ``shape`` does not fit ``expected`` (-1, or a free dim in ``shape``, = any)."""
    if len(shape) != len(expected):
        return f"{len(expected)} dimensions against {len(shape)}"
    for index, (want, have) in enumerate(zip(expected, shape)):
        if want != -1 and _static(have) and want != have:
            return f"dimension {index} is {want} against {have}"
    return ""
