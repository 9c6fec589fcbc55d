"""Request validation that handlers can write as one-liners.

Handlers raise :class:`ValidationError`; the server interceptor turns it into
``INVALID_ARGUMENT`` with a message naming the field, so no handler needs to
know about status codes for bad input. Each helper returns the value it
checked, so ``user = require_non_empty(req.user_id, "user_id")`` reads well.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any, TypeVar

T = TypeVar("T")
N = TypeVar("N", int, float)
S = TypeVar("S", bound=Sized)


class ValidationError(ValueError):
    """A request field is invalid; ``field`` is its dotted path (e.g. ``"context.user_id"``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid request field {field!r}: {message}")
        self.field = field
        self.message = message


def require(condition: Any, field: str, message: str) -> None:
    """Raise ``ValidationError(field, message)`` unless ``condition`` is truthy."""
    if not condition:
        raise ValidationError(field, message)


def require_non_empty(value: T, field: str) -> T:
    """Reject ``None``, empty containers/strings and whitespace-only strings (proto3 sends "" for unset)."""
    if value is None:
        raise ValidationError(field, "is required")
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError(field, "must not be empty")
    elif isinstance(value, Sized) and len(value) == 0:
        raise ValidationError(field, "must not be empty")
    return value


def require_range(value: N, field: str, lo: N | None = None, hi: N | None = None) -> N:
    """Require ``lo <= value <= hi`` (either bound may be None); NaN is always rejected."""
    if isinstance(value, float) and math.isnan(value):
        raise ValidationError(field, "must be a number, got NaN")
    if lo is not None and value < lo:
        raise ValidationError(field, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValidationError(field, f"must be <= {hi}, got {value}")
    return value


def require_max_items(seq: S, field: str, limit: int) -> S:
    """Bound repeated fields (candidates, entities, events) so one request cannot monopolise a server."""
    n = len(seq)
    if n > limit:
        raise ValidationError(field, f"has {n} items, at most {limit} allowed")
    return seq
