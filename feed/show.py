"""A served feed as text a person can read: items, scores, channels, reasons, models, degradation, timings."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proto.cascade.v1 import common_pb2, feed_pb2


def _enum(enum: Any, value: int, prefix: str) -> str:
    try:
        return enum.Name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def _channels(item: feed_pb2.FeedItem) -> str:
    return ", ".join(f"{c.channel}#{c.rank} {c.score:.3g}" for c in item.recall_channels) or "-"


def render(response: feed_pb2.GetFeedResponse, *, user_id: str = "", timings: dict[str, float] | None = None,
           extra: dict[str, Any] | None = None) -> str:
    """The feed, one line per item with its explanation, then models, experiment, degradation and timings."""
    at = datetime.fromtimestamp(response.served_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if response.served_at_ms else "?"
    exp = response.experiment
    lines = [
        f"feed for user {user_id or '?'}: {len(response.items)} items, request {response.request_id}, served {at} UTC"
        + (", DEGRADED" if response.degraded else ""),
        f"experiment: {exp.experiment or '(none)'} / bucket {exp.bucket or '?'}" + (" (overridden)" if exp.overridden else ""),
        "models: " + (", ".join(f"{m.model_name} {m.version} ({_enum(common_pb2.ModelKind, m.kind, 'MODEL_KIND_').lower()})"
                                for m in response.model_versions) or "(none)"),
    ]
    if response.served_feature_id:
        lines.append(f"served features: {response.served_feature_id}")
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    lines.append("")
    lines.append(f"{'pos':>3}  {'item':<12} {'score':>8} {'ranking':>8}  {'kind':<8} channels (name#rank score) | rerank reasons")
    for it in response.items:
        rs = f"{it.ranking_score:.4f}" if it.HasField("ranking_score") else "-"
        kind = _enum(common_pb2.ItemKind, it.kind, "ITEM_KIND_").lower()
        reasons = "; ".join(f"{r.rule}: {r.explanation}" for r in it.reasons)
        lines.append(f"{it.position:>3}  {it.item_id:<12} {it.score:>8.4f} {rs:>8}  {kind:<8} {_channels(it)}"
                     + (f" | {reasons}" if reasons else ""))
    if response.degraded_reasons:
        lines.append("")
        lines.append("degraded:")
        for r in response.degraded_reasons:
            stage = _enum(common_pb2.Stage, r.stage, "STAGE_").lower()
            code = _enum(common_pb2.DegradationCode, r.code, "DEGRADATION_CODE_").lower()
            where = f" [{r.component}]" if r.component else ""
            instead = f" -> served {r.fallback}" if r.fallback else ""
            lines.append(f"  {stage} {code}{where}{instead}: {r.message}")
    if timings:
        lines.append("")
        lines.append("timings: " + ", ".join(f"{k.removesuffix('_ms')} {v:.2f} ms" for k, v in timings.items()))
    return "\n".join(lines)


__all__ = ["render"]
