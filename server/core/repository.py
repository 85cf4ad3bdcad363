"""The model repository: finds model folders, loads their versions, routes requests.

Triton layout: ``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/model.onnx``.
A (re)load builds and warms the new versions off to the side and then swaps them in
at once: requests already running finish on the old versions, which then drain and
close. A failed load leaves what was serving in place and records why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from server.core.drift_window import DriftService
from server.core.errors import ModelLoadError, ModelNotFoundError, RepositoryError, ServingError
from server.core.folders import ModelFolders
from server.core.model import ModelVersion
from server.core.model_config import CONFIG_FILE
from server.core.plans import LoadPlan, check_plan_files, plan_from_disk, plan_from_override
from server.core.rollout import ShadowRunner, attach_rollout
# READY, UNAVAILABLE, ModelEntry and IndexRow are also read from here (tests, cluster).
from server.core.routing import (LOADING, READY, UNAVAILABLE, UNLOADING, IndexRow,  # noqa: F401
                                 ModelEntry, Routing)
from server.core.runtime import RuntimeOptions, error_summary

log = logging.getLogger("server.core.repository")

class ModelRepository(Routing):
    """Loads, reloads and unloads model versions; routes requests (core.routing)."""

    def __init__(self, root: Path, options: RuntimeOptions, drain_timeout_s: float = 30.0,
                 require_models: bool = True, drift: DriftService | None = None):
        self.folders = ModelFolders(root)
        self.drift = drift  # None: no drift monitoring
        self.shadows = ShadowRunner()  # runs sampled batches on shadow versions (rollout)
        self.root = self.folders.root
        # Ready needs at least one model unless the operator loads models explicitly.
        self._require_models = require_models
        self._options = options
        self._drain_timeout_s = drain_timeout_s
        self._entries: dict[str, ModelEntry] = {}
        self._retired: set[asyncio.Task] = set()
        self.listeners: list = []  # callables(event, name, version, seconds, reason)
        # Coroutine functions awaited after every load or unload, failed ones included,
        # before the call returns: the server's health status follows readiness this way.
        self.on_change: list = []
        # Callables -> a reason this process must not report ready, or None (workers:
        # a worker that does not serve what the others serve).
        self.conditions: list = []

    def discover(self) -> list[str]:
        """Model names: folders of the repository that hold a config.pbtxt."""
        return self.folders.discover()

    # ---- loading ----------------------------------------------------------------------
    async def load(self, name: str, config: str | None = None) -> None:
        """Load (or reload) every version the policy selects; swap in atomically.

        A name with no model folder is refused (ModelNotFoundError) before anything is
        recorded: a typo leaves no state, no metric series and no readiness change.
        Concurrent loads of one model (a storm) build it at most twice: the one running
        and one that starts after the others arrived, whose outcome they all share.
        ``config`` (a ModelConfig as JSON, Triton's load parameter) replaces config.pbtxt
        for this load; such a load always builds and shares its outcome with no other
        (they may each send another config); the next plain load reads the files again.
        """
        arrived = time.monotonic()
        path = self._existing_model_dir(name)
        entry = self._entries.setdefault(name, ModelEntry(name))
        try:
            async with entry.lock:
                if config is not None:
                    plan = await self.plan(name, config)
                    self._commit_entry(entry, *await self._prepare_entry(entry, path, plan))
                    return
                if entry.last_load is not None and entry.last_load[0] > arrived:
                    if entry.last_load[1] is not None:
                        kind, message = entry.last_load[1]
                        raise kind(message)
                    return
                started = time.monotonic()
                entry.last_load = (started, None)
                try:
                    self._commit_entry(entry, *await self._prepare_entry(entry, path))
                except ServingError as exc:
                    entry.last_load = (started, (type(exc), str(exc)))
                    raise
        finally:
            await self._changed()

    # Two-phase load, for worker processes that must all switch or none (supervisor):
    # prepare builds and warms the new versions aside; commit swaps them in; abort
    # closes them. A prepared load nobody commits is aborted after ``timeout_s``, so a
    # coordinator that died leaks no session. With ``plan`` (server.core.plans) it loads
    # exactly that config and those versions instead of what the files say now.
    async def prepare(self, name: str, timeout_s: float = 120.0,
                      plan: LoadPlan | None = None) -> "PreparedLoad":
        path = self._existing_model_dir(name)
        entry = self._entries.setdefault(name, ModelEntry(name))
        try:
            async with entry.lock:
                versions, plan = await self._prepare_entry(entry, path, plan)
        except BaseException:
            await self._changed()  # a failure is recorded: readiness may follow it
            raise
        handle = PreparedLoad(entry, versions, plan)
        handle.timer = asyncio.get_running_loop().call_later(timeout_s, self.abort, handle)
        return handle

    async def commit(self, handle: "PreparedLoad") -> None:
        handle.cancel_timer()
        if handle.versions is None:
            raise RepositoryError(f"model {handle.entry.name!r}: the prepared load was "
                                  "already aborted (it waited too long for its commit)")
        versions, handle.versions = handle.versions, None
        try:
            async with handle.entry.lock:
                self._commit_entry(handle.entry, versions, handle.plan)
        finally:
            await self._changed()

    def abort(self, handle: "PreparedLoad") -> None:
        handle.cancel_timer()
        versions, handle.versions = handle.versions, None
        if versions is None:
            return
        entry = handle.entry
        if not entry.versions and entry.state == LOADING:
            entry.state, entry.reason = UNAVAILABLE, "the load was aborted"
        self._retire(versions.values())

    async def _prepare_entry(self, entry: ModelEntry, path: Path, plan: LoadPlan | None = None
                             ) -> tuple[dict[int, ModelVersion], LoadPlan]:
        name = entry.name
        started = time.monotonic()
        if plan is None or plan.fingerprint:
            # Taken before reading the files: a change during the load is seen next poll.
            entry.fingerprint = plan.fingerprint if plan else self.folders.fingerprint(name)
        if not entry.versions:
            entry.state, entry.reason = LOADING, "loading"
        try:
            if plan is None:
                plan = await asyncio.get_running_loop().run_in_executor(
                    None, plan_from_disk, name, path, self.folders.inside, entry.fingerprint)
            return await self._load_versions(name, path, plan), plan
        except asyncio.CancelledError:
            if not entry.versions:  # never left LOADING behind
                entry.state, entry.reason = UNAVAILABLE, "the load was cancelled"
            raise
        except Exception as exc:  # whatever the cause, a load failure with its reason
            error = exc if isinstance(exc, ServingError) else _load_error(f"model {name!r}", exc)
            self._record_failure(entry, error, time.monotonic() - started)
            if error is exc:
                raise
            raise error from None

    def _commit_entry(self, entry: ModelEntry, new_versions: dict[int, ModelVersion],
                      plan: LoadPlan) -> None:
        name = entry.name
        old = entry.versions
        entry.versions = new_versions  # the atomic switch
        entry.rollout = next(iter(new_versions.values())).rollout if new_versions else None
        entry.plan = plan
        entry.state, entry.reason = READY, ""
        entry.wanted = True
        for version in new_versions.values():
            log.info("model %s version %d ready on %s in %.2f s (providers %s)", name,
                     version.version, version.session.device, version.load_seconds,
                     ",".join(version.session.providers))
            self._notify("loaded", name, str(version.version), version.load_seconds, "")
        self._retire(old.values())

    def _record_failure(self, entry: ModelEntry, error: ServingError, seconds: float) -> None:
        entry.load_failures += 1
        entry.reason = str(error)
        if not entry.versions:
            entry.state = UNAVAILABLE
        log.error("model %s failed to load (%s): %s", entry.name,
                  "previous versions keep serving" if entry.versions else "not serving", error)
        self._notify("load_failed", entry.name, "", seconds, str(error))

    async def load_startup(self, names: list[str]) -> None:
        """Load the models the server starts with; each one failing is logged and kept.

        These are wanted even when they fail: the server then starts (the other models
        serve) but reports not ready, with the reason, until the model loads or is
        unloaded. A load that fails later at run time (explicit or poll) does not turn a
        ready server not ready: like Triton, the server stays ready for the models that
        serve, and the failure shows in the load's answer, the index and the metrics. One
        broken model pushed to every replica must not take all of them out of service.
        """
        for name in names:
            try:
                self._existing_model_dir(name)
            except ServingError as exc:  # a start-up model that is not there at all
                entry = self._entries.setdefault(name, ModelEntry(name))
                entry.wanted, entry.state, entry.reason = True, UNAVAILABLE, str(exc)
                log.error("start-up model %s cannot load: %s", name, exc)
                continue
            self._entries.setdefault(name, ModelEntry(name)).wanted = True
            try:
                await self.load(name)
            except ServingError:
                pass  # logged and recorded by load()

    def _existing_model_dir(self, name: str) -> Path:
        """The folder of a model in the repository; refuses unknown or escaping names."""
        path = self.folders.model_dir(name)
        if not self.folders.inside(name, path / CONFIG_FILE):
            raise RepositoryError(f"model {name!r}: its config.pbtxt leads outside the "
                                  "repository; symbolic links leading out are refused")
        if not (path / CONFIG_FILE).is_file():
            log.debug("load of %r refused: no %s/%s in the repository", name, name,
                      CONFIG_FILE)
            raise ModelNotFoundError(f"no model {name!r} in the repository: there is no "
                                     f"folder {name!r} with a {CONFIG_FILE}")
        return path

    async def _changed(self) -> None:
        for hook in self.on_change:
            await hook()

    async def plan(self, name: str, config: str | None = None) -> LoadPlan:
        """What a load of ``name`` would serve now (a failure is recorded like a load's).
        With ``config`` (a load's override, core.plans): that config and the versions it
        selects; a bad one is the caller's error (InvalidInputError), recorded nowhere."""
        path = self._existing_model_dir(name)
        entry = self._entries.setdefault(name, ModelEntry(name))
        started = time.monotonic()
        fingerprint = self.folders.fingerprint(name)
        if config is not None:  # the files' fingerprint: a poll reloads when they change
            return await asyncio.get_running_loop().run_in_executor(
                None, plan_from_override, name, path, self.folders.inside, config, fingerprint)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, plan_from_disk, name, path, self.folders.inside, fingerprint)
        except ServingError as exc:
            entry.fingerprint = fingerprint  # a poll retries only once the files change
            self._record_failure(entry, exc, time.monotonic() - started)
            await self._changed()
            raise

    def served_plans(self) -> dict[str, LoadPlan]:
        """The plan of every model that serves here."""
        return {name: e.plan for name, e in self._entries.items()
                if e.versions and e.plan is not None}

    async def _load_versions(self, name: str, path: Path,
                             plan: LoadPlan) -> dict[int, ModelVersion]:
        spec = await asyncio.get_running_loop().run_in_executor(
            None, check_plan_files, name, path, plan, self.folders.inside)
        loaded: dict[int, ModelVersion] = {}
        try:
            for number in plan.versions:
                loaded[number] = await self._load_version(spec, number, path)
            attach_rollout(spec, loaded, self.shadows, f"model {name!r}")
        except BaseException:
            self._retire(loaded.values())
            raise
        return loaded

    async def _load_version(self, spec, number: int, path: Path) -> ModelVersion:
        """One version built and warmed; any failure is a ModelLoadError naming it."""
        started = time.monotonic()
        version = None
        try:
            version = await asyncio.get_running_loop().run_in_executor(
                None, ModelVersion, spec, number, path / str(number), self._options)
            await version.start()
            if self.drift is not None:  # after warm-up: real rows only
                version.drift = self.drift.watch(version.label, path / str(number),
                                                 version.feed_names, version.output_datatypes)
        except BaseException as exc:
            if version is not None:  # free its session and threads now
                await asyncio.shield(version.close(0.0))
            if isinstance(exc, ServingError) or not isinstance(exc, Exception):
                raise
            raise _load_error(f"{spec.name}:{number}", exc) from None
        version.load_seconds = time.monotonic() - started  # warm-up included
        return version

    def check_unload(self, name: str) -> ModelEntry:
        """What unload would refuse (a bad or unknown name), without unloading."""
        self.folders.model_dir(name)  # the same name checks as load
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(f"model {name!r} is not loaded")
        return entry

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; also clears a failed model's claim on readiness."""
        entry = self.check_unload(name)
        try:
            async with entry.lock:
                old = entry.versions
                entry.versions = {}
                entry.wanted = False
                entry.state, entry.reason = UNAVAILABLE, "unloaded"
                self._retire(old.values())
        finally:
            await self._changed()

    def _retire(self, versions) -> None:
        """Drain and close replaced versions in the background (in-flight work finishes)."""
        for version in list(versions):
            task = asyncio.get_running_loop().create_task(self._close(version))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def _close(self, version: ModelVersion) -> None:
        await version.close(self._drain_timeout_s)
        log.info("model %s version %d unloaded", version.name, version.version)
        self._notify("unloaded", version.name, str(version.version), 0.0, "")

    async def settle(self) -> None:
        """Wait until every replaced or unloaded version has drained and closed."""
        while self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    async def close(self) -> None:
        """Drain every model (bounded by the drain timeout) and close everything."""
        for entry in self._entries.values():
            self._retire(entry.versions.values())
            entry.versions = {}
            entry.state, entry.reason = UNAVAILABLE, "server shutting down"
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        self.shadows.stop()

    async def poll(self, load=None, unload=None) -> None:
        """One repository scan: load new or changed models, unload removed ones.

        A model whose files did not change since its last attempt is left alone, so a
        broken model is not retried (and logged) on every scan. ``load``/``unload``
        replace this repository's own (worker processes: fanned out to every worker).
        """
        load = load or self.load
        unload = unload or self.unload
        present = set(self.folders.discover())
        for name in sorted(present):
            entry = self._entries.get(name)
            if entry is not None and entry.fingerprint == self.folders.fingerprint(name):
                continue
            try:
                await load(name)
            except ServingError:
                pass  # logged and recorded by load()
        for name, entry in list(self._entries.items()):
            if name not in present and (entry.versions or entry.wanted):
                log.info("model %s left the repository; unloading", name)
                await unload(name)

    def _notify(self, event: str, name: str, version: str, seconds: float, reason: str) -> None:
        for listener in self.listeners:
            listener(event, name, version, seconds, reason)


class PreparedLoad:
    """New versions of one model built and warmed aside, waiting for commit or abort."""

    def __init__(self, entry: ModelEntry, versions: dict[int, ModelVersion], plan: LoadPlan):
        self.entry = entry
        self.plan = plan
        self.versions: dict[int, ModelVersion] | None = versions
        self.timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _load_error(where: str, exc: Exception) -> ModelLoadError:
    """Any failure while loading (ORT's own exception types, a bug) as a load error that
    names the model and the cause; the traceback goes to the debug log only."""
    log.debug("%s: load failure", where, exc_info=exc)
    return ModelLoadError(f"{where}: loading failed: {type(exc).__name__}: "
                          f"{error_summary(exc)}")
