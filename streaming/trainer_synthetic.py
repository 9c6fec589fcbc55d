"""A synthetic world for the trainer's tests and benchmarks: users and items with hidden tastes, clicks drawn from them.

For any resolved feature set it produces what the real pipeline would carry:
served-feature records (:mod:`featurestore.served_log` format: one per
request, every candidate a row), the :class:`LabeledSample` of each impressed
item (label drawn from the hidden click probability), and plain-view rows for
the online store. Hidden tastes: each user has a segment, each item a category
and a quality; ``logit = base + affinity[segment, category] + quality`` -- so
a model needs a user x category cross to rank well. The first user-keyed
STRING feature shows the segment, the first item-keyed STRING feature the
category; other features are deterministic noise per entity; request features
come from the view's own function.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from featurestore.definitions import ValueType
from featurestore.served_log import FORMAT
from proto.cascade.v1 import common_pb2, events_pb2, records_pb2


class SyntheticWorld:
    """See the module docstring. `repo`: the feature repository; `feature_set`: a set name in it."""

    def __init__(self, repo: Any, feature_set: str, *, n_users: int = 200, n_items: int = 500, n_segments: int = 6,
                 base_logit: float = -1.5, seed: int = 0) -> None:
        self.repo = repo
        self.resolved = repo.resolve(feature_set)
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        self.users = [str(u) for u in range(1, n_users + 1)]
        self.items = [str(1000 + i) for i in range(n_items)]
        self.segment = rng.integers(0, n_segments, n_users)
        self.category = rng.integers(0, n_segments, n_items)
        self.quality = rng.normal(0.0, 0.5, n_items)
        self.affinity = rng.normal(0.0, 1.5, (n_segments, n_segments))
        self.base_logit = base_logit
        self._u = {u: i for i, u in enumerate(self.users)}
        self._i = {it: i for i, it in enumerate(self.items)}
        self.values: dict[str, list[Any]] = {}
        self.keyed_by: dict[str, str] = {}
        shown = {"user_id": False, "item_id": False}
        for f in self.resolved.features:
            if f.is_request:
                continue
            key = f.join_keys[0]
            n = n_users if key == "user_id" else n_items
            hidden = self.segment if key == "user_id" else self.category
            self.keyed_by[f.ref] = key
            if f.dtype is ValueType.STRING and not shown.get(key, True):
                shown[key] = True
                self.values[f.ref] = [f"{f.name}{h}" for h in hidden]
            else:
                self.values[f.ref] = [_noise(f.dtype, rng, self.items) for _ in range(n)]

    # ------------------------------------------------------------------ truth

    def click_probability(self, user: str, items: Sequence[str]) -> np.ndarray:
        u = self._u[user]
        idx = np.array([self._i[i] for i in items])
        logit = self.base_logit + self.affinity[self.segment[u], self.category[idx]] + self.quality[idx]
        return 1.0 / (1.0 + np.exp(-logit))

    # ------------------------------------------------------------------ records

    def served_record(self, user: str, items: Sequence[str], ts_ms: int, *, request_id: str | None = None,
                      served_feature_id: str | None = None) -> dict[str, Any]:
        """A served-feature record (format ``cascade.served_features.v1``) of one request."""
        from featurestore.client import request_feature_values

        rid = request_id or uuid.uuid4().hex
        k = len(items)
        values: dict[str, list[Any]] = {}
        request_views: dict[str, dict[str, Any]] = {}
        for f in self.resolved.features:
            if f.is_request:
                if f.view not in request_views:
                    request_views[f.view] = request_feature_values(self.repo.view(f.view), {"event_ts": ts_ms})
                values[f.ref] = [request_views[f.view][f.name]] * k
            elif self.keyed_by[f.ref] == "user_id":
                values[f.ref] = [self.values[f.ref][self._u[user]]] * k
            else:
                col = self.values[f.ref]
                values[f.ref] = [col[self._i[i]] for i in items]
        refs = list(self.resolved.refs)
        return {"format": FORMAT, "served_feature_id": served_feature_id or rid, "request_id": rid,
                "event_ts_ms": int(ts_ms), "feature_set": self.resolved.name, "feature_set_version": 1,
                "entity_keys": {"user_id": [user] * k, "item_id": list(items)}, "refs": refs, "values": values,
                "status": {r: [1] * k for r in refs}, "request_context": {"event_ts": int(ts_ms)}}

    def requests(self, n: int, *, items_per_request: int = 5, start_ms: int, step_ms: int = 10,
                 click_delay_ms: int = 1_000) -> Iterator[tuple[dict[str, Any], list[records_pb2.LabeledSample]]]:
        """`n` requests: each a served record and the labeled samples of its impressed items."""
        rng = self.rng
        for r in range(n):
            ts = start_ms + r * step_ms
            user = self.users[int(rng.integers(len(self.users)))]
            picked = rng.choice(len(self.items), size=items_per_request, replace=False)
            items = [self.items[int(j)] for j in picked]
            record = self.served_record(user, items, ts)
            clicks = rng.random(items_per_request) < self.click_probability(user, items)
            samples = [self.sample(record, pos, bool(c), click_ms=ts + click_delay_ms if c else None)
                       for pos, c in enumerate(clicks)]
            yield record, samples

    def sample(self, record: dict[str, Any], row: int, clicked: bool, *, click_ms: int | None = None,
               with_features: bool = True) -> records_pb2.LabeledSample:
        item = record["entity_keys"]["item_id"][row]
        rid = record["request_id"]
        s = records_pb2.LabeledSample(
            sample_id=f"{rid}:{item}", request_id=rid, user_id=record["entity_keys"]["user_id"][row], item_id=item,
            label=1.0 if clicked else 0.0, impression_timestamp_ms=int(record["event_ts_ms"]), position=row,
            model_version=common_pb2.ModelVersion(model_name="deepfm", version="v0", kind=common_pb2.MODEL_KIND_DEEPFM),
            joined_at_ms=int(record["event_ts_ms"]))
        if clicked:
            s.click_timestamp_ms = int(click_ms if click_ms is not None else record["event_ts_ms"])
            s.event_types.append(events_pb2.EVENT_TYPE_CLICK)
        if with_features:
            s.features.served_feature_id = record["served_feature_id"]
            s.features.item_id = item
            s.features.feature_set.name = self.resolved.name
            s.features.feature_set.version = 1
        return s

    # ------------------------------------------------------------------ online store

    def view_table(self, view: str, event_ts: Any) -> Any:
        """The rows of plain (non-windowed) view `view` for ``OnlineStore.write_rows``."""
        import pyarrow as pa

        from featurestore.served_log import ARROW_TYPES

        refs = [f for f in self.resolved.features if f.view == view]
        if not refs:
            raise KeyError(f"feature set {self.resolved.name!r} reads nothing of view {view!r}")
        key = self.keyed_by[refs[0].ref]
        keys = self.users if key == "user_id" else self.items
        cols: dict[str, Any] = {key: keys}
        for f in refs:
            cols[f.name] = pa.array(self.values[f.ref], type=ARROW_TYPES[f.dtype])
        cols["event_ts"] = pa.array([event_ts] * len(keys), type=pa.timestamp("us", "UTC"))
        return pa.table(cols)


def _noise(dtype: ValueType, rng: np.random.Generator, items: Sequence[str]) -> Any:
    if dtype is ValueType.STRING:
        return f"v{int(rng.integers(40))}"
    if dtype is ValueType.INT64:
        return int(rng.poisson(5.0))
    if dtype is ValueType.FLOAT64:
        return float(np.round(rng.normal(), 4))
    if dtype is ValueType.BOOL:
        return bool(rng.random() < 0.5)
    if dtype is ValueType.STRING_LIST:
        return [f"t{int(t)}" for t in rng.choice(20, size=int(rng.integers(0, 4)), replace=False)]
    if dtype is ValueType.INT64_LIST:
        return [int(items[int(j)]) for j in rng.integers(0, len(items), size=int(rng.integers(0, 6)))]
    if dtype is ValueType.FLOAT_LIST:
        return [float(x) for x in np.round(rng.normal(size=4), 4)]
    raise ValueError(f"no synthetic values for {dtype}")


__all__ = ["SyntheticWorld"]
