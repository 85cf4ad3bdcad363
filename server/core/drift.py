"""Does a model still see the world it was trained on? Signals, references and PSI.

A **reference** (``<model>/<version>/reference.json``, written by ``make train-export`` or
``python -m server.reference``) lists the signals to watch; for each, fixed bin edges and
the share of the reference rows (the validation split) that fell in each bin. The same
signal functions compute the reference and the live values, so both are measured alike.

Signals are per-row reductions of one tensor of a batch, vectorized over the batch:

==============  ==========================================  ==============================
stat            of a (rows, ...) tensor                     for
==============  ==========================================  ==============================
``max``         the largest value of the row                 top-class confidence
``argmax``      the index of the largest value               predicted class
``value``       the row's first value                        a one-probability score
``mean``        the mean of the row                          e.g. pixel intensity
``tokens``      ids that are not padding (id 0)              text length in tokens
``oov_share``   share of the tokens that are out of          words outside the vocabulary
                vocabulary (id 1)
==============  ==========================================  ==============================

``of`` says where the tensor is: ``input`` (what the ONNX model is fed, after any text
pre-processing: a text model's token ids) or ``output``.

The population stability index of live proportions ``a`` against reference ``e`` is
``sum((a - e) * ln(a / e))`` over the bins, each share floored at PSI_FLOOR so an empty
bin stays finite: 0 is the same population; above 0.2 is commonly read as shifted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from server.core.tokenizer import OOV_ID, PAD_ID

SCHEMA = "onnxserve.reference/1"
REFERENCE_FILE = "reference.json"
PSI_FLOOR = 1e-4
DEFAULT_BINS = 10
MAX_REFERENCE_BYTES = 4 << 20


class ReferenceError(ValueError):
    """A reference.json that cannot be used; the message names the file and the field."""


def _rows(array: np.ndarray) -> np.ndarray:
    return array.reshape(len(array), -1)


def _tokens(array: np.ndarray) -> np.ndarray:
    return (_rows(array) != PAD_ID).sum(axis=1).astype(np.float64)


def _oov_share(array: np.ndarray) -> np.ndarray:
    ids = _rows(array)
    return (ids == OOV_ID).sum(axis=1) / np.maximum((ids != PAD_ID).sum(axis=1), 1)


STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max": lambda a: _rows(a).max(axis=1),
    "argmax": lambda a: _rows(a).argmax(axis=1).astype(np.float64),
    "value": lambda a: _rows(a)[:, 0],
    "mean": lambda a: _rows(a).mean(axis=1, dtype=np.float64),
    "tokens": _tokens,
    "oov_share": _oov_share,
}
DISCRETE = {"argmax"}  # one bin per class, not quantiles


@dataclass(frozen=True)
class Signal:
    """One watched signal: how to compute it, and what the reference saw."""

    name: str
    of: str  # "input" | "output"
    tensor: str
    stat: str
    edges: np.ndarray  # bins: (-inf, e1], (e1, e2], ..., (e_last, inf) by inner edges
    proportions: np.ndarray

    def values(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
        return signal_values(self, feeds, outputs)

    def counts(self, values: np.ndarray) -> np.ndarray:
        bins = np.searchsorted(self.edges, values, side="left")
        return np.bincount(bins, minlength=len(self.proportions))[:len(self.proportions)]

    def to_dict(self) -> dict:
        return {"name": self.name, "of": self.of, "tensor": self.tensor, "stat": self.stat,
                "edges": [float(e) for e in self.edges],
                "proportions": [round(float(p), 6) for p in self.proportions]}


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of proportions ``actual`` against ``expected``."""
    e = np.maximum(np.asarray(expected, np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


# ---- choosing and measuring signals -----------------------------------------------------
@dataclass(frozen=True)
class SignalSpec:
    name: str
    of: str
    tensor: str
    stat: str


def signal_values(signal, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray:
    """One value per row of a batch for ``signal`` (a Signal or a SignalSpec)."""
    return STATS[signal.stat]((feeds if signal.of == "input" else outputs)[signal.tensor])


def default_signals(outputs: dict[str, int], inputs: dict[str, str],
                    token_input: str | None) -> list[SignalSpec]:
    """What to watch on a model, from its tensors.

    ``outputs``: output name -> values per row (the first output is the one watched);
    ``inputs``: ONNX input name -> datatype; ``token_input``: the ids a text
    pre-processor feeds, if any. Classifiers get confidence and predicted class, a single
    score its value; numeric inputs their mean, token ids length and out-of-vocabulary share.
    """
    signals = []
    if outputs:
        name, width = next(iter(outputs.items()))
        if width > 1:
            signals += [SignalSpec("confidence", "output", name, "max"),
                        SignalSpec("predicted_class", "output", name, "argmax")]
        else:
            signals.append(SignalSpec("score", "output", name, "value"))
    for name, datatype in inputs.items():
        if name == token_input:
            signals += [SignalSpec("tokens", "input", name, "tokens"),
                        SignalSpec("oov_share", "input", name, "oov_share")]
        elif datatype.startswith(("FP", "INT", "UINT")):
            signals.append(SignalSpec(f"{name}_mean", "input", name, "mean"))
    return signals


def reference_signal(spec: SignalSpec, values: np.ndarray, bins: int = DEFAULT_BINS) -> Signal:
    """Bin edges from the reference values (deciles; one bin per class for argmax)."""
    values = np.asarray(values, np.float64)
    if spec.stat in DISCRETE:
        classes = int(values.max()) + 1 if len(values) else 1
        edges = np.arange(classes - 1, dtype=np.float64) + 0.5
    else:
        inner = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]) if len(values) else []
        edges = np.unique(np.asarray(inner, np.float64))
    provisional = Signal(spec.name, spec.of, spec.tensor, spec.stat, edges,
                         np.zeros(len(edges) + 1))
    counts = provisional.counts(values)
    proportions = counts / max(counts.sum(), 1)
    return Signal(spec.name, spec.of, spec.tensor, spec.stat, edges, proportions)


def build_reference(model: str, version: int, specs: list[SignalSpec],
                    batches: Iterable[tuple[dict, dict]], source: str) -> dict:
    """The reference document from (feeds, outputs) batches of the reference rows."""
    values: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    rows = 0
    for feeds, outputs in batches:
        for spec in specs:
            values[spec.name].append(signal_values(spec, feeds, outputs))
        rows += len(next(iter(outputs.values())))
    signals = [reference_signal(s, np.concatenate(values[s.name]) if values[s.name] else [])
               for s in specs]
    return {"schema": SCHEMA, "model": model, "version": version, "rows": rows,
            "source": source, "signals": [s.to_dict() for s in signals]}


# ---- reading a reference ------------------------------------------------------------------
def read_reference(version_dir: Path) -> list[Signal] | None:
    """The signals of ``version_dir/reference.json``; None when there is none."""
    path = version_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_REFERENCE_BYTES:
        raise ReferenceError(f"{path}: over {MAX_REFERENCE_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes())
    except ValueError as exc:
        raise ReferenceError(f"{path}: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ReferenceError(f"{path}: schema must be {SCHEMA!r}, got "
                             f"{document.get('schema') if isinstance(document, dict) else document!r}")
    return [_signal(path, i, s) for i, s in enumerate(document.get("signals") or [])]


def _signal(path: Path, index: int, raw) -> Signal:
    where = f"{path}: signals[{index}]"
    if not isinstance(raw, dict):
        raise ReferenceError(f"{where} must be an object")
    if raw.get("stat") not in STATS:
        raise ReferenceError(f"{where}.stat is {raw.get('stat')!r}; one of {sorted(STATS)}")
    if raw.get("of") not in ("input", "output"):
        raise ReferenceError(f"{where}.of is {raw.get('of')!r}; 'input' or 'output'")
    try:
        edges = np.asarray(raw["edges"], np.float64).reshape(-1)
        proportions = np.asarray(raw["proportions"], np.float64).reshape(-1)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceError(f"{where}: edges and proportions must be number lists ({exc})") from None
    if len(proportions) != len(edges) + 1 or np.any(np.diff(edges) <= 0):
        raise ReferenceError(f"{where}: needs increasing edges and one more proportion than "
                             f"edges, got {len(edges)} edges and {len(proportions)} proportions")
    if not math.isclose(float(proportions.sum()), 1.0, abs_tol=1e-3) or proportions.min() < 0:
        raise ReferenceError(f"{where}: proportions must be >= 0 and sum to 1, "
                             f"sum {float(proportions.sum())!r}")
    return Signal(str(raw.get("name") or f"signal{index}"), raw["of"], str(raw.get("tensor")),
                  raw["stat"], edges, proportions)
