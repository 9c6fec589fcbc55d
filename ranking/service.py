"""The ranking service: ``cascade.v1.RankingService/Rank`` and ``cascade.v1.ModelAdminService`` over gRPC.

::

    server = build_ranking_server(config, redis_url)       # a GrpcServer (not started)
    await server.start()                                   # loads + warms the live versions first

    cascade rank serve [--port N] [--redis-url URL] [--kafka BOOTSTRAP] [--model NAME] [--no-batching]
                                                           # ranking.service:serve

One Rank call
-------------
1. Validate (ranking.proto): ``user_id`` 1-128 bytes; ``item_ids`` 1 to 2,000
   unique ids of 1-128 bytes; ``model_name`` 1-64 and ``model_version`` 1-128
   bytes when set; ``request_id`` required with ``log_features``;
   ``context.page_index >= 0``. Anything else is INVALID_ARGUMENT; an unknown
   model name or a ``model_version`` not loaded here is NOT_FOUND.
2. Route: read the model's routing snapshot once (live version, or the
   traffic split's bucket by a stable hash of the user, or the explicit
   version) and hold that model until the response is built (see
   :mod:`ranking.live`: this is what makes hot swaps lose no request).
3. Features: ONE batched online read of the model's feature set for all
   candidates (``{"user_id": [u] * n, "item_id": items}`` plus the request
   context: ``timestamp_ms`` as ``event_ts``, platform, country, ...), then the
   model's encoding -- both on a worker thread, bounded by the request deadline.
4. Score: the encoded rows go through the model's dynamic batcher
   (:mod:`ranking.batcher`) with a deadline of ``ranking.deadline_ms`` or the
   request's deadline minus ``ranking.fallback_reserve_ms``, whichever is sooner.
5. Fail open (:mod:`ranking.fallback`): if there is no model, the feature read
   fails, encoding or the model fails, the batcher sheds the request, the
   deadline passes or the scores are not finite, the response carries fallback
   scores (a fallback model, popularity, or the request order) and is marked
   degraded with a :class:`DegradedReason` saying why -- never an error.
   Values defaulted because an entity row of a plain feature view is absent or
   stale (NOT_FOUND, OUTSIDE_MAX_AGE) add a FEATURES_MISSING reason; a window
   aggregation without state is the empty window's value, not degradation.
6. Optionally log the served feature vectors (``log_features``): handed to the
   :class:`~featurestore.served_log.ServedFeatureLogger` queue (never blocks);
   ``served_feature_id`` names the record.

Every response names the version that scored it (``model_version``; kind
MODEL_KIND_HEURISTIC and version ``heuristic:<name>`` for a heuristic fallback).

Latency of one 1,000-candidate call, and why
--------------------------------------------
``bench rank_service --quick`` on this 2-core machine with no other work on it (other processes
under 1% of the CPU during each run), before these changes (BENCHMARKS.md, 2026-11-28 09:37) and
after (two runs, 12:25 and 12:26; server-side means from the service's own histograms):

=========================  ===========  ===========  =================================================
stage                      before       after        what changed
=========================  ===========  ===========  =================================================
features (one read)        10.4 ms      2.7 ms       each distinct entity fetched and decoded once (the
                                                     user's rows were decoded 1,000 times), absent
                                                     window state not decoded, genre lists decoded once
                                                     per read, lean MGETs (``featurestore.online``)
encode                     1.9 ms       1.15 ms      numeric fields as one matrix, one-value columns
                                                     hashed once (``ranking.encoding``)
inference                  9.6 ms       3.9 ms       the artifact's INT8 ONNX model (``ranking.int8``,
                                                     ``ranking.backends.serving_backend``: AUC -0.0002)
Rank p50 / p99 (client)    24.9 / 33.9  9.5-10.0 /   the goal is p99 <= 15 ms
                                        13.6-15.2
=========================  ===========  ===========  =================================================

The same code before and after, run back to back (other processes: 2% of the CPU during the
"before" run, 35% during the "after" one): p50 22.8 -> 9.6 ms, p99 31.0 -> 16.6 ms.

Those runs read empty windows (MovieLens' 1997-98 timestamps). With the data shifted to now, so
every user and item has live window state (as the bench now serves), the feature read of 1,000
candidates is 5.5-7.7 ms: 2.7 KB of tile rings per item, ~5 ms of it Redis transfer. Hence the
shared-entity cache (``featurestore.shared_cache``, ``features.online_cache_ttl_ms`` 1 s, on for
ranking's client): the candidates' item rows come decoded from an in-process snapshot that a
background thread re-reads every 0.5 s, so item features may be up to 1 s old; the user's rows are
always read. ``bench rank_service`` (full, 14:06 UTC, nothing else running but the machine 20-30%
slower than in the morning per ``bench baseline``): cache off -> on, two servers taking every request
in turn, feature stage 14.0 -> 3.9 ms mean, p50 29.9 -> 19.3 ms, hit rate 0.995; the default
configuration's sequential calls p50 11.2 / p99 25.5 ms (inference 4.9 ms of it): the p99 goal of
15 ms is not met on that machine.

Admin (ModelAdminService)
-------------------------
ListVersions / GetLiveVersion report the registry's versions with this
replica's view (LIVE = served as live here, LOADED = in memory here, RETIRED =
unloaded here). PinVersion loads the version first if it is registered but
not in memory (a deviation from the proto's FAILED_PRECONDITION for "not yet
loaded": it is loadable, so it is loaded), then makes it live; Rollback
restores the previous live version; SetTrafficSplit starts, changes or ends a
split. Mutations go to the registry (audited there) and apply to this replica
before the call returns; other replicas follow within ``ranking.registry_poll_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import numpy as np
from prometheus_client import Counter, Histogram

from featurestore.client import FeatureRequestError, InvalidEntityKey, InvalidRequestContext
from featurestore.online import FeatureStatus
from proto.cascade.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from ranking.batcher import DELAY_BUCKETS, BatcherClosed, DeadlineExceeded, ModelError, QueueFull
from ranking.fallback import Fallback, request_order_scores
from ranking.live import LoadedModel, ModelManager, ModelSlot, VersionNotLoaded, default_loader
from ranking.registry import (
    FAILED,
    REJECTED,
    ModelRegistry,
    NotServable,
    UnknownModel,
    UnknownVersion,
    VersionRecord,
)
from ranking.traffic import InvalidSplit, TrafficSplit
from serving import GrpcServer, ValidationError, require, require_max_items, require_non_empty
from serving.context import time_remaining

_log = logging.getLogger("cascade.ranking.service")

RANKING_SERVICE = "cascade.v1.RankingService"
ADMIN_SERVICE = "cascade.v1.ModelAdminService"
MAX_ITEMS = 2000  # ranking.proto: "1 to 2000 unique ids"
MAX_ID_BYTES = 128
MAX_MODEL_NAME_BYTES = 64
MAX_VERSION_BYTES = 128
MAX_REASON_BYTES = 512
FUTURE_TOLERANCE_MS = 5 * 60 * 1000  # common.proto: a client clock more than 5 minutes ahead is ignored

KIND = {"deepfm": common_pb2.MODEL_KIND_DEEPFM, "din": common_pb2.MODEL_KIND_DIN, "ftrl": common_pb2.MODEL_KIND_FTRL}
_MISSING_STATUSES = (int(FeatureStatus.NOT_FOUND), int(FeatureStatus.OUTSIDE_MAX_AGE))

RANK_RESPONSES = Counter("cascade_ranking_responses_total", "Rank responses by what scored them: model or fallback name.",
                         ["model", "scored_by"])
DEGRADATIONS = Counter("cascade_ranking_degraded_total", "Degraded reasons attached to Rank responses.",
                       ["model", "stage", "code"])
STAGE_SECONDS = Histogram("cascade_ranking_stage_seconds",
                          "Rank stages outside the batcher: the batched feature read and the encoding (worker thread).",
                          ["model", "stage"], buckets=DELAY_BUCKETS)


def _stage_name(stage: int) -> str:
    return common_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()


def _code_name(code: int) -> str:
    return common_pb2.DegradationCode.Name(code).removeprefix("DEGRADATION_CODE_").lower()


def _clip(text: str, limit: int = 1024) -> str:
    raw = text.encode()
    return text if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore") + "..."


def _require_bytes(value: str, field: str, lo: int, hi: int) -> str:
    if not value or (lo > 0 and not value.strip()):
        raise ValidationError(field, "must not be empty")
    if len(value) > hi // 4 and len(value.encode()) > hi:
        raise ValidationError(field, f"is {len(value.encode())} bytes, at most {hi} allowed")
    return value


# ============================================================================ Rank


@dataclass
class _Prepared:
    features: Any = None
    encoded: Any = None
    feature_error: BaseException | None = None
    encode_error: BaseException | None = None
    invalid: ValidationError | None = None


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """``Rank``: see the module docstring."""

    def __init__(self, manager: ModelManager, client: Any, ranking: Any, *, fallback: Fallback,
                 logger: Any = None, max_items: int = MAX_ITEMS) -> None:
        self.manager = manager
        self.client = client
        self.ranking = ranking
        self.fallback = fallback
        self.logger = logger
        self.max_items = max_items
        self._keys: dict[str, tuple[bool, bool]] = {}  # feature set -> (needs user_id, needs item_id)
        self._row_cols: dict[Any, np.ndarray] = {}

    # -- validation

    def _validate(self, req: ranking_pb2.RankRequest) -> tuple[str, list[str]]:
        user_id = _require_bytes(req.user_id, "user_id", 1, MAX_ID_BYTES)
        items = list(req.item_ids)
        require_non_empty(items, "item_ids")
        require_max_items(items, "item_ids", self.max_items)
        if len(set(items)) != len(items):
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                if item in seen:
                    raise ValidationError(f"item_ids[{i}]", f"duplicates item_ids[{seen[item]}] ({item!r}); ids must be unique")
                seen[item] = i
        if "" in items or max(map(len, items)) > MAX_ID_BYTES // 4:  # C-speed scans; the per-item loop only when needed
            for i, item in enumerate(items):
                if not item:
                    raise ValidationError(f"item_ids[{i}]", "must not be empty")
                if len(item) > MAX_ID_BYTES // 4 and len(item.encode()) > MAX_ID_BYTES:
                    raise ValidationError(f"item_ids[{i}]", f"is {len(item.encode())} bytes, at most {MAX_ID_BYTES} allowed")
        if req.HasField("model_name"):
            _require_bytes(req.model_name, "model_name", 1, MAX_MODEL_NAME_BYTES)
        if req.HasField("model_version"):
            _require_bytes(req.model_version, "model_version", 1, MAX_VERSION_BYTES)
        if req.log_features:
            require(req.request_id.strip(), "request_id", "is required when log_features is true")
        require(req.context.page_index >= 0, "context.page_index", f"must be >= 0, got {req.context.page_index}")
        return user_id, items

    @staticmethod
    def _request_context(ctx: common_pb2.RequestContext) -> dict[str, Any]:
        out: dict[str, Any] = dict(ctx.attributes)
        ts = int(ctx.timestamp_ms)
        if 0 < ts <= time.time() * 1000 + FUTURE_TOLERANCE_MS:
            out["event_ts"] = ts  # else the feature client uses the serving time
        out.update(
            platform=common_pb2.Platform.Name(ctx.platform) if ctx.platform else None,
            device_id=ctx.device_id or None,
            app_version=ctx.app_version or None,
            locale=ctx.locale or None,
            country=ctx.country or None,
            surface=ctx.surface or "home_feed",
            page_index=int(ctx.page_index),
            session_id=ctx.session_id or None,
        )
        return out

    def _key_columns(self, feature_set: str, user_id: str, items: list[str]) -> dict[str, list[str]]:
        needs = self._keys.get(feature_set)
        if needs is None:
            keys = set(self.client.repo.resolve(feature_set).join_keys)
            needs = self._keys[feature_set] = ("user_id" in keys, "item_id" in keys)
        cols: dict[str, list[str]] = {}
        if needs[0]:
            cols["user_id"] = [user_id] * len(items)
        if needs[1]:
            cols["item_id"] = items
        return cols

    def _read_and_encode(self, model: LoadedModel, user_id: str, items: list[str], context: dict[str, Any]) -> _Prepared:
        """Worker thread: one batched feature read for all candidates, then the model's encoding."""
        t0 = time.perf_counter()
        try:
            keys = self._key_columns(model.feature_set, user_id, items)
            features = self.client.get_online_features(None, keys, model.feature_set, context)
        except (InvalidEntityKey, InvalidRequestContext) as exc:
            return _Prepared(invalid=ValidationError("context" if isinstance(exc, InvalidRequestContext) else "item_ids", str(exc)))
        except Exception as exc:  # noqa: BLE001 - the store being down degrades, it does not fail the call
            return _Prepared(feature_error=exc)
        t1 = time.perf_counter()
        STAGE_SECONDS.labels(model.name, "features").observe(t1 - t0)
        try:
            encoded = model.encode(features)
        except Exception as exc:  # noqa: BLE001
            return _Prepared(features, encode_error=exc)
        STAGE_SECONDS.labels(model.name, "encode").observe(time.perf_counter() - t1)
        return _Prepared(features, encoded)

    # -- the call

    async def Rank(self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.RankResponse:
        user_id, items = self._validate(request)
        problem: tuple[grpc.StatusCode, str] | None = None
        slot: ModelSlot | None = None
        model: LoadedModel | None = None
        assignment = None
        try:
            slot = self.manager.slot(request.model_name if request.HasField("model_name") else None)
            model, assignment = slot.routing.choose(user_id, request.model_version if request.HasField("model_version") else None)
        except (UnknownModel, VersionNotLoaded) as exc:
            problem = (grpc.StatusCode.NOT_FOUND, str(exc))
        if problem is not None:
            await context.abort(*problem)
        assert slot is not None and assignment is not None
        if model is None:
            return await self._respond(request, slot, None, assignment, user_id, items)
        model.acquire()  # no await between reading the routing and this: the model cannot be retired under us
        try:
            return await self._respond(request, slot, model, assignment, user_id, items)
        finally:
            model.release()

    async def _respond(self, request: ranking_pb2.RankRequest, slot: ModelSlot, model: LoadedModel | None,
                       assignment: Any, user_id: str, items: list[str]) -> ranking_pb2.RankResponse:
        reasons: list[common_pb2.DegradedReason] = []
        reserve = self.ranking.fallback_reserve_ms / 1000.0
        features = None
        scores: np.ndarray | None = None
        model_problem: tuple[int, str] | None = None  # (degradation code, message) of the model stage
        store_ok = True
        ctx = self._request_context(request.context)
        if model is None:
            model_problem = (common_pb2.DEGRADATION_CODE_MODEL_UNAVAILABLE, f"no version of {slot.name} is loaded")
        else:
            prepared: _Prepared | None = None
            try:
                remaining = time_remaining()
                timeout = None if remaining is None else max(0.0, remaining - reserve)
                prepared = await asyncio.wait_for(asyncio.to_thread(self._read_and_encode, model, user_id, items, ctx), timeout)
            except TimeoutError:
                store_ok = False
                reasons.append(common_pb2.DegradedReason(
                    stage=common_pb2.STAGE_FEATURES, code=common_pb2.DEGRADATION_CODE_TIMEOUT, component=model.feature_set,
                    fallback="skipped", message="the feature read did not finish within the request deadline"))
                model_problem = (common_pb2.DEGRADATION_CODE_TIMEOUT, "no features in time to score")
            finally:
                model.arrived()
            if prepared is not None:
                if prepared.invalid is not None:
                    raise prepared.invalid
                features = prepared.features
                if prepared.feature_error is not None:
                    exc = prepared.feature_error
                    unavailable = not isinstance(exc, FeatureRequestError)
                    store_ok = not unavailable
                    reasons.append(common_pb2.DegradedReason(
                        stage=common_pb2.STAGE_FEATURES,
                        code=common_pb2.DEGRADATION_CODE_UNAVAILABLE if unavailable else common_pb2.DEGRADATION_CODE_ERROR,
                        component=model.feature_set, fallback="skipped",
                        message=_clip(f"feature read failed: {type(exc).__name__}: {exc}")))
                    model_problem = (common_pb2.DEGRADATION_CODE_ERROR, "no features to score")
                elif prepared.encode_error is not None:
                    exc = prepared.encode_error
                    model_problem = (common_pb2.DEGRADATION_CODE_ERROR, f"encoding failed: {type(exc).__name__}: {exc}")
                else:
                    scores, model_problem = await self._score(model, prepared.encoded, len(items), reserve)
        if features is not None:
            missing = self._missing_reason(features)
            if missing is not None:
                reasons.append(missing)
        if scores is None:
            response = await self._fallback_response(slot, model, model_problem, reasons, user_id, items, features,
                                                     store_ok, reserve)
        else:
            response = ranking_pb2.RankResponse(model_version=common_pb2.ModelVersion(
                model_name=model.name, version=model.version, kind=KIND.get(model.kind, common_pb2.MODEL_KIND_UNSPECIFIED)))
            response.scores.extend(scores.tolist())
            RANK_RESPONSES.labels(slot.name, "model").inc()
        if request.log_features:
            self._log_features(request, response, features, reasons)
        if reasons:
            response.degraded = True
            response.degraded_reasons.extend(reasons)
            for r in reasons:
                DEGRADATIONS.labels(slot.name, _stage_name(r.stage), _code_name(r.code)).inc()
        response.experiment.experiment = assignment.experiment
        response.experiment.bucket = assignment.bucket
        response.experiment.overridden = assignment.overridden
        return response

    async def _score(self, model: LoadedModel, encoded: Any, n: int, reserve: float) -> tuple[np.ndarray | None, tuple[int, str] | None]:
        budget = self.ranking.deadline_ms / 1000.0
        remaining = time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - reserve)
        if budget <= 0:
            return None, (common_pb2.DEGRADATION_CODE_TIMEOUT, "no time left in the request deadline to score")
        try:
            raw = await model.batcher.submit(encoded, deadline=time.monotonic() + budget)
        except QueueFull as exc:
            return None, (common_pb2.DEGRADATION_CODE_LOAD_SHED, str(exc))
        except DeadlineExceeded as exc:
            return None, (common_pb2.DEGRADATION_CODE_TIMEOUT, f"model missed its {budget * 1000:.1f} ms budget: {exc}")
        except BatcherClosed as exc:
            return None, (common_pb2.DEGRADATION_CODE_MODEL_UNAVAILABLE, str(exc))
        except ModelError as exc:
            cause = exc.__cause__
            detail = f"{exc}" if cause is None else f"{type(cause).__name__}: {cause}"
            return None, (common_pb2.DEGRADATION_CODE_ERROR, f"model failed: {detail}")
        if raw.shape != (n,) or not np.isfinite(raw).all():
            return None, (common_pb2.DEGRADATION_CODE_ERROR, "model returned non-finite scores")
        return np.clip(raw.astype(np.float64), 0.0, 1.0), None

    def _row_columns(self, features: Any) -> np.ndarray:
        """Columns of plain (row) feature views: only there is NOT_FOUND / OUTSIDE_MAX_AGE a substituted default.

        A window aggregation with no state for the entity is the empty window's
        value (a count of 0), the right answer rather than a stand-in.
        """
        key = (features.feature_set, tuple(features.views))
        hit = self._row_cols.get(key)
        if hit is None:
            from featurestore.definitions import FeatureView, WindowedFeatureView

            kinds = {name: self.client.repo.view(name) for name in set(features.views)}
            hit = self._row_cols[key] = np.array(
                [isinstance(kinds[v], FeatureView) and not isinstance(kinds[v], WindowedFeatureView) for v in features.views],
                dtype=bool)
        return hit

    def _missing_reason(self, features: Any) -> common_pb2.DegradedReason | None:
        status = features.status
        if status.size == 0:
            return None
        mask = ((status == _MISSING_STATUSES[0]) | (status == _MISSING_STATUSES[1])) & self._row_columns(features)
        if not mask.any():
            return None
        cols = np.flatnonzero(mask.any(axis=0))
        views = sorted({features.views[j] for j in cols.tolist()})
        return common_pb2.DegradedReason(
            stage=common_pb2.STAGE_FEATURES, code=common_pb2.DEGRADATION_CODE_FEATURES_MISSING,
            component=",".join(views)[:256], fallback="default_features",
            message=f"{int(mask.sum())} of {mask.size} feature values defaulted (entity row absent or stale)")

    async def _fallback_response(self, slot: ModelSlot, model: LoadedModel | None, problem: tuple[int, str] | None,
                                 reasons: list[common_pb2.DegradedReason], user_id: str, items: list[str], features: Any,
                                 store_ok: bool, reserve: float) -> ranking_pb2.RankResponse:
        fb = None
        if store_ok or features is not None:
            remaining = time_remaining()
            timeout = None if remaining is None else max(0.0, remaining - reserve / 2)
            try:
                fb = await asyncio.wait_for(asyncio.to_thread(self._fallback_scores, user_id, items, features, model,
                                                              store_ok), timeout)
            except TimeoutError:
                fb = None
        if fb is None:
            from ranking.fallback import REQUEST_ORDER, FallbackScores

            fb = FallbackScores(request_order_scores(len(items)), REQUEST_ORDER, None, ("no time for a fallback read",))
        code, message = problem or (common_pb2.DEGRADATION_CODE_ERROR, "model unavailable")
        if fb.problems:
            message = f"{message}; {'; '.join(fb.problems)}"
        reasons.insert(0, common_pb2.DegradedReason(stage=common_pb2.STAGE_RANKING, code=code, component=slot.name,
                                                    fallback=fb.name, message=_clip(message)))
        if fb.model is not None:
            mv = common_pb2.ModelVersion(model_name=fb.model.name, version=fb.model.version,
                                         kind=KIND.get(fb.model.kind, common_pb2.MODEL_KIND_UNSPECIFIED))
        else:
            mv = common_pb2.ModelVersion(model_name=slot.name, version=f"heuristic:{fb.name}", kind=common_pb2.MODEL_KIND_HEURISTIC)
        response = ranking_pb2.RankResponse(model_version=mv)
        response.scores.extend(fb.scores.tolist())
        RANK_RESPONSES.labels(slot.name, fb.name).inc()
        return response

    def _fallback_scores(self, user_id: str, items: list[str], features: Any, model: LoadedModel | None,
                         store_ok: bool) -> Any:
        if not store_ok and features is None:
            return None
        return self.fallback.score(user_id, items, features, exclude_model=model)

    def _log_features(self, request: ranking_pb2.RankRequest, response: ranking_pb2.RankResponse, features: Any,
                      reasons: list[common_pb2.DegradedReason]) -> None:
        def fail(code: int, message: str) -> None:
            reasons.append(common_pb2.DegradedReason(stage=common_pb2.STAGE_LOGGING, code=code, component="served_features",
                                                     fallback="skipped", message=message))

        if self.logger is None:
            return fail(common_pb2.DEGRADATION_CODE_UNAVAILABLE, "served-feature logging is not configured on this replica")
        if features is None:
            return fail(common_pb2.DEGRADATION_CODE_ERROR, "no features were read, nothing to log")
        sid = uuid.uuid4().hex
        try:
            got = self.logger.log(features, served_feature_id=sid, request_id=request.request_id)
        except Exception as exc:  # noqa: BLE001 - logging never fails the call
            return fail(common_pb2.DEGRADATION_CODE_ERROR, _clip(f"served-feature log: {type(exc).__name__}: {exc}"))
        if got is None:
            return fail(common_pb2.DEGRADATION_CODE_LOAD_SHED, "served-feature log queue full: record dropped")
        response.served_feature_id = got
        return None


