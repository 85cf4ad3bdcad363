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
from server.core.graph_checks import check_against_onnx, check_outputs, warmup_feeds
from server.core.model_config import ModelSpec, TensorSpec
from server.core.preprocess import TEXT_PREPROCESSOR, TextPreprocessor, build_text_preprocessor
from server.core.runtime import OnnxSession, RuntimeOptions, error_summary
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
            check_against_onnx(self.label, spec, self.session, self.preprocessor)
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
    async def start(self) -> None:
        """Warm every shape it will run, then start batching (before it reports ready)."""
        await asyncio.get_running_loop().run_in_executor(None, self.warmup)
        await self.batcher.start()

    def warmup(self) -> None:
        """Run every warm-up batch and check that what comes out fits the config.

        A graph whose outputs disagree with config.pbtxt would otherwise answer every
        request with wrongly shaped tensors; here it fails the load instead.
        """
        for rows, feeds in warmup_feeds(self.spec, self.session, self.preprocessor):
            try:
                outputs = self._run(feeds)
            except Exception as exc:  # ORT's own exception types: a load failure
                raise ModelLoadError(f"{self.label}: the warm-up run with a batch of "
                                     f"{rows} rows failed in ONNX Runtime: "
                                     f"{error_summary(exc)}") from None
            check_outputs(self.label, self.spec, rows, outputs)

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
