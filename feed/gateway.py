"""FeedGateway: one GetFeed through recall -> (features | ranking) -> rerank, degrading instead of failing.

    gateway = FeedGateway(config, recall_stage, ranking_stage, rerank_stage, ...)
    result = await gateway.get_feed(request)         # a GetFeedRequest
    result.response, result.timings                  # GetFeedResponse, StageTimings (ms per stage)

The gRPC servicer (:mod:`feed.service`), ``cascade feed show`` and the
benchmark all call :meth:`FeedGateway.get_feed`; the stages are
:mod:`feed.stages` clients, in process or over gRPC, the same code path.

One request
-----------
1. **Validate** (:func:`feed.validation.validate_request`): INVALID_ARGUMENT
   naming the field. The request id is the client's or a new UUIDv4; it is
   the trace id of every downstream call.
2. **Budget** (:mod:`feed.deadline`): the caller's deadline, else
   ``feed.deadline_ms``; each stage gets its ``feed.stage_budget`` share of
   what is left when it starts, ``feed.reserve_ms`` kept for fallbacks.
3. **Experiment** (:mod:`feed.experiments`): bucket by stable hash of the user
   id, overrides honoured; the bucket's ranking target goes into RankRequest.
4. **Recall** ``feed.candidates`` candidates (quota overrides and
   ``exclude_item_ids`` passed on). Fails, or nothing recalled -> the
   user's last good feed, else the popular items (:mod:`feed.fallback`),
   served as they are; degraded (stage RECALL).
5. **Features** (item attributes for rerank, :mod:`feed.attributes`) and
   **ranking** at the same time. Ranking fails -> candidates ordered by their
   recall (merged) score scaled into [0, 1]; degraded (stage RANKING, fallback
   ``recall_score``). Feature read fails -> rerank without attributes;
   degraded (stage FEATURES).
6. **Rerank** the top ``feed.rerank_candidates`` of the ranked list into
   ``count`` items (its rules arrange the first positions; the rest of a
   1,000-candidate list would cost three times the work for the same page). Fails -> the top
   ``count`` of the ranked list with minimal safety filters (no id twice, one
   item per known ``group_id``, ``exclude_item_ids`` dropped); degraded
   (stage RERANK, fallback ``ranked_order``). Nothing left -> step 4's fallbacks.
7. **Respond**: items with score, position, channels, reasons, kind and
   ranking score; the model versions (ranking's, or the heuristic that stood in
   for it, then the rerank policy); the experiment; every stage's degraded
   reasons (a stage's own, e.g. a late recall channel, are passed on). Fewer
   items than asked adds INSUFFICIENT_RESULTS. Nothing at all -> UNAVAILABLE
   (:class:`FeedUnavailable`).
8. **After responding** (:class:`feed.background.Background`, never awaited by
   the response): the served items go into the impression history (the seen
   filter of the next feed), a feed that went through the whole pipeline
   becomes the user's last good feed, and every item is logged as an
   Impression (``ImpressionLogger.log(impressions_from_feed(...))``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from feed.attributes import EMPTY, FeatureRead, ItemAttributes
from feed.background import Background
from feed.deadline import Budget
from feed.experiments import Assignment, Experiments
from feed.fallback import FallbackItem, LastGoodFeeds, PopularItems, unseen
from feed.metrics import DEGRADED, RESPONSES, STAGE_SECONDS
from feed.stages import Stage, StageError
from feed.validation import FeedRequest, validate_request
from proto.cascade.v1 import common_pb2, feed_pb2, ranking_pb2, recall_pb2, rerank_pb2
from serving import context as ctxmod
from serving.context import time_remaining
from serving.validation import ValidationError

_log = logging.getLogger("cascade.feed")

MAX_RANK_ITEMS = 2000  # ranking.proto
MAX_RERANK_CANDIDATES = 2000  # rerank.proto
HOUR_MS = 3_600_000
FALLBACK_MODEL = "feed_fallback"
_GATEWAY_FALLBACKS = frozenset({"recall_score", "ranked_order", "no_attributes"})  # a stage the gateway stood in for
RERANK_POLICY_MODEL = "rerank_policy"

_CODES = {
    grpc.StatusCode.DEADLINE_EXCEEDED: common_pb2.DEGRADATION_CODE_TIMEOUT,
    grpc.StatusCode.CANCELLED: common_pb2.DEGRADATION_CODE_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: common_pb2.DEGRADATION_CODE_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: common_pb2.DEGRADATION_CODE_LOAD_SHED,
}
_STAGE_ENUM = {"recall": common_pb2.STAGE_RECALL, "features": common_pb2.STAGE_FEATURES,
               "ranking": common_pb2.STAGE_RANKING, "rerank": common_pb2.STAGE_RERANK}


def degradation_code(code: grpc.StatusCode) -> int:
    """The DegradationCode of a failed stage call's status."""
    return _CODES.get(code, common_pb2.DEGRADATION_CODE_ERROR)


