"""Raw per-request samples: what a worker records and the parent merges.

Workers ship every measured request (not pre-aggregated histograms) so the
merged percentiles are exactly those of the pooled samples, whatever the
number of processes; at 29 bytes a request a 10-minute run at 5,000 req/s is
~90 MB, acceptable for a load tool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

OK = 0
DROPPED = -1
"""Client-side: the request was due but max in-flight was reached, so it was not sent (counted, never silent)."""
CLIENT_ERROR = -2
"""Client-side: the call raised something other than a gRPC error (a bug in a request factory, say)."""

_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
_NAMES[DROPPED] = "DROPPED"
_NAMES[CLIENT_ERROR] = "CLIENT_ERROR"
_CODES = {name: code for code, name in _NAMES.items()}


def code_name(code: int) -> str:
    """``0 -> "OK"``, ``14 -> "UNAVAILABLE"``, ``-1 -> "DROPPED"``."""
    return _NAMES.get(int(code), f"CODE_{int(code)}")


def code_value(name: str) -> int:
    """Inverse of :func:`code_name`."""
    return _CODES[name]


@dataclass
class Samples:
    """Column arrays, one row per request scheduled inside the measured window.

    ``sched_s``: scheduled send time, seconds since the window opened (after warm-up);
    ``latency_s``: answer time minus *scheduled* time (NaN for dropped requests);
    ``lag_s``: actual minus scheduled send time (how far the generator itself fell behind);
    ``code``: gRPC status code value, or DROPPED / CLIENT_ERROR;
    ``degraded`` / ``items``: GetFeedResponse.degraded and len(items) (False / 0 for errors);
    ``worker``: index of the process that sent it.
    """

    sched_s: np.ndarray
    latency_s: np.ndarray
    lag_s: np.ndarray
    code: np.ndarray
    degraded: np.ndarray
    items: np.ndarray
    worker: np.ndarray

    def __len__(self) -> int:
        return int(self.sched_s.size)

    @classmethod
    def empty(cls) -> Samples:
        return cls.from_columns([], [], [], [], [], [], [])

    @classmethod
    def from_columns(cls, sched_s: Any, latency_s: Any, lag_s: Any, code: Any, degraded: Any, items: Any,
                     worker: Any) -> Samples:
        """From sequences, numpy arrays or ``array.array`` columns; ``worker`` may be one int for all rows."""
        n = len(sched_s)
        workers = np.full(n, worker, dtype=np.int16) if isinstance(worker, int) else np.asarray(worker, dtype=np.int16)
        out = cls(
            sched_s=np.asarray(sched_s, dtype=np.float64),
            latency_s=np.asarray(latency_s, dtype=np.float64),
            lag_s=np.asarray(lag_s, dtype=np.float32),
            code=np.asarray(code, dtype=np.int16),
            degraded=np.asarray(degraded, dtype=bool),
            items=np.asarray(items, dtype=np.int32),
            worker=workers,
        )
        sizes = {a.size for a in (out.latency_s, out.lag_s, out.code, out.degraded, out.items, out.worker)}
        if sizes != {n}:
            raise ValueError(f"sample columns differ in length: {sorted(sizes | {n})}")
        return out

    @property
    def ok(self) -> np.ndarray:
        return self.code == OK

    @property
    def answered(self) -> np.ndarray:
        """Requests that reached the server and got a status back (OK or a gRPC error)."""
        return self.code >= 0

    def code_counts(self) -> dict[str, int]:
        """Requests per outcome name: gRPC status codes (OK included) and CLIENT_ERROR; drops are counted apart."""
        return count_codes(self.code[self.code != DROPPED])


def count_codes(codes: np.ndarray) -> dict[str, int]:
    """``{code name: occurrences}`` of an array of code values."""
    values, counts = np.unique(codes, return_counts=True)
    return {code_name(c): int(n) for c, n in zip(values, counts)}


def merge(parts: Iterable[Samples]) -> Samples:
    """One Samples holding every row of ``parts`` (the per-process results of one run)."""
    parts = list(parts)
    if not parts:
        return Samples.empty()
    return Samples(**{name: np.concatenate([getattr(p, name) for p in parts])
                      for name in Samples.__dataclass_fields__})
