"""Which version answers a request, and what the repository reports: the read side of
server.core.repository (entries, routing, readiness, the index)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from server.core.errors import ModelNotFoundError, ModelNotReadyError, ServingError
from server.core.model import ModelVersion
from server.core.plans import LoadPlan

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"


@dataclass
class ModelEntry:
    """Routing state of one model name: its serving versions and why it is not ready."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: str = UNAVAILABLE
    reason: str = "not loaded"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fingerprint: tuple = ()
    load_failures: int = 0
    # Counts for readiness (ModelRepository.all_ready): loaded once, or named at start-up.
    # A load that fails at run time does not set it; unload clears it.
    wanted: bool = False
    plan: LoadPlan | None = None  # what the serving versions were loaded from
    # The latest load: (when it started, its error's class and message, or None). Loads
    # that queued behind it (arrived before it started) share its outcome.
    last_load: tuple[float, tuple[type, str] | None] | None = None
    rollout: object = None  # server.core.rollout.Rollout: canary and shadow versions


@dataclass(frozen=True)
class IndexRow:
    name: str
    version: str
    state: str
    reason: str


class Routing:
    """Queries over the entries; ModelRepository sets ``_entries``, ``_require_models``,
    ``conditions``, ``root`` and ``folders``, and changes entries as it loads."""

    _entries: dict[str, ModelEntry]
    _require_models: bool
    conditions: list

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version to serve: the newest loaded one when ``version`` is empty."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(f"unknown model {name!r}; the repository index lists "
                                     "the models served")
        if not entry.versions:
            raise ModelNotReadyError(f"model {name!r} is not ready: {entry.reason}")
        if not version:  # the newest, unless a canary or shadow rollout says otherwise
            rollout = entry.rollout
            return rollout.pick(entry.versions) if rollout else entry.versions[max(entry.versions)]
        try:
            return entry.versions[int(version)]
        except (ValueError, KeyError):
            raise ModelNotFoundError(f"model {name!r} has no loaded version {version!r}; "
                                     f"loaded versions are {sorted(entry.versions)}") from None

    def entry(self, name: str) -> ModelEntry | None:
        return self._entries.get(name)

    def loaded_versions(self) -> list[ModelVersion]:
        return [v for e in self._entries.values() for v in e.versions.values()]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServingError:
            return False
        return True

    def all_ready(self) -> bool:
        """Every model asked for serves (and, unless explicit control, there is one)."""
        wanted = [e for e in self._entries.values() if e.wanted]
        if self._require_models and not wanted:
            return False
        return all(e.versions for e in wanted) and not any(c() for c in self.conditions)

    def not_ready_reasons(self) -> list[str]:
        wanted = [e for e in self._entries.values() if e.wanted]
        if self._require_models and not wanted:
            return [f"the repository {self.root} holds no model folder with a config.pbtxt"]
        return ([f"{e.name}: {e.reason}" for e in wanted if not e.versions]
                + [reason for reason in (c() for c in self.conditions) if reason])

    def index(self, ready_only: bool = False, scan: bool = True) -> list[IndexRow]:
        """One row per version served, or per model not serving. ``scan=False`` lists
        the folders found by the last scan instead of reading the repository again."""
        rows = []
        names = set(self._entries)
        if scan:
            try:
                names.update(self.folders.discover())
            except OSError:
                pass
        else:
            names.update(self.folders.discovered)
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is not None and entry.versions:
                rows += [IndexRow(name, str(v), READY, "") for v in sorted(entry.versions)]
                if entry.reason:  # a failed reload: old versions serve, say why
                    rows[-1] = IndexRow(name, rows[-1].version, READY,
                                        f"serving the previous load; {entry.reason}")
            elif not ready_only:
                state = entry.state if entry else UNAVAILABLE
                reason = entry.reason if entry else "not loaded"
                rows.append(IndexRow(name, "", state, reason))
        return rows