def _clip(text: str, limit: int = 1024) -> str:
    raw = text.encode()
    return text if len(raw) <= limit else raw[: limit - 3].decode(errors="ignore") + "..."


def _reason(stage: str, code: int, fallback: str, message: str, component: str = "") -> common_pb2.DegradedReason:
    return common_pb2.DegradedReason(stage=_STAGE_ENUM[stage], code=code, component=component, fallback=fallback,
                                     message=_clip(message))


class FeedUnavailable(Exception):
    """Nothing at all could be served (the servicer answers UNAVAILABLE)."""


@dataclass
class StageTimings:
    """Milliseconds the gateway spent per stage of one request (0 for a stage that did not run)."""

    recall_ms: float = 0.0
    features_ms: float = 0.0
    ranking_ms: float = 0.0
    rerank_ms: float = 0.0
    fallback_ms: float = 0.0
    total_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


@dataclass
class FeedResult:
    """A served feed and what produced it (in-process callers: demo, bench, ``cascade feed show``)."""

    response: feed_pb2.GetFeedResponse
    timings: StageTimings
    user_id: str
    surface: str
    good: bool  # every stage answered (no gateway fallback): worth keeping as the last good feed
    candidates: int = 0  # recalled
    recall_index_version: str = ""
    rerank_policy_version: str = ""
    served_feature_id: str = ""
    user_features: dict[str, Any] = field(default_factory=dict)
    ranked: list[tuple[str, float, tuple[Any, ...], float | None]] = field(default_factory=list)  # the ranked list

    @property
    def item_ids(self) -> list[str]:
        return [i.item_id for i in self.response.items]


@dataclass
class _Ranked:
    """Candidates in ranked order with everything rerank and the response need."""

    ids: list[str]
    scores: list[float]  # in [0, 1]
    channels: list[Any]
    ranking_scores: list[float | None]
    model_version: common_pb2.ModelVersion
    experiment: common_pb2.ExperimentAssignment | None = None
    served_feature_id: str = ""


