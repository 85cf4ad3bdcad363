"""Online drift: each model version's live signals over a sliding window, off the hot path.

The serving path only hands each finished batch's tensors to ``DriftMonitor.offer`` (an
append to a list: no arithmetic). One ``DriftService`` thread drains every monitor a few
times a second, computes the signals for everything pending at once (tensors of one shape
concatenated, one vectorized reduction each) and adds the bin counts to the window. When
the thread falls behind, batches beyond ``MAX_PENDING_ROWS`` are skipped and counted (the
window is a sample under load; serving is never slowed).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from server.core.drift import ReferenceError, Signal, psi, read_reference

log = logging.getLogger("server.core.drift")

MAX_PENDING_ROWS = 8192  # rows waiting for the drift thread, at most (bounds memory)
DRAIN_INTERVAL_S = 0.25


@dataclass(frozen=True)
class DriftOptions:
    window_rows: int = 10_000  # the window holds about the last this many rows ...
    window_s: float = 600.0  # ... and none older than this


@dataclass(frozen=True)
class SignalState:
    name: str
    psi: float
    edges: tuple[float, ...]
    live: tuple[float, ...]  # proportions in the window (empty window: zeros)
    reference: tuple[float, ...]


@dataclass(frozen=True)
class DriftSnapshot:
    rows: int  # rows in the window
    measured_rows: int  # rows measured since the version loaded
    skipped_rows: int  # rows never measured because the drift thread was behind
    signals: tuple[SignalState, ...]


class DriftWindow:
    """Bin counts of the last rows, in chunks (one per drain) that age out whole."""

    def __init__(self, signals: list[Signal], options: DriftOptions):
        self.signals = signals
        self.options = options
        self._chunks: deque[tuple[float, int, list[np.ndarray]]] = deque()
        self.totals = [np.zeros(len(s.proportions), np.int64) for s in signals]
        self.rows = 0

    def add(self, counts: list[np.ndarray], rows: int, now: float) -> None:
        self._chunks.append((now, rows, counts))
        for total, c in zip(self.totals, counts):
            total += c
        self.rows += rows
        self.expire(now)

    def expire(self, now: float) -> None:
        oldest = now - self.options.window_s
        while self._chunks and (self._chunks[0][0] < oldest or
                                self.rows - self._chunks[0][1] >= self.options.window_rows):
            _, rows, counts = self._chunks.popleft()
            for total, c in zip(self.totals, counts):
                total -= c
            self.rows -= rows


class DriftMonitor:
    """One model version's drift: what the serving path offers, and the window."""

    def __init__(self, label: str, signals: list[Signal], options: DriftOptions):
        self.label = label
        self.window = DriftWindow(signals, options)
        self._pending: list[tuple[dict, dict, int]] = []
        self._pending_rows = 0
        self.skipped_rows = 0
        self.measured_rows = 0
        self._lock = threading.Lock()  # guards the window between the drain and scrapes

    def offer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
              rows: int) -> None:
        """From the serving path, any thread: keep references, compute nothing."""
        if self._pending_rows >= MAX_PENDING_ROWS:
            self.skipped_rows += rows
            return
        self._pending.append((feeds, outputs, rows))
        self._pending_rows += rows

    def drain(self, now: float) -> None:
        pending, self._pending = self._pending, []
        self._pending_rows = 0
        counts = [self._counts(signal, pending) for signal in self.window.signals] if pending else None
        rows = sum(r for _, _, r in pending)
        del pending  # the batches' tensors go now, not at the next drain
        with self._lock:
            if counts is None:
                self.window.expire(now)
            else:
                self.window.add(counts, rows, now)
                self.measured_rows += rows

    @staticmethod
    def _counts(signal: Signal, pending: list[tuple[dict, dict, int]]) -> np.ndarray:
        where = 0 if signal.of == "input" else 1
        by_shape: dict[tuple, list[np.ndarray]] = {}
        for batch in pending:
            tensor = batch[where].get(signal.tensor)
            if tensor is not None:
                by_shape.setdefault((tensor.shape[1:], tensor.dtype), []).append(tensor)
        total = np.zeros(len(signal.proportions), np.int64)
        for tensors in by_shape.values():
            stacked = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
            values = signal.values({signal.tensor: stacked}, {signal.tensor: stacked})
            total += signal.counts(values)
        return total

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            rows, totals = self.window.rows, [t.copy() for t in self.window.totals]
            measured = self.measured_rows
        states = []
        for signal, total in zip(self.window.signals, totals):
            live = total / rows if rows else np.zeros(len(total))
            states.append(SignalState(signal.name, psi(signal.proportions, live) if rows else 0.0,
                                      tuple(float(e) for e in signal.edges),
                                      tuple(float(p) for p in live),
                                      tuple(float(p) for p in signal.proportions)))
        return DriftSnapshot(rows, measured, self.skipped_rows, tuple(states))


class DriftService:
    """The one thread that drains every monitor; monitors of unloaded versions drop out."""

    def __init__(self, options: DriftOptions, interval_s: float = DRAIN_INTERVAL_S):
        self.options = options
        self._interval_s = interval_s
        self._monitors: weakref.WeakSet[DriftMonitor] = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, label: str, version_dir: Path, feeds: Iterable[str],
              outputs: Iterable[str]) -> DriftMonitor | None:
        """A monitor for a version with a usable reference.json, else None. A bad
        reference is a warning (the version serves as ever, without drift series)."""
        try:
            signals = read_reference(version_dir)
        except ReferenceError as exc:
            log.warning("%s: drift reference not used: %s", label, exc)
            return None
        if not signals:
            return None
        known = {"input": set(feeds), "output": set(outputs)}
        unknown = [s.name for s in signals if s.tensor not in known[s.of]]
        if unknown:
            log.warning("%s: drift reference not used: signals %s name tensors the model "
                        "does not have", label, unknown)
            return None
        return self.monitor(label, signals)

    def monitor(self, label: str, signals: list[Signal]) -> DriftMonitor:
        monitor = DriftMonitor(label, signals, self.options)
        self._monitors.add(monitor)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
            self._thread.start()
        return monitor

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            now = time.monotonic()
            for monitor in list(self._monitors):
                try:
                    monitor.drain(now)
                except Exception:  # a bad batch must not end drift for every model
                    log.exception("drift of %s: a batch could not be measured", monitor.label)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
