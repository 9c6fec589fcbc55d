"""GetFeedRequest validation, exactly as feed.proto and common.proto state the bounds.

Every violation is a :class:`serving.ValidationError` naming the field
(INVALID_ARGUMENT over gRPC), raised before any stage is called:

* ``user_id``: 1 to 128 bytes, not only whitespace;
* ``count``: in [1, ``feed.max_count``] (feed.proto: [1, 100]);
* ``request_id`` (when set): 1 to 64 bytes of ``[A-Za-z0-9._:-]``;
* ``exclude_item_ids``: at most 1000, each 1 to 128 bytes;
* ``context``: ``page_index >= 0``; ``device_id`` and ``session_id`` at most
  128 bytes, ``app_version`` and ``surface`` at most 64; at most 32
  ``attributes``, keys 1 to 64 bytes, values at most 256;
* ``experiment_overrides``: ``bucket`` "control" or "treatment";
  ``ranking_model_version`` 1 to 128 bytes; ``recall_quotas`` values in
  [0, 5000] (names are checked by recall, whose INVALID_ARGUMENT the gateway
  passes on); ``disabled_rerank_rules`` unchecked (unknown names are ignored).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from feed.experiments import BUCKETS
from proto.cascade.v1 import feed_pb2
from serving.validation import ValidationError

MAX_ID_BYTES = 128
MAX_REQUEST_ID_BYTES = 64
MAX_EXCLUDE = 1000
MAX_QUOTA = 5000
MAX_ATTRIBUTES = 32
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
DEFAULT_SURFACE = "home_feed"


def _nbytes(value: str) -> int:
    return len(value) if value.isascii() else len(value.encode())


def _id(value: str, field_name: str, hi: int = MAX_ID_BYTES) -> str:
    if not value or not value.strip():
        raise ValidationError(field_name, "must not be empty")
    n = _nbytes(value)
    if n > hi:
        raise ValidationError(field_name, f"is {n} bytes, at most {hi} allowed")
    return value


def _at_most(value: str, field_name: str, hi: int) -> None:
    n = _nbytes(value)
    if n > hi:
        raise ValidationError(field_name, f"is {n} bytes, at most {hi} allowed")


@dataclass(frozen=True)
class FeedRequest:
    """A validated GetFeedRequest (the proto is kept for the fields passed on unchanged)."""

    proto: feed_pb2.GetFeedRequest
    user_id: str
    count: int
    request_id: str | None
    exclude: frozenset[str]
    surface: str
    bucket: str | None = None
    model_version: str | None = None
    recall_quotas: dict[str, int] = field(default_factory=dict)
    disabled_rules: tuple[str, ...] = ()

    @property
    def overridden(self) -> bool:
        """Any override set (feed.proto: such responses report ExperimentAssignment.overridden)."""
        return (self.bucket is not None or self.model_version is not None or bool(self.recall_quotas)
                or bool(self.disabled_rules))


def validate_request(req: feed_pb2.GetFeedRequest, max_count: int = 100) -> FeedRequest:
    """Check `req` against feed.proto's bounds; raises ValidationError naming the first bad field."""
    user_id = _id(req.user_id, "user_id")
    if not 1 <= req.count <= max_count:
        raise ValidationError("count", f"must be in [1, {max_count}], got {req.count}")
    request_id = None
    if req.HasField("request_id"):
        rid = req.request_id
        if not rid:
            raise ValidationError("request_id", "must be 1 to 64 bytes when set, got an empty string")
        _at_most(rid, "request_id", MAX_REQUEST_ID_BYTES)
        if not _REQUEST_ID_RE.match(rid):
            raise ValidationError("request_id", f"may only hold [A-Za-z0-9._:-], got {rid!r}")
        request_id = rid
    excl = req.exclude_item_ids
    if len(excl) > MAX_EXCLUDE:
        raise ValidationError("exclude_item_ids", f"has {len(excl)} items, at most {MAX_EXCLUDE} allowed")
    for i, item in enumerate(excl):
        if not item:
            raise ValidationError(f"exclude_item_ids[{i}]", "must not be empty")
        if len(item) > MAX_ID_BYTES // 4:
            _at_most(item, f"exclude_item_ids[{i}]", MAX_ID_BYTES)
    ctx = req.context
    if ctx.page_index < 0:
        raise ValidationError("context.page_index", f"must be >= 0, got {ctx.page_index}")
    for name, hi in (("device_id", 128), ("session_id", 128), ("app_version", 64), ("surface", 64)):
        _at_most(getattr(ctx, name), f"context.{name}", hi)
    if len(ctx.attributes) > MAX_ATTRIBUTES:
        raise ValidationError("context.attributes", f"has {len(ctx.attributes)} entries, at most {MAX_ATTRIBUTES} allowed")
    for key, value in ctx.attributes.items():
        if not key:
            raise ValidationError("context.attributes", "keys must not be empty")
        _at_most(key, f"context.attributes[{key[:64]!r}]", 64)
        _at_most(value, f"context.attributes[{key!r}]", 256)
    bucket = model_version = None
    quotas: dict[str, int] = {}
    rules: tuple[str, ...] = ()
    if req.HasField("experiment_overrides"):
        ov = req.experiment_overrides
        if ov.HasField("bucket"):
            if ov.bucket not in BUCKETS:
                raise ValidationError("experiment_overrides.bucket", f"must be one of {', '.join(BUCKETS)}, got {ov.bucket!r}")
            bucket = ov.bucket
        if ov.HasField("ranking_model_version"):
            model_version = _id(ov.ranking_model_version, "experiment_overrides.ranking_model_version")
        for name, q in ov.recall_quotas.items():
            where = f"experiment_overrides.recall_quotas[{name!r}]"
            if not name:
                raise ValidationError(where, "channel name must not be empty")
            if not 0 <= q <= MAX_QUOTA:
                raise ValidationError(where, f"must be in [0, {MAX_QUOTA}], got {q}")
            quotas[name] = int(q)
        rules = tuple(ov.disabled_rerank_rules)
    return FeedRequest(req, user_id, int(req.count), request_id, frozenset(excl), ctx.surface or DEFAULT_SURFACE,
                       bucket, model_version, quotas, rules)


__all__ = ["DEFAULT_SURFACE", "FeedRequest", "validate_request"]