# ============================================================================ admin


class ModelAdminServicer(ranking_pb2_grpc.ModelAdminServiceServicer):
    """ModelAdminService over the :class:`ModelManager` (registry + this replica's loaded versions)."""

    def __init__(self, manager: ModelManager, feature_set_versions: Any = None) -> None:
        self.manager = manager
        self.feature_set_versions = dict(feature_set_versions or {})

    # -- rendering

    def _status(self, slot: ModelSlot, rec: VersionRecord) -> int:
        if rec.status == REJECTED:
            return ranking_pb2.MODEL_VERSION_STATUS_REJECTED
        if rec.status == FAILED:
            return ranking_pb2.MODEL_VERSION_STATUS_FAILED
        routing = slot.routing
        if routing.live is not None and routing.live.version == rec.version:
            return ranking_pb2.MODEL_VERSION_STATUS_LIVE
        if rec.version in routing.loaded:
            return ranking_pb2.MODEL_VERSION_STATUS_LOADED
        if rec.version in slot.retired or rec.live_since_ms:
            return ranking_pb2.MODEL_VERSION_STATUS_RETIRED
        return ranking_pb2.MODEL_VERSION_STATUS_REGISTERED

    def info(self, slot: ModelSlot, rec: VersionRecord) -> ranking_pb2.ModelVersionInfo:
        message = rec.status_message or slot.failed.get(rec.version, "")
        return ranking_pb2.ModelVersionInfo(
            model=common_pb2.ModelVersion(model_name=rec.name, version=rec.version,
                                          kind=KIND.get(rec.kind, common_pb2.MODEL_KIND_UNSPECIFIED)),
            status=self._status(slot, rec), status_message=_clip(message), created_at_ms=rec.created_at_ms,
            live_since_ms=rec.live_since_ms,
            feature_set=common_pb2.FeatureSetRef(name=rec.feature_set, version=int(self.feature_set_versions.get(rec.feature_set, 0))),
            metrics=dict(rec.metrics), parent_version=rec.parent_version, artifact_uri=rec.uri)

    @staticmethod
    def _split_message(split: TrafficSplit | None) -> ranking_pb2.TrafficSplit | None:
        if split is None:
            return None
        return ranking_pb2.TrafficSplit(experiment=split.experiment, control_version=split.control_version,
                                        treatment_version=split.treatment_version,
                                        treatment_fraction=split.treatment_fraction, updated_at_ms=split.updated_at_ms)

    # -- calls

    def _slot(self, name: str) -> ModelSlot:
        _require_bytes(name, "model_name", 1, MAX_MODEL_NAME_BYTES)
        return self.manager.slot(name)

    async def _run(self, context: grpc.aio.ServicerContext, fn: Any) -> Any:
        """Run `fn()` (a coroutine function), mapping registry errors to statuses (abort outside the except)."""
        problem: tuple[grpc.StatusCode, str] | None = None
        try:
            return await fn()
        except (UnknownModel, UnknownVersion) as exc:
            problem = (grpc.StatusCode.NOT_FOUND, str(exc))
        except NotServable as exc:
            problem = (grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidSplit as exc:
            raise ValidationError(f"split.{exc.field}", exc.message) from None
        await context.abort(*problem)

    async def ListVersions(self, request: ranking_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.ListVersionsResponse:
        async def go() -> ranking_pb2.ListVersionsResponse:
            slot = self._slot(request.model_name)
            state = await asyncio.to_thread(self.manager.registry.state, slot.name)
            wanted = set(request.status_filter)
            infos = [self.info(slot, r) for r in state.ordered()]
            return ranking_pb2.ListVersionsResponse(versions=[i for i in infos if not wanted or i.status in wanted])

        return await self._run(context, go)

    async def GetLiveVersion(self, request: ranking_pb2.GetLiveVersionRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.GetLiveVersionResponse:
        async def go() -> ranking_pb2.GetLiveVersionResponse:
            slot = self._slot(request.model_name)
            try:
                state = await asyncio.to_thread(self.manager.registry.state, slot.name)
            except UnknownModel:
                state = None
            routing = slot.routing
            out = ranking_pb2.GetLiveVersionResponse(auto_promotion_suspended=bool(state and state.auto_promotion_suspended))
            if routing.live is not None:
                rec = state.versions.get(routing.live.version, routing.live.record) if state else routing.live.record
                out.live.CopyFrom(self.info(slot, rec))
            split = self._split_message(routing.split)
            if split is not None:
                out.traffic_split.CopyFrom(split)
            return out

        return await self._run(context, go)

    async def PinVersion(self, request: ranking_pb2.PinVersionRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.PinVersionResponse:
        async def go() -> ranking_pb2.PinVersionResponse:
            slot = self._slot(request.model_name)
            _require_bytes(request.version, "version", 1, MAX_VERSION_BYTES)
            require(len(request.reason.encode()) <= MAX_REASON_BYTES, "reason", f"at most {MAX_REASON_BYTES} bytes")
            live, previous = await self.manager.pin(request.version, slot.name,
                                                    suspend_auto_promotion=request.suspend_auto_promotion,
                                                    reason=request.reason)
            out = ranking_pb2.PinVersionResponse(live=self.info(slot, live))
            if previous is not None:
                out.previous.CopyFrom(self.info(slot, previous))
            return out

        return await self._run(context, go)

    async def Rollback(self, request: ranking_pb2.RollbackRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.RollbackResponse:
        async def go() -> ranking_pb2.RollbackResponse:
            slot = self._slot(request.model_name)
            require(len(request.reason.encode()) <= MAX_REASON_BYTES, "reason", f"at most {MAX_REASON_BYTES} bytes")
            live, previous = await self.manager.rollback(slot.name, reason=request.reason)
            return ranking_pb2.RollbackResponse(live=self.info(slot, live), rolled_back_from=self.info(slot, previous))

        return await self._run(context, go)

    async def SetTrafficSplit(self, request: ranking_pb2.SetTrafficSplitRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.SetTrafficSplitResponse:
        async def go() -> ranking_pb2.SetTrafficSplitResponse:
            slot = self._slot(request.model_name)
            split = None
            if request.HasField("split"):
                s = request.split
                split = TrafficSplit(s.experiment, s.treatment_version, s.treatment_fraction, s.control_version).validate()
            got = await self.manager.set_traffic_split(split, slot.name)
            out = ranking_pb2.SetTrafficSplitResponse()
            msg = self._split_message(got)
            if msg is not None:
                out.split.CopyFrom(msg)
            return out

        return await self._run(context, go)


# ============================================================================ server


class RankingServer(GrpcServer):
    """A :class:`GrpcServer` hosting RankingService and ModelAdminService.

    :meth:`start` loads and warms the live versions before listening;
    :meth:`stop` drains calls, then the batchers, then closes what it owns.
    """

    def __init__(self, config: Any, manager: ModelManager, ranking: RankingServicer, admin: ModelAdminServicer, *,
                 port: int = 0, owned: Sequence[Any] = ()) -> None:
        super().__init__("ranking", config.grpc, port)
        self.manager = manager
        self.ranking = ranking
        self.admin = admin
        self._owned = list(owned)
        self._closed = False
        self.add_service(ranking_pb2_grpc.add_RankingServiceServicer_to_server, ranking, RANKING_SERVICE)
        self.add_service(ranking_pb2_grpc.add_ModelAdminServiceServicer_to_server, admin, ADMIN_SERVICE)

    @property
    def registry(self) -> ModelRegistry:
        return self.manager.registry

    async def start(self) -> int:
        await self.manager.start()
        return await super().start()

    async def stop(self, grace: float | None = None) -> None:
        await super().stop(grace)
        if self._closed:
            return
        self._closed = True
        await self.manager.close()
        for thing in self._owned:
            try:
                thing.close()
            except Exception:  # noqa: BLE001
                _log.exception("closing %r", thing)


def build_ranking_server(config: Any, redis_url: str | None, *, kafka_bootstrap: str | None = None, repo: Any = None,
                         registry: ModelRegistry | None = None, feature_client: Any = None, loader: Any = None,
                         served_logger: Any = None, models: Sequence[str] = (), port: int | None = None,
                         batching: bool | None = None, check_registry: bool = True) -> RankingServer:
    """A ranking server (not started) for the configured registry, feature store and ports.

    * `feature_client` (default: ``FeatureClient.from_config(config, redis_url, repo=repo)``,
      whose feature registry must have the definitions live unless ``check_registry=False``);
    * `registry` (default: ``ModelRegistry.from_config(config)``), `loader` (default:
      :func:`ranking.live.default_loader`: ``load_scorer`` on ``ranking.backend``);
    * `models`: model names served (default: ``ranking.model``; ``ranking.fallback_model``
      is added when set);
    * `served_logger` or `kafka_bootstrap` (a :class:`ServedFeatureLogger` on the
      ``features`` topic) for ``log_features``; neither: logging requests are
      answered with a STAGE_LOGGING degraded reason;
    * `batching` overrides ``ranking.batching``; `port` defaults to ``ports.ranking``.
    """
    owned: list[Any] = []
    client = feature_client
    if client is None:
        from featurestore.client import FeatureClient

        if redis_url is None:
            raise ValueError("build_ranking_server needs a redis_url or a feature_client")
        client = FeatureClient.from_config(config, redis_url, repo=repo, check_registry=check_registry, shared_cache=True)
        owned.append(client)
    repo = repo or client.repo
    registry = registry or ModelRegistry.from_config(config, repo=repo)
    names = list(models) or [registry.default_model or config.ranking.model]
    if config.ranking.fallback_model and config.ranking.fallback_model not in names:
        names.append(config.ranking.fallback_model)
    manager = ModelManager(registry, config.ranking, names=names, loader=loader or default_loader(config), batching=batching)
    logger = served_logger
    if logger is None and kafka_bootstrap:
        from featurestore.served_log import ServedFeatureLogger

        logger = ServedFeatureLogger.from_config(kafka_bootstrap, config)
        owned.append(logger)
    fb_name = config.ranking.fallback_model
    provider = (lambda: manager.live_model(fb_name)) if fb_name else None
    fallback = Fallback(client, config.ranking.fallback_features, model_provider=provider)
    ranking = RankingServicer(manager, client, config.ranking, fallback=fallback, logger=logger,
                              max_items=min(MAX_ITEMS, config.grpc.max_request_items))
    admin = ModelAdminServicer(manager, getattr(client, "feature_set_versions", {}))
    return RankingServer(config, manager, ranking, admin, port=config.ports.ranking if port is None else port, owned=owned)


# ============================================================================ CLI


def serve(argv: Sequence[str] | None = None) -> int:
    """``cascade rank serve``: run the ranking service until SIGINT/SIGTERM."""
    from cascade.config import get_config
    from featurestore.registry import RegistryError
    from featurestore.repository import DefinitionError
    from serving.entrypoint import run_service

    parser = argparse.ArgumentParser(prog="cascade rank serve",
                                     description="Serve cascade.v1.RankingService and ModelAdminService over gRPC.")
    parser.add_argument("--port", type=int, default=None, help="port (default: config ports.ranking; 0 = any free port)")
    parser.add_argument("--redis-url", default=None, help="online store (default: config redis.url / REDIS_URL; none starts an embedded valkey)")
    parser.add_argument("--kafka", default=None, help="Kafka bootstrap for the served-feature log (default: config kafka.bootstrap_servers)")
    parser.add_argument("--model", action="append", default=None, help="model name to serve (repeatable; default: config ranking.model)")
    parser.add_argument("--no-batching", action="store_true", help="score each request alone")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default: config ports.metrics)")
    parser.add_argument("--allow-unapplied", action="store_true", help="serve feature definitions the feature registry does not have live")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    config = get_config()

    def build(redis_url: str) -> RankingServer:
        return build_ranking_server(config, redis_url, kafka_bootstrap=args.kafka or config.kafka.bootstrap_servers,
                                    models=args.model or (), port=args.port,
                                    batching=False if args.no_batching else None, check_registry=not args.allow_unapplied)

    def describe(server: RankingServer) -> str:
        live = {name: (slot.routing.live.version if slot.routing.live else None) for name, slot in server.manager.slots.items()}
        return (f"RankingService + ModelAdminService (registry {server.registry.root}, live {live}, "
                f"batching {'on' if server.manager.batching else 'off'})")

    return run_service(config, args.redis_url or config.redis.url, build, describe,
                       metrics_port=args.metrics_port, errors=(DefinitionError, RegistryError))


__all__ = ["ADMIN_SERVICE", "RANKING_SERVICE", "ModelAdminServicer", "RankingServer", "RankingServicer",
           "build_ranking_server", "serve"]
