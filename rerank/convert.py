"""Validation and conversion at the edges: ``RerankRequest`` -> :class:`RerankInput`, :class:`RerankResult` -> ``RerankResponse``.

The gRPC service and in-process callers (the feed gateway) go through the same
:func:`validate` (a proto request is converted and validated in one pass), so
both reject exactly the same inputs with a :class:`serving.ValidationError`
naming the field (INVALID_ARGUMENT over gRPC).

Request context: ``timestamp_ms`` sets the rules' clock unless it is 0 or more
than 5 minutes ahead of the server clock (common.proto); the attributes
``blocked_item_ids`` and ``blocked_authors`` (comma separated) feed the
blocked filter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from cascade.config import RerankConfig
from proto.cascade.v1 import common_pb2, rerank_pb2
from rerank.types import Candidate, ItemKind, RerankInput, RerankResult
from serving.validation import ValidationError

MAX_ID_BYTES = 128
CLOCK_SKEW_MS = 5 * 60 * 1000
BLOCKED_ITEMS_ATTR = "blocked_item_ids"
BLOCKED_AUTHORS_ATTR = "blocked_authors"

_ORGANIC_KINDS = (ItemKind.UNSPECIFIED, ItemKind.ORGANIC)
_INJECTION_KINDS = (ItemKind.AD, ItemKind.BOOSTED)


def _check_id(value: str, field: str) -> None:
    if not value:
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        raise ValidationError(field, f"is {len(value.encode())} bytes, at most {MAX_ID_BYTES} allowed")


def _kind_name(kind: int) -> str:
    return ItemKind(kind).name if kind in ItemKind._value2member_map_ else str(int(kind))


def _check_candidate(c: Candidate, field: str, injection: bool) -> None:
    _check_id(c.item_id, f"{field}.item_id")
    s = c.score
    if not (isinstance(s, (int, float)) and math.isfinite(s) and 0.0 <= s <= 1.0):
        raise ValidationError(f"{field}.score", f"must be a finite number in [0, 1], got {s!r}")
    if injection:
        if c.kind not in _INJECTION_KINDS:
            raise ValidationError(f"{field}.kind", f"an injection must be ITEM_KIND_AD or ITEM_KIND_BOOSTED, got {_kind_name(c.kind)}")
    elif c.kind not in _ORGANIC_KINDS:
        raise ValidationError(f"{field}.kind", f"a candidate must be ITEM_KIND_ORGANIC or unspecified, got {_kind_name(c.kind)}")
    if c.requested_position is not None and c.requested_position < 0:
        raise ValidationError(f"{field}.requested_position", f"must be >= 0, got {c.requested_position}")
    if c.published_at_ms < 0:
        raise ValidationError(f"{field}.published_at_ms", f"must be >= 0, got {c.published_at_ms}")


def validate(inp: RerankInput, settings: RerankConfig, max_request_items: int | None = None) -> RerankInput:
    """Check ``inp`` against rerank.proto's bounds; returns it. Raises ValidationError naming the field."""
    if not inp.user_id or not inp.user_id.strip():
        raise ValidationError("user_id", "must not be empty")
    _check_id(inp.user_id, "user_id")
    if not (1 <= inp.count <= settings.max_count):
        raise ValidationError("count", f"must be in [1, {settings.max_count}], got {inp.count}")
    max_c = settings.max_candidates if max_request_items is None else min(settings.max_candidates, max_request_items)
    if len(inp.candidates) > max_c:
        raise ValidationError("candidates", f"has {len(inp.candidates)} items, at most {max_c} allowed")
    if len(inp.injections) > settings.max_injections:
        raise ValidationError("injections", f"has {len(inp.injections)} items, at most {settings.max_injections} allowed")
    where: dict[str, str] = {}
    for group, items, injection in (("candidates", inp.candidates, False), ("injections", inp.injections, True)):
        for i, c in enumerate(items):
            field = f"{group}[{i}]"
            _check_candidate(c, field, injection)
            first = where.setdefault(c.item_id, field)
            if first != field:
                raise ValidationError(f"{field}.item_id", f"duplicate item id {c.item_id!r} (also {first}); ids must be unique across candidates and injections")
    return inp


