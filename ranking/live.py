"""Loaded model versions, the live routing and hot swap without a failed request.

:class:`ModelManager` keeps, per served model name (a :class:`ModelSlot`),
the versions loaded in this process -- each a :class:`LoadedModel`: the
scorer, its own :class:`~ranking.batcher.DynamicBatcher` and worker thread --
and an immutable :class:`Routing` snapshot saying which loaded version serves
whom (live, traffic split, explicit versions). It follows the registry
(:mod:`ranking.registry`): a watcher polls the state file every
``ranking.registry_poll_ms`` and reconciles; the admin calls reconcile at once.

Hot swap, and why no request fails
----------------------------------
1. A new version is loaded and warmed up (``scorer.warmup`` on the preferred
   batch sizes) on a worker thread, while the old routing keeps serving.
2. The swap is one attribute assignment: ``slot.routing = new_routing``.
3. A request reads ``slot.routing`` once and, without awaiting in between,
   *acquires* the model it picked (``in_flight += 1``); everything after that
   -- features, encoding, the batcher, the worker thread -- belongs to that
   model object, so it finishes on the version it started with and the
   response names that version.
4. A version leaving the routing is retired only after its ``in_flight``
   count drops to zero; then its batcher is drained and closed. Nothing a
   request holds is ever torn down under it.

A version that fails to load is recorded FAILED in the registry and the
current routing stays as it is (the live model keeps serving).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ranking.batcher import DynamicBatcher
from ranking.registry import ModelRegistry, ModelState, NotServable, UnknownModel, UnknownVersion, VersionRecord
from ranking.traffic import CONTROL, DEFAULT, TREATMENT, TrafficSplit

_log = logging.getLogger("cascade.ranking.live")

Loader = Callable[[Path, VersionRecord], Any]
"""Blocking: an artifact directory and its registry record -> a scorer (``.encoder``/``.encode``, ``.score_encoded``, ``.warmup``)."""


class VersionNotLoaded(LookupError):
    """A request asked for a version this replica has not loaded (RankRequest.model_version -> NOT_FOUND)."""


def default_loader(config: Any) -> Loader:
    """``ranking.artifact.load_scorer`` on ``ranking.backend`` (see ``ranking.backends.serving_backend``: INT8 with
    ``ranking.int8`` when the artifact carries it; the first backend the artifact carries when it lacks the configured one)."""

    def load(path: Path, record: VersionRecord) -> Any:
        from ranking.artifact import load_scorer, read_manifest
        from ranking.backends import serving_backend

        backends = list(read_manifest(path).backends)
        backend = serving_backend(config.ranking.backend, backends, int8=getattr(config.ranking, "int8", False))
        return load_scorer(path, backend, config.ranking.threads, verify=True)

    return load


@dataclass(eq=False)
class LoadedModel:
    """One version in memory: its scorer, batcher and the requests holding it."""

    record: VersionRecord
    scorer: Any
    batcher: DynamicBatcher
    loaded_at_ms: int
    in_flight: int = 0
    arriving: int = 0  # acquired but not yet submitted to the batcher (the batcher's arrivals hint)
    retired: bool = False
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def feature_set(self) -> str:
        return self.record.feature_set

    def encode(self, features: Any) -> Any:
        """Model inputs of an OnlineFeatures result (blocking; the scorer's own encoding)."""
        enc = getattr(self.scorer, "encode", None)
        if enc is not None:
            return enc(features)
        return self.scorer.encoder.encode_online(features)

    def acquire(self) -> None:
        self.in_flight += 1
        self.arriving += 1
        if self._idle is not None:
            self._idle.clear()

    def arrived(self) -> None:
        self.arriving -= 1

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.in_flight == 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()


@dataclass(frozen=True)
class Assignment:
    """ExperimentAssignment of a request."""

    experiment: str = ""
    bucket: str = DEFAULT
    overridden: bool = False


@dataclass(frozen=True)
class Routing:
    """Which loaded version serves whom; replaced as a whole on every change (never mutated)."""

    live: LoadedModel | None = None
    loaded: Mapping[str, LoadedModel] = field(default_factory=dict)
    split: TrafficSplit | None = None
    treatment: LoadedModel | None = None
    control: LoadedModel | None = None

    def choose(self, user_id: str, version: str | None = None) -> tuple[LoadedModel | None, Assignment]:
        """The model for this request and its experiment assignment. Raises :class:`VersionNotLoaded`."""
        split = self.split if self.treatment is not None else None
        if version:
            model = self.loaded.get(version)
            if model is None:
                raise VersionNotLoaded(f"version {version!r} is not loaded (loaded: {', '.join(sorted(self.loaded)) or 'none'})")
            bucket = DEFAULT
            if split is not None:
                bucket = TREATMENT if version == split.treatment_version else CONTROL if model is self.control else DEFAULT
            return model, Assignment(split.experiment if split else "", bucket, True)
        if split is None:
            return self.live, Assignment()
        if split.bucket(user_id) == TREATMENT:
            return self.treatment, Assignment(split.experiment, TREATMENT)
        return self.control or self.live, Assignment(split.experiment, CONTROL)


class ModelSlot:
    """One served model name: loaded versions, routing, and the lock serialising reconciles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.routing = Routing()
        self.state: ModelState | None = None
        self.failed: dict[str, str] = {}  # version -> load error seen by this replica
        self.retired: set[str] = set()  # versions loaded here before and unloaded since
        self.stamp: Any = None
        self.lock = asyncio.Lock()

    @property
    def loaded(self) -> Mapping[str, LoadedModel]:
        return self.routing.loaded


class ModelManager:
    """Loads, warms, routes and retires model versions of the served model names; see the module docstring."""

    def __init__(self, registry: ModelRegistry, ranking: Any, *, names: Sequence[str] = (), loader: Loader,
                 batching: bool | None = None) -> None:
        self.registry = registry
        self.ranking = ranking
        self.loader = loader
        self.batching = ranking.batching if batching is None else batching
        names = list(dict.fromkeys([*names] or [registry.default_model or ranking.model]))
        self.slots: dict[str, ModelSlot] = {n: ModelSlot(n) for n in names}
        self.default_name = names[0]
        self._watcher: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lookups

    def slot(self, name: str | None = None) -> ModelSlot:
        name = name or self.default_name
        try:
            return self.slots[name]
        except KeyError:
            raise UnknownModel(f"model {name!r} is not served here (served: {', '.join(self.slots)})") from None

    def live_model(self, name: str | None = None) -> LoadedModel | None:
        return self.slot(name).routing.live

    # -- lifecycle

    async def start(self, *, watch: bool = True) -> None:
        """Load what the registry has live (and warm), then follow the registry in the background."""
        for name in self.slots:
            await self.sync(name)
        if watch and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="model-registry-watcher")

    async def close(self) -> None:
        self._closed = True
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
        for slot in self.slots.values():
            async with slot.lock:
                models = list(slot.routing.loaded.values())
                slot.routing = Routing()
            for m in models:
                self._retire(m)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _watch(self) -> None:
        period = max(0.01, self.ranking.registry_poll_ms / 1000.0)
        while True:
            await asyncio.sleep(period)
            for name, slot in self.slots.items():
                try:
                    if self.registry.stamp(name) != slot.stamp:
                        await self.sync(name)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - keep watching; the current routing keeps serving
                    _log.exception("model registry watcher: reconciling %s failed", name)

    # -- reconciling with the registry

    async def sync(self, name: str | None = None) -> Routing:
        """Bring this replica in line with the registry's state of `name`; returns the routing now served."""
        slot = self.slot(name)
        async with slot.lock:
            return await self._sync_locked(slot)

    async def _read_state(self, slot: ModelSlot) -> ModelState | None:
        stamp = self.registry.stamp(slot.name)
        try:
            state = await asyncio.to_thread(self.registry.state, slot.name)
        except UnknownModel:
            state = None
        slot.stamp = stamp
        slot.state = state
        return state

    def _wanted(self, state: ModelState) -> list[str]:
        """Versions to keep loaded, most important first: live, split, previous live, newest registered."""
        out: list[str] = []

        def add(v: str | None) -> None:
            if v and v not in out:
                rec = state.versions.get(v)
                if rec is not None and rec.servable:
                    out.append(v)

        add(state.live)
        if state.traffic_split:
            add(state.traffic_split.treatment_version)
            add(state.traffic_split.control_version)
        if state.previous:
            add(state.rollback_target())
        for rec in state.ordered():
            if len(out) >= max(1, self.ranking.max_loaded_versions):
                break
            add(rec.version)
        return out

    async def _sync_locked(self, slot: ModelSlot, *, also: str | None = None) -> Routing:
        state = await self._read_state(slot)
        if state is None:
            return slot.routing
        loaded = dict(slot.routing.loaded)
        wanted = self._wanted(state)
        if also and also not in wanted:
            wanted.insert(0, also)
        required = {v for v in (state.live, also, *(
            (state.traffic_split.treatment_version, state.traffic_split.control_version) if state.traffic_split else ()))
            if v}
        for version in wanted:
            if version in loaded or (version in slot.failed and version not in required):
                continue
            model = await self._load(slot, state.versions[version])
            if model is not None:
                loaded[version] = model
        keep = set(wanted)
        live = loaded.get(state.live) if state.live else None
        if live is None and state.live:
            live = slot.routing.live  # the registry's live did not load here: keep serving what we serve
            if live is not None:
                keep.add(live.version)
                _log.warning("model %s: live version %s is not loadable here; still serving %s",
                             slot.name, state.live, live.version)
        split = state.traffic_split
        treatment = loaded.get(split.treatment_version) if split else None
        control = (loaded.get(split.control_version) if split and split.control_version else None)
        if split and split.control_version and control is None:
            treatment = None  # cannot honour the split without its control version: serve the live one to all
        new_loaded = {v: m for v, m in loaded.items() if v in keep}
        routing = Routing(live=live, loaded=new_loaded, split=split if treatment is not None else None,
                          treatment=treatment, control=control)
        old = slot.routing
        slot.routing = routing  # the swap: one reference assignment
        if (old.live and old.live.version) != (live and live.version):
            _log.info("model %s: live version %s -> %s", slot.name, old.live.version if old.live else None,
                      live.version if live else None, extra={"model": slot.name})
        for version, model in loaded.items():
            if version not in new_loaded:
                slot.retired.add(version)
                self._retire(model)
        return routing

    async def _load(self, slot: ModelSlot, record: VersionRecord) -> LoadedModel | None:
        """Load and warm one version off the event loop; None (recorded FAILED) when it cannot be."""
        path = Path(record.path) if record.path else self.registry.artifact_path(record.version, slot.name)
        sizes = tuple(self.ranking.preferred_batch_sizes) or (self.ranking.max_batch_size,)
        t0 = time.perf_counter()

        def load() -> Any:
            scorer = self.loader(path, record)
            warm = getattr(scorer, "warmup", None)
            if warm is not None:
                warm(sizes)
            return scorer

        try:
            scorer = await asyncio.to_thread(load)
        except Exception as exc:  # noqa: BLE001 - a bad version must not take the service down
            message = f"load failed: {type(exc).__name__}: {exc}"
            slot.failed[record.version] = message
            _log.error("model %s version %s: %s", slot.name, record.version, message)
            try:
                await asyncio.to_thread(self.registry.mark_failed, record.version, message, slot.name)
            except Exception:  # noqa: BLE001
                _log.exception("could not record the load failure of %s/%s", slot.name, record.version)
            return None
        model = LoadedModel(record, scorer, None, int(time.time() * 1000))  # type: ignore[arg-type]
        arrivals = (lambda m=model: m.arriving) if self.ranking.adaptive_queue_delay else None
        model.batcher = DynamicBatcher.from_config(scorer.score_encoded, self.ranking, name=slot.name,
                                                   enabled=self.batching, arrivals=arrivals)
        slot.failed.pop(record.version, None)
        slot.retired.discard(record.version)
        _log.info("model %s version %s loaded and warmed in %.2fs", slot.name, record.version, time.perf_counter() - t0,
                  extra={"model": slot.name, "version": record.version})
        return model

    def _retire(self, model: LoadedModel) -> None:
        """Close `model` once no request holds it (in the background)."""
        if model.retired:
            return
        model.retired = True

        async def retire() -> None:
            await model.wait_idle()
            await model.batcher.close(drain=True)
            close = getattr(model.scorer, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    _log.exception("closing %s/%s", model.name, model.version)

        task = asyncio.get_running_loop().create_task(retire(), name=f"retire-{model.name}-{model.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- admin operations (registry mutation, then reconcile here at once)

    async def ensure_loaded(self, version: str, name: str | None = None) -> LoadedModel:
        """`version` loaded in this replica (loading it now if needed). Raises UnknownVersion, NotServable."""
        slot = self.slot(name)
        async with slot.lock:
            return await self._ensure_loaded_locked(slot, version)

    async def _ensure_loaded_locked(self, slot: ModelSlot, version: str) -> LoadedModel:
        model = slot.routing.loaded.get(version)
        if model is not None:
            return model
        state = await self._read_state(slot)
        if state is None:
            raise UnknownModel(f"no model named {slot.name!r} in the registry")
        rec = state.record(version)
        if not rec.servable:
            raise NotServable(f"version {version!r} is {rec.status}: {rec.status_message}")
        routing = await self._sync_locked(slot, also=version)
        model = routing.loaded.get(version)
        if model is None:
            raise NotServable(f"version {version!r} could not be loaded: {slot.failed.get(version, 'unknown error')}")
        return model

    async def pin(self, version: str, name: str | None = None, *, suspend_auto_promotion: bool | None = None,
                  reason: str = "") -> tuple[VersionRecord, VersionRecord | None]:
        slot = self.slot(name)
        async with slot.lock:
            await self._ensure_loaded_locked(slot, version)
            out = await asyncio.to_thread(self.registry.pin, version, slot.name,
                                          suspend_auto_promotion=suspend_auto_promotion, reason=reason)
            await self._sync_locked(slot)
            return out

    async def rollback(self, name: str | None = None, *, reason: str = "") -> tuple[VersionRecord, VersionRecord]:
        slot = self.slot(name)
        async with slot.lock:
            state = await self._read_state(slot)
            if state is None:
                raise UnknownModel(f"no model named {slot.name!r} in the registry")
            target = state.rollback_target()
            if target is None or state.live is None:
                raise NotServable(f"model {slot.name!r} has no previous live version to roll back to")
            await self._ensure_loaded_locked(slot, target)
            out = await asyncio.to_thread(self.registry.rollback, slot.name, reason=reason)
            await self._sync_locked(slot)
            return out

    async def set_traffic_split(self, split: TrafficSplit | None, name: str | None = None, *,
                                reason: str = "") -> TrafficSplit | None:
        slot = self.slot(name)
        async with slot.lock:
            if split is not None:
                split.validate()
                for v in (split.treatment_version, split.control_version):
                    if v:
                        await self._ensure_loaded_locked(slot, v)
            out = await asyncio.to_thread(self.registry.set_traffic_split, split, slot.name, reason=reason)
            await self._sync_locked(slot)
            return out

    async def publish(self, artifact_dir: str | Path, *, auto_promote: bool = False, reason: str = "") -> str:
        """Publish into the registry (verified, compatibility-checked), then reconcile the model's slot."""
        version = await asyncio.to_thread(self.registry.publish, artifact_dir, auto_promote=auto_promote, reason=reason)
        rec_name = None
        for name in self.slots:
            try:
                self.registry.version(version, name)
            except (UnknownModel, UnknownVersion):
                continue
            rec_name = name
        if rec_name is not None:
            await self.sync(rec_name)
        return version


__all__ = ["Assignment", "LoadedModel", "Loader", "ModelManager", "ModelSlot", "Routing", "VersionNotLoaded",
           "default_loader"]
