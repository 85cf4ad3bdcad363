"""Canary and shadow versions: try a candidate version on real traffic, safely.

Set in a model's config.pbtxt (with both versions loaded, e.g. ``version_policy { specific
{ versions: [1, 2] } }``)::

    parameters { key: "canary_version"  value { string_value: "2" } }
    parameters { key: "canary_weight"   value { string_value: "0.3" } }   # 0..1
    parameters { key: "shadow_version"  value { string_value: "2" } }
    parameters { key: "shadow_fraction" value { string_value: "0.1" } }   # 0..1

- **canary**: that share of the requests that name no version go to the candidate; the rest
  (and every request without a rollout) to the primary, the newest *other* loaded version.
  Requests naming a version get that version. Weight 0 (or a reload without the candidate)
  sends everything to the primary; in-flight requests finish where they were queued.
- **shadow**: that share of the primary's batches also runs on the candidate, in one
  background thread, straight on its ONNX session (not its queue: the candidate's own
  statistics do not count shadow runs). The primary's answers and latency do not wait for
  it; when the thread falls behind, shadow batches are dropped first and counted. The
  first output is compared row by row: same predicted class (or, for one probability, the
  same side of 0.5), and the difference of the primary's top score.
"""

from __future__ import annotations

import logging
import random
import threading
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from server.core.errors import ModelLoadError

log = logging.getLogger("server.core.rollout")

CANARY_VERSION, CANARY_WEIGHT = "canary_version", "canary_weight"
SHADOW_VERSION, SHADOW_FRACTION = "shadow_version", "shadow_fraction"
MAX_PENDING_ROWS = 4096  # shadow rows waiting for the thread, at most
DELTA_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class RolloutSpec:
    canary_version: int | None = None
    canary_weight: float = 0.0
    shadow_version: int | None = None
    shadow_fraction: float = 0.0


def rollout_spec(parameters: dict[str, str], where: str) -> RolloutSpec | None:
    """The rollout a config's parameters ask for (None: none); bad values refused, quoted."""
    if not any(k in parameters for k in (CANARY_VERSION, CANARY_WEIGHT, SHADOW_VERSION,
                                          SHADOW_FRACTION)):
        return None
    canary = _version(parameters, CANARY_VERSION, where)
    shadow = _version(parameters, SHADOW_VERSION, where)
    weight = _share(parameters, CANARY_WEIGHT, where, needed=canary is not None)
    fraction = _share(parameters, SHADOW_FRACTION, where, needed=shadow is not None)
    return RolloutSpec(canary, weight, shadow, fraction)


def _version(parameters, key: str, where: str) -> int | None:
    raw = parameters.get(key)
    if raw is None:
        return None
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ModelLoadError(f"{where}: parameter {key}={raw!r} must be a version number >= 1")
    return int(raw)


def _share(parameters, key: str, where: str, needed: bool) -> float:
    raw = parameters.get(key)
    if raw is None:
        if needed:
            raise ModelLoadError(f"{where}: parameter {key} is missing (a share from 0 to 1)")
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ModelLoadError(f"{where}: parameter {key}={raw!r} must be a share from 0 to 1")
    return value


@dataclass
class ShadowStats:
    """What the candidate said next to the primary, per row."""

    rows: int = 0
    agree: int = 0
    dropped_rows: int = 0  # not run: the shadow thread was behind
    failures: int = 0  # shadow runs that raised
    delta_counts: list[int] = field(default_factory=lambda: [0] * (len(DELTA_BUCKETS) + 1))
    delta_sum: float = 0.0

    def record(self, primary: np.ndarray, shadow: np.ndarray) -> None:
        p, s = primary.reshape(len(primary), -1), shadow.reshape(len(shadow), -1)
        if p.shape[1] > 1:
            top = p.argmax(axis=1)
            same = top == s.argmax(axis=1)
            rows = np.arange(len(p))
            delta = np.abs(p[rows, top] - s[rows, top])
        else:
            same = (p[:, 0] >= 0.5) == (s[:, 0] >= 0.5)
            delta = np.abs(p[:, 0] - s[:, 0])
        self.rows += len(p)
        self.agree += int(same.sum())
        self.delta_sum += float(delta.sum())
        for d in delta.tolist():
            self.delta_counts[bisect_left(DELTA_BUCKETS, d)] += 1