_KINDS = {int(k): k for k in ItemKind}


def _candidate(m: Any) -> Candidate:
    # positional, in Candidate's field order; channels stay the request's repeated field (no copy)
    return Candidate(
        m.item_id, m.score, m.category, m.author, m.group_id, m.published_at_ms, _KINDS.get(m.kind, m.kind),
        m.requested_position if m.HasField("requested_position") else None, None, 0, m.channels,
    )


def _split_attr(value: str) -> frozenset[str]:
    return frozenset(p.strip() for p in value.split(",") if p.strip())


def request_now_ms(context: Any, server_now_ms: int) -> int:
    """The rules' clock: the client's timestamp unless unset or more than 5 minutes ahead (common.proto)."""
    ts = int(context.timestamp_ms) if context is not None else 0
    if ts <= 0 or ts > server_now_ms + CLOCK_SKEW_MS:
        return server_now_ms
    return ts


def from_proto(req: rerank_pb2.RerankRequest, settings: RerankConfig, server_now_ms: int,
               max_request_items: int | None = None) -> RerankInput:
    """Validate and convert a ``RerankRequest``."""
    # bounds first, before converting thousands of candidates of a request that is rejected anyway
    max_c = settings.max_candidates if max_request_items is None else min(settings.max_candidates, max_request_items)
    if len(req.candidates) > max_c:
        raise ValidationError("candidates", f"has {len(req.candidates)} items, at most {max_c} allowed")
    if len(req.injections) > settings.max_injections:
        raise ValidationError("injections", f"has {len(req.injections)} items, at most {settings.max_injections} allowed")
    attrs = req.context.attributes if req.HasField("context") else {}
    inp = RerankInput(
        user_id=req.user_id,
        count=req.count,
        candidates=[_candidate(m) for m in req.candidates],
        injections=[_candidate(m) for m in req.injections],
        now_ms=request_now_ms(req.context if req.HasField("context") else None, server_now_ms),
        blocked_item_ids=_split_attr(attrs.get(BLOCKED_ITEMS_ATTR, "")),
        blocked_authors=_split_attr(attrs.get(BLOCKED_AUTHORS_ATTR, "")),
        disabled_rules=frozenset(req.disabled_rules),
        request_id=req.request_id,
    )
    return validate(inp, settings, max_request_items)


def _channels(out: Any, channels: Iterable[Any]) -> None:
    for ch in channels:
        if isinstance(ch, common_pb2.ChannelScore):
            out.append(ch)
        else:
            name, score, rank = ch
            out.add(channel=name, score=score, rank=rank)


def result_to_proto(result: RerankResult) -> rerank_pb2.RerankResponse:
    resp = rerank_pb2.RerankResponse(policy_version=result.policy_version, degraded=result.degraded)
    for it in result.items:
        m = resp.items.add(item_id=it.item_id, position=it.position, final_score=it.final_score,
                           original_score=it.original_score, kind=int(it.kind))
        for r in it.reasons:
            m.reasons.add(rule=r.rule, explanation=r.explanation)
        if it.channels:
            _channels(m.channels, it.channels)
    for d in result.dropped:
        resp.dropped.add(item_id=d.item_id, reason=common_pb2.RerankReason(rule=d.reason.rule, explanation=d.reason.explanation))
    for g in result.degradations:
        resp.degraded_reasons.add(
            stage=common_pb2.STAGE_RERANK,
            code=common_pb2.DegradationCode.Value(f"DEGRADATION_CODE_{g.code}"),
            component=g.rule, fallback=g.fallback, message=g.message[:1024],
        )
    return resp


def to_proto_candidates(cands: Sequence[Candidate]) -> list[rerank_pb2.RerankCandidate]:
    """Candidates as proto messages (tests, benchmarks, the gateway building a request)."""
    out = []
    for c in cands:
        m = rerank_pb2.RerankCandidate(item_id=c.item_id, score=c.score, category=c.category, author=c.author,
                                       group_id=c.group_id, published_at_ms=c.published_at_ms, kind=int(c.kind))
        if c.requested_position is not None:
            m.requested_position = c.requested_position
        _channels(m.channels, c.channels)
        out.append(m)
    return out