class FeedGateway:
    """See the module docstring. Cheap to call concurrently; holds no per-request state."""

    def __init__(self, config: Any, recall: Stage, ranking: Stage, rerank: Stage, *,
                 attributes: ItemAttributes | None = None, last_good: LastGoodFeeds | None = None,
                 popular: PopularItems | None = None, history: Any = None, impression_logger: Any = None,
                 impressions_from_feed: Callable[..., Any] | None = None, background: Background | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.fc = config.feed
        self.recall = recall
        self.ranking = ranking
        self.rerank = rerank
        self.attributes = attributes
        self.last_good = last_good
        self.popular = popular
        self.history = history
        self.impression_logger = impression_logger
        self.impressions_from_feed = impressions_from_feed
        self.background = background or Background(self.fc.background_concurrency, self.fc.background_max_pending)
        self.experiments = Experiments.from_config(self.fc)
        self.clock = clock
        self.transport = getattr(recall, "transport", "inprocess")
        # In-process watchers of every served FeedResult (the demo's live view); must be cheap, never raise.
        self.observers: list[Callable[[FeedResult], None]] = []

    # ------------------------------------------------------------------ entry

    async def get_feed(self, request: feed_pb2.GetFeedRequest) -> FeedResult:
        """Serve one feed; raises ValidationError (INVALID_ARGUMENT) or FeedUnavailable (UNAVAILABLE)."""
        t0 = time.perf_counter()
        try:
            req = validate_request(request, self.fc.max_count)
        except ValidationError:
            RESPONSES.labels("invalid").inc()
            raise
        rid = req.request_id or str(uuid.uuid4())
        token = ctxmod.request_id.set(rid)
        try:
            result = await self._serve(req, rid, t0)
        except ValidationError:
            RESPONSES.labels("invalid").inc()
            raise
        except FeedUnavailable:
            RESPONSES.labels("unavailable").inc()
            raise
        finally:
            ctxmod.request_id.reset(token)
        RESPONSES.labels("degraded" if result.response.degraded else "ok").inc()
        for observe in self.observers:
            try:
                observe(result)
            except Exception:  # noqa: BLE001 - a watcher must not fail a served feed
                _log.exception("feed: observer failed")
        return result

    # ------------------------------------------------------------------ the pipeline

    def _observe(self, stage: str, seconds: float) -> None:
        STAGE_SECONDS.labels(stage, self.transport).observe(seconds)

    async def _serve(self, req: FeedRequest, rid: str, t0: float) -> FeedResult:
        remaining = time_remaining()
        budget = Budget(self.fc.deadline_ms / 1000.0 if remaining is None else remaining, self.fc.stage_budget,
                        self.fc.reserve_ms / 1000.0)
        assignment = self.experiments.assign(req.user_id, bucket=req.bucket, model_version=req.model_version,
                                             overridden=req.overridden)
        timings = StageTimings()
        reasons: list[common_pb2.DegradedReason] = []
        context = req.proto.context

        # -- recall
        t = time.perf_counter()
        recall_resp: recall_pb2.RecallResponse | None = None
        try:
            recall_resp = await self.recall.call(recall_pb2.RecallRequest(
                user_id=req.user_id, count=self.fc.candidates, channel_quotas=req.recall_quotas,
                exclude_item_ids=req.proto.exclude_item_ids, context=context, request_id=rid),
                budget.slice("recall", ("recall", "features", "ranking", "rerank")))
        except StageError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT and req.recall_quotas:
                raise ValidationError("experiment_overrides.recall_quotas", f"rejected by recall: {exc.details}") from None
            reasons.append(_reason("recall", degradation_code(exc.code), "", f"recall failed: {exc.code.name}: {exc.details}"))
        timings.recall_ms = (time.perf_counter() - t) * 1e3
        self._observe("recall", timings.recall_ms / 1e3)

        if recall_resp is None or not recall_resp.candidates:
            if recall_resp is not None:
                reasons.extend(recall_resp.degraded_reasons)
                reasons.append(_reason("recall", common_pb2.DEGRADATION_CODE_INSUFFICIENT_RESULTS, "",
                                       "recall returned no candidates"))
            return await self._fallback_result(req, rid, assignment, budget, reasons, timings, t0)

        reasons.extend(recall_resp.degraded_reasons)
        cands = list(recall_resp.candidates)[:MAX_RERANK_CANDIDATES]
        ids = [c.item_id for c in cands]

        # -- features beside ranking
        feat_timeout = budget.slice("features", ("features", "ranking", "rerank"))
        feat_task = asyncio.ensure_future(self._read_features(req, ids, feat_timeout, context))
        t = time.perf_counter()
        ranked = await self._rank(req, rid, assignment, cands, budget, reasons, context)
        timings.ranking_ms = (time.perf_counter() - t) * 1e3
        self._observe("ranking", timings.ranking_ms / 1e3)
        feats, feat_ms, feat_reason = await feat_task
        timings.features_ms = feat_ms
        self._observe("features", feat_ms / 1e3)
        if feat_reason is not None:
            reasons.append(feat_reason)
        attrs = dict(zip(ids, feats.attrs)) if feats.attrs else {}

        # -- rerank
        t = time.perf_counter()
        items, policy, rerank_ok = await self._rerank(req, rid, ranked, attrs, budget, reasons, context)
        timings.rerank_ms = (time.perf_counter() - t) * 1e3
        self._observe("rerank", timings.rerank_ms / 1e3)

        if not items:
            reasons.append(_reason("rerank", common_pb2.DEGRADATION_CODE_INSUFFICIENT_RESULTS, "",
                                   f"no item of {len(ids)} candidates survived rerank"))
            return await self._fallback_result(req, rid, assignment, budget, reasons, timings, t0)

        good = not any(r.fallback in _GATEWAY_FALLBACKS for r in reasons)
        response = feed_pb2.GetFeedResponse(request_id=rid, items=items, served_feature_id=ranked.served_feature_id)
        response.model_versions.append(ranked.model_version)
        if policy:
            response.model_versions.append(common_pb2.ModelVersion(model_name=RERANK_POLICY_MODEL, version=policy,
                                                                   kind=common_pb2.MODEL_KIND_HEURISTIC))
        self._experiment(response, assignment, ranked.experiment)
        if len(items) < req.count:
            short = "recall" if len(ids) < req.count else "rerank"
            reasons.append(_reason(short, common_pb2.DEGRADATION_CODE_INSUFFICIENT_RESULTS, "",
                                   f"{len(items)} of {req.count} items ({len(ids)} candidates recalled)"))
        self._finish(response, reasons)
        timings.total_ms = (time.perf_counter() - t0) * 1e3
        self._observe("total", timings.total_ms / 1e3)
        result = FeedResult(response, timings, req.user_id, req.surface, good, len(ids), recall_resp.index_version,
                            policy if rerank_ok else "", ranked.served_feature_id, feats.user_features,
                            list(zip(ranked.ids, ranked.scores, ranked.channels, ranked.ranking_scores)))
        self._after(result)
        return result

    # ------------------------------------------------------------------ stages

    async def _read_features(self, req: FeedRequest, ids: list[str], timeout_s: float,
                             context: common_pb2.RequestContext) -> tuple[FeatureRead, float, common_pb2.DegradedReason | None]:
        t = time.perf_counter()
        if self.attributes is None or not self.attributes.enabled:
            return FeatureRead([EMPTY] * len(ids)), 0.0, None
        now_ms = int(context.timestamp_ms) or None
        if now_ms is not None and now_ms > self.clock() * 1000 + 300_000:  # common.proto: ignore a clock far ahead
            now_ms = None
        cached = self.attributes.cached(ids)
        if cached is not None:  # no I/O: no thread hop
            return cached, (time.perf_counter() - t) * 1e3, None
        try:
            if timeout_s <= 0:
                raise TimeoutError
            read = await asyncio.wait_for(asyncio.to_thread(self.attributes.read, req.user_id, ids, now_ms), timeout_s)
            return read, (time.perf_counter() - t) * 1e3, None
        except TimeoutError:
            reason = _reason("features", common_pb2.DEGRADATION_CODE_TIMEOUT, "no_attributes",
                             f"item attributes not read within {timeout_s * 1000:.1f} ms", "item_attributes")
        except Exception as exc:  # noqa: BLE001 - the store being down degrades the feed, it does not fail it
            reason = _reason("features", common_pb2.DEGRADATION_CODE_UNAVAILABLE, "no_attributes",
                             f"item attribute read failed: {type(exc).__name__}: {exc}", "item_attributes")
        return FeatureRead([EMPTY] * len(ids)), (time.perf_counter() - t) * 1e3, reason

    async def _rank(self, req: FeedRequest, rid: str, assignment: Assignment, cands: list[recall_pb2.RecallCandidate],
                    budget: Budget, reasons: list[common_pb2.DegradedReason],
                    context: common_pb2.RequestContext) -> _Ranked:
        ids = [c.item_id for c in cands][:MAX_RANK_ITEMS]
        rank_req = ranking_pb2.RankRequest(user_id=req.user_id, item_ids=ids, context=context,
                                           log_features=self.fc.log_features, request_id=rid)
        target = assignment.ranking
        if target.model_name is not None:
            rank_req.model_name = target.model_name
        if target.model_version is not None:
            rank_req.model_version = target.model_version
        scores: list[float] | None = None
        try:
            resp = await self.ranking.call(rank_req, budget.slice("ranking", ("features", "ranking", "rerank")))
            raw = np.asarray(resp.scores, dtype=np.float64)
            if raw.shape != (len(ids),) or not np.isfinite(raw).all():
                raise StageError("ranking", grpc.StatusCode.INTERNAL, f"{raw.size} scores for {len(ids)} items, or not finite")
            scores = np.clip(raw, 0.0, 1.0).tolist()
        except StageError as exc:
            if req.model_version is not None and exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise ValidationError("experiment_overrides.ranking_model_version",
                                      f"{req.model_version!r} cannot serve: {exc.details}") from None
            reasons.append(_reason("ranking", degradation_code(exc.code), "recall_score",
                                   f"ranking failed: {exc.code.name}: {exc.details}", target.model_name or ""))
            resp = None
        if resp is not None and scores is not None:
            reasons.extend(resp.degraded_reasons)
            order = np.argsort(-np.asarray(scores), kind="stable").tolist()  # stable: recall order breaks ties
            ranked_scores = [scores[i] for i in order]
            return _Ranked([ids[i] for i in order], ranked_scores, [cands[i].channels for i in order],
                           ranked_scores, resp.model_version,
                           resp.experiment if resp.HasField("experiment") else None, resp.served_feature_id)
        merged = [c.merged_score for c in cands]
        top = max(merged) if merged and max(merged) > 0 else 1.0
        return _Ranked(ids, [min(1.0, max(0.0, m / top)) for m in merged[: len(ids)]], [c.channels for c in cands],
                       [None] * len(ids), common_pb2.ModelVersion(model_name=FALLBACK_MODEL, version="heuristic:recall_score",
                                                                  kind=common_pb2.MODEL_KIND_HEURISTIC))

    async def _rerank(self, req: FeedRequest, rid: str, ranked: _Ranked, attrs: dict[str, tuple[str, str, str, int]],
                      budget: Budget, reasons: list[common_pb2.DegradedReason],
                      context: common_pb2.RequestContext) -> tuple[list[feed_pb2.FeedItem], str, bool]:
        rr = rerank_pb2.RerankRequest(user_id=req.user_id, count=req.count, context=context, request_id=rid,
                                      disabled_rules=req.disabled_rules)
        # Channels stay here: rerank only passes them through, and copying ~2,000 ChannelScore messages into the
        # request costs more (~3 ms) than the rest of it; the page's items get theirs back from `ranked` below.
        add = rr.candidates.add
        organic = common_pb2.ITEM_KIND_ORGANIC
        top = max(self.fc.rerank_candidates, req.count)
        ids, scores = ranked.ids[:top], ranked.scores[:top]
        if attrs:
            for item, score in zip(ids, scores):
                cat, author, group, pub = attrs.get(item, EMPTY)
                add(item_id=item, score=score, category=cat, author=author, group_id=group, published_at_ms=pub,
                    kind=organic)
        else:
            for item, score in zip(ids, scores):
                add(item_id=item, score=score, kind=organic)
        try:
            resp = await self.rerank.call(rr, budget.slice("rerank", ("rerank",)))
        except StageError as exc:
            reasons.append(_reason("rerank", degradation_code(exc.code), "ranked_order",
                                   f"rerank failed: {exc.code.name}: {exc.details}"))
            return self._safety_page(req, ranked, attrs), "", False
        reasons.extend(resp.degraded_reasons)
        index = {item: i for i, item in enumerate(ranked.ids)}
        items = []
        for pos, it in enumerate(resp.items):
            i = index.get(it.item_id)
            fi = feed_pb2.FeedItem(item_id=it.item_id, score=it.final_score if math.isfinite(it.final_score) else 0.0,
                                   position=pos, recall_channels=it.channels if i is None else ranked.channels[i],
                                   reasons=it.reasons, kind=it.kind or organic)
            rs = None if i is None else ranked.ranking_scores[i]
            if rs is not None and fi.kind == organic:
                fi.ranking_score = rs
            items.append(fi)
        return items, resp.policy_version, True

    def _safety_page(self, req: FeedRequest, ranked: _Ranked, attrs: dict[str, tuple[str, str, str, int]]) -> list[feed_pb2.FeedItem]:
        """Rerank's stand-in: the ranked order, no id twice, one item per known group, excluded ids dropped."""
        items: list[feed_pb2.FeedItem] = []
        ids: set[str] = set()
        groups: set[str] = set()
        for item, score, channels, rs in zip(ranked.ids, ranked.scores, ranked.channels, ranked.ranking_scores):
            if len(items) >= req.count:
                break
            group = attrs.get(item, EMPTY)[2]
            if item in ids or item in req.exclude or (group and group in groups):
                continue
            ids.add(item)
            if group:
                groups.add(group)
            fi = feed_pb2.FeedItem(item_id=item, score=score, position=len(items), recall_channels=channels,
                                   kind=common_pb2.ITEM_KIND_ORGANIC)
            if rs is not None:
                fi.ranking_score = rs
            items.append(fi)
        return items

    # ------------------------------------------------------------------ recall's fallbacks

    async def _fallback_items(self, req: FeedRequest, budget: Budget) -> tuple[list[FallbackItem], str, str]:
        """(items, fallback name, problem): the last good feed, else popular items; unseen ones first."""
        got: dict[str, list[FallbackItem]] = {}
        problem = ""
        since = int(self.clock() * 1000) - int(self.fc.fallback_seen_window_hours * HOUR_MS)
        # at least the reserve: a stage that overran its slice (a CPU stall) must not leave the fallback no time at all
        timeout = min(self.fc.fallback_timeout_ms / 1000.0, max(budget.remaining(), budget.reserve_s))
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                if self.last_good is not None:
                    got["last"] = [i for i in await self.last_good.load(req.user_id) if i.item_id not in req.exclude]
                    got["last_unseen"] = await unseen(self.history, req.user_id, got["last"], since)
                if not got.get("last_unseen") and self.popular is not None:
                    got["pop"] = [i for i in await self.popular.load() if i.item_id not in req.exclude]
                    got["pop_unseen"] = await unseen(self.history, req.user_id, got["pop"], since)
        except TimeoutError:
            problem = f"fallback reads not done within {timeout * 1000:.1f} ms"
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: serve what was read, if anything
            problem = f"fallback read failed: {type(exc).__name__}: {exc}"
        if self.popular is not None and not got.get("pop"):  # no time to read: the popular list read last time
            got["pop"] = [i for i in self.popular.peek() if i.item_id not in req.exclude]
        for key, name in (("last_unseen", "last_good_feed"), ("pop_unseen", "popularity"),
                          ("last", "last_good_feed"), ("pop", "popularity")):
            if got.get(key):
                return got[key][: req.count], name, problem
        return [], "", problem

    async def _fallback_result(self, req: FeedRequest, rid: str, assignment: Assignment, budget: Budget,
                               reasons: list[common_pb2.DegradedReason], timings: StageTimings, t0: float) -> FeedResult:
        t = time.perf_counter()
        items, name, problem = await self._fallback_items(req, budget)
        timings.fallback_ms = (time.perf_counter() - t) * 1e3
        self._observe("fallback", timings.fallback_ms / 1e3)
        if not items:
            why = "; ".join(r.message for r in reasons if r.message) or "no candidates"
            raise FeedUnavailable(_clip(f"no items to serve: {why}; no last good feed and no popular items"
                                        + (f" ({problem})" if problem else ""), 2048))
        for r in reasons:  # the recall stage's own failure says what stood in for it
            if r.stage == common_pb2.STAGE_RECALL and not r.component and not r.fallback:
                r.fallback = name
        response = feed_pb2.GetFeedResponse(request_id=rid)
        for pos, it in enumerate(items):
            response.items.append(feed_pb2.FeedItem(item_id=it.item_id, score=it.score if math.isfinite(it.score) else 0.0,
                                                    position=pos, recall_channels=it.channels,
                                                    kind=common_pb2.ITEM_KIND_ORGANIC))
        response.model_versions.append(common_pb2.ModelVersion(model_name=FALLBACK_MODEL, version=f"heuristic:{name}",
                                                               kind=common_pb2.MODEL_KIND_HEURISTIC))
        self._experiment(response, assignment, None)
        if len(items) < req.count:
            reasons.append(_reason("recall", common_pb2.DEGRADATION_CODE_INSUFFICIENT_RESULTS, name,
                                   f"{len(items)} of {req.count} items from the {name.replace('_', ' ')}"))
        self._finish(response, reasons)
        timings.total_ms = (time.perf_counter() - t0) * 1e3
        self._observe("total", timings.total_ms / 1e3)
        result = FeedResult(response, timings, req.user_id, req.surface, False)
        self._after(result)
        return result

    # ------------------------------------------------------------------ response

    def _experiment(self, response: feed_pb2.GetFeedResponse, a: Assignment,
                    ranking: common_pb2.ExperimentAssignment | None) -> None:
        exp = response.experiment
        if not a.experiment and ranking is not None and ranking.experiment and a.ranking.model_version is None:
            exp.experiment, exp.bucket = ranking.experiment, ranking.bucket  # ranking's own split decided the model
        else:
            exp.experiment, exp.bucket = a.experiment, a.bucket
        exp.overridden = a.overridden

    def _finish(self, response: feed_pb2.GetFeedResponse, reasons: list[common_pb2.DegradedReason]) -> None:
        response.served_at_ms = int(self.clock() * 1000)
        if reasons:
            response.degraded = True
            response.degraded_reasons.extend(reasons)
            for r in reasons:
                DEGRADED.labels(common_pb2.Stage.Name(r.stage).removeprefix("STAGE_").lower(),
                                common_pb2.DegradationCode.Name(r.code).removeprefix("DEGRADATION_CODE_").lower()).inc()

    # ------------------------------------------------------------------ after the response

    def _after(self, result: FeedResult) -> None:
        """History, last good feed and impression log: background tasks, never awaited here."""
        response, user = result.response, result.user_id
        ids = [i.item_id for i in response.items]
        if self.history is not None and ids:
            at = response.served_at_ms
            self.background.spawn("history", lambda: self.history.record(user, ids, at))
        if result.good and self.last_good is not None:
            ranked = result.ranked[: self.last_good.max_items + len(ids)]
            self.background.spawn("last_good", lambda: self.last_good.store(user, response, _more(ranked)))
        if self.impression_logger is not None and self.impressions_from_feed is not None:
            logger, convert, surface = self.impression_logger, self.impressions_from_feed, result.surface

            async def log() -> None:
                accepted = logger.log(convert(response, user_id=user, surface=surface))
                if accepted < len(response.items):
                    raise RuntimeError(f"impression log accepted {accepted} of {len(response.items)} impressions")

            self.background.spawn("impressions", log)

    async def warm_up(self, user_id: str = "warmup", timeout_s: float = 5.0, passes: int = 2) -> bool:
        """Passes through every stage with nothing written anywhere (no history, no logs): first-call costs
        (connections, lazy plans, code paths never run) are paid before real traffic. False if the last pass failed
        (the first may: recall's channels have budgets of a few ms, which a cold call can miss)."""
        ok = False
        for _ in range(max(1, passes)):
            ok = await self._warm_up_pass(user_id, timeout_s)
        if not ok:
            _log.warning("feed: warm-up pass failed: %s", self._warm_up_error)
        return ok

    _warm_up_error = ""

    async def _warm_up_pass(self, user_id: str, timeout_s: float) -> bool:
        try:
            if self.popular is not None:  # the fallback of last resort has a list before it is needed
                await asyncio.wait_for(self.popular.load(), timeout_s)
            rec = await self.recall.call(recall_pb2.RecallRequest(
                user_id=user_id, count=min(self.fc.candidates, 200), request_id="warmup"), timeout_s)
            ids = [c.item_id for c in rec.candidates]
            if ids:
                await self.ranking.call(ranking_pb2.RankRequest(user_id=user_id, item_ids=ids, request_id="warmup"), timeout_s)
                if self.attributes is not None and self.attributes.enabled:
                    await asyncio.wait_for(asyncio.to_thread(self.attributes.read, user_id, ids), timeout_s)
                await self.rerank.call(rerank_pb2.RerankRequest(
                    user_id=user_id, count=min(10, len(ids)), request_id="warmup",
                    candidates=[rerank_pb2.RerankCandidate(item_id=i, score=0.5) for i in ids]), timeout_s)
            return True
        except Exception as exc:  # noqa: BLE001 - serving starts anyway; the stage will degrade on its own
            self._warm_up_error = f"{type(exc).__name__}: {exc}"
            return False

    async def close(self, timeout_s: float | None = None) -> None:
        """Let the after-response tasks finish (bounded), cancel the rest."""
        await self.background.drain(timeout_s)
        await self.background.cancel()


def _more(ranked: Sequence[tuple[str, float, Any, float | None]]) -> list[feed_pb2.FeedItem]:
    out = []
    for item, score, channels, rs in ranked:
        fi = feed_pb2.FeedItem(item_id=item, score=score, recall_channels=channels, kind=common_pb2.ITEM_KIND_ORGANIC)
        if rs is not None:
            fi.ranking_score = rs
        out.append(fi)
    return out


__all__ = ["FALLBACK_MODEL", "FeedGateway", "FeedResult", "FeedUnavailable", "RERANK_POLICY_MODEL", "StageTimings",
           "degradation_code"]