class ShadowLink:
    """Hangs on a primary version: samples its batches for the candidate."""

    def __init__(self, runner: "ShadowRunner", candidate, fraction: float, output: str):
        self.runner, self.candidate, self.fraction, self.output = runner, candidate, fraction, output
        self.stats = ShadowStats()
        self._random = random.Random()

    def offer(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], rows: int) -> None:
        """From the primary's ORT thread: keep references when sampled; no work here."""
        if self._random.random() < self.fraction:
            self.runner.offer(self, feeds, outputs[self.output], rows)


class ShadowRunner:
    """The one thread that runs sampled batches on candidates, one at a time."""

    def __init__(self):
        self._pending: deque[tuple[ShadowLink, dict, np.ndarray, int]] = deque()
        self._pending_rows = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def offer(self, link: ShadowLink, feeds: dict, primary: np.ndarray, rows: int) -> None:
        if self._pending_rows + rows > MAX_PENDING_ROWS:
            link.stats.dropped_rows += rows  # behind: shadow work goes first
            return
        self._pending.append((link, feeds, primary, rows))
        self._pending_rows += rows
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            while self._pending and not self._stop:
                link, feeds, primary, rows = self._pending.popleft()
                self._pending_rows -= rows
                try:
                    shadow = link.candidate.session.run(feeds)[link.output]
                    link.stats.record(primary, shadow)
                except Exception as exc:  # a candidate that fails never touches the primary
                    link.stats.failures += 1
                    log.warning("shadow run on %s failed: %s", link.candidate.label, exc)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()


class Rollout:
    """One model's routing: primary, canary weight, shadow links."""

    def __init__(self, spec: RolloutSpec, versions: dict, runner: ShadowRunner, where: str):
        self.spec = spec
        self.primary = check_rollout_versions(spec, versions, where)
        self._random = random.Random()
        self.links: list[ShadowLink] = []
        if spec.shadow_version is not None and spec.shadow_fraction > 0:
            candidate = versions[spec.shadow_version]
            _check_same_feeds(versions[self.primary], candidate, where)
            output = candidate.spec.outputs[0].name
            for number, version in versions.items():
                if number != spec.shadow_version:
                    version.shadow = ShadowLink(runner, candidate, spec.shadow_fraction, output)
                    self.links.append(version.shadow)

    def pick(self, versions: dict):
        """The version a request that names none goes to."""
        spec = self.spec
        if (spec.canary_version in versions and spec.canary_weight > 0
                and self._random.random() < spec.canary_weight):
            return versions[spec.canary_version]
        return versions.get(self.primary) or versions[max(versions)]


def check_rollout_versions(spec: RolloutSpec, versions, where: str) -> int:
    """The primary version of a rollout over ``versions`` (numbers); refused when the
    rollout names a version not among them or leaves no other version to be primary."""
    candidates = {spec.canary_version, spec.shadow_version} - {None}
    for number in candidates:
        if number not in versions:
            raise ModelLoadError(f"{where}: the rollout names version {number}, which is "
                                 f"not loaded (loaded: {sorted(versions)}); load both "
                                 "with version_policy { specific { versions: [...] } }")
    others = [v for v in versions if v not in candidates]
    if not others:
        raise ModelLoadError(f"{where}: the rollout needs a primary version besides "
                             f"{sorted(candidates)}; loaded: {sorted(versions)}")
    return max(others)


def _check_same_feeds(primary, candidate, where: str) -> None:
    """A shadow runs on the primary's model inputs (a text model: its token ids)."""
    if primary.feed_signature() != candidate.feed_signature():
        raise ModelLoadError(f"{where}: shadow version {candidate.version} is fed differently "
                             f"from version {primary.version} (inputs or tokenizer differ); a "
                             "shadow must take the same model inputs")


def attach_rollout(spec, versions: dict, runner: ShadowRunner, where: str) -> None:
    """Validate the config's rollout against the loaded versions and hang it on each
    version (the repository switches it in with them); refused loads raise here."""
    wanted = rollout_spec(spec.parameters, where)
    rollout = Rollout(wanted, versions, runner, where) if wanted else None
    for version in versions.values():
        version.rollout = rollout
