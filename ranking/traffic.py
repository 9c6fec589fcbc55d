"""A/B traffic splits between two versions of a model, by a stable hash of the user id.

A user is in the *treatment* bucket of experiment ``e`` iff
``mmh3_32(f"{e}:{user_id}") / 2**32 < treatment_fraction``: the same user
always lands in the same bucket for the life of the experiment (on every
replica, in every process), renaming the experiment reshuffles users, and
raising the fraction only adds users to treatment (nobody flips back).

The split itself is stored in the model registry (:mod:`ranking.registry`),
so every replica serves the same one; the admin call is
``ModelAdminService.SetTrafficSplit``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mmh3

CONTROL = "control"
TREATMENT = "treatment"
DEFAULT = "default"

_EXPERIMENT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_EXPERIMENT_BYTES = 64


class InvalidSplit(ValueError):
    """A traffic split that cannot be applied; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"traffic split {field}: {message}")
        self.field = field
        self.message = message


def bucket_point(experiment: str, user_id: str) -> float:
    """The user's stable point in [0, 1) for `experiment`: murmur3-32 of ``"{experiment}:{user_id}"`` / 2**32."""
    return mmh3.hash(f"{experiment}:{user_id}", 0, signed=False) / 4294967296.0


@dataclass(frozen=True)
class TrafficSplit:
    """``treatment_fraction`` of users (by hash) get ``treatment_version``; the rest ``control_version`` (empty: the live one)."""

    experiment: str
    treatment_version: str
    treatment_fraction: float
    control_version: str = ""
    updated_at_ms: int = 0

    def validate(self) -> TrafficSplit:
        """Check the fields; returns self. Raises :class:`InvalidSplit`."""
        e = self.experiment
        if not e or len(e.encode()) > MAX_EXPERIMENT_BYTES or not _EXPERIMENT_RE.match(e):
            raise InvalidSplit("experiment", f"must be lower snake_case, 1 to {MAX_EXPERIMENT_BYTES} bytes, got {e!r}")
        if not self.treatment_version:
            raise InvalidSplit("treatment_version", "must not be empty")
        f = self.treatment_fraction
        if not isinstance(f, (int, float)) or math.isnan(f) or not 0.0 <= f <= 1.0:
            raise InvalidSplit("treatment_fraction", f"must be in [0, 1], got {f!r}")
        if self.control_version and self.control_version == self.treatment_version:
            raise InvalidSplit("control_version", "must differ from treatment_version")
        return self

    def bucket(self, user_id: str) -> str:
        """``"treatment"`` or ``"control"`` for this user."""
        if self.treatment_fraction <= 0.0:
            return CONTROL
        if self.treatment_fraction >= 1.0:
            return TREATMENT
        return TREATMENT if bucket_point(self.experiment, user_id) < self.treatment_fraction else CONTROL

    def stamped(self, at_ms: int | None = None) -> TrafficSplit:
        return TrafficSplit(self.experiment, self.treatment_version, float(self.treatment_fraction), self.control_version,
                            int(time.time() * 1000) if at_ms is None else at_ms)

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "control_version": self.control_version,
                "treatment_version": self.treatment_version, "treatment_fraction": self.treatment_fraction,
                "updated_at_ms": self.updated_at_ms}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrafficSplit:
        return cls(str(data["experiment"]), str(data["treatment_version"]), float(data["treatment_fraction"]),
                   str(data.get("control_version") or ""), int(data.get("updated_at_ms") or 0))


__all__ = ["CONTROL", "DEFAULT", "TREATMENT", "InvalidSplit", "TrafficSplit", "bucket_point"]
