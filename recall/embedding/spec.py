"""What the two towers read, per dataset, and how feature values become embedding rows.

The user tower reads *online* features only (the same ``"view:feature"``
references `FeatureClient.get_online_features` serves and the offline store
reconstructs point-in-time for training), so the query vector computed at
request time is the one the model was trained on:

* ``user_features`` -- categorical profile features, one hashed embedding each;
* ``history_feature`` -- the last-N list of the user's recent items (most recent
  first), pooled from the item tower's own id embeddings with learned position
  weights: a new click changes the list online and therefore the next query vector.

The item tower reads the item id and the item view's side features (offline, at
index build time). Values are hashed (:func:`bucket`), so a value never seen in
training still encodes (to an untrained bucket) instead of failing.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TowerSpec:
    """The feature-store inputs of the two towers for one dataset."""

    dataset: str
    events_view: str  # a WindowedFeatureView whose source holds the interactions (user_id, item_id, event_ts)
    user_features: tuple[str, ...]  # categorical "view:feature" refs of the user entity
    history_feature: str  # "view:feature" of the recent-items list (most recent first)
    item_view: str  # FeatureView of the item entity (side features for the item tower)
    item_features: tuple[str, ...]  # feature names of item_view (scalars or lists, hashed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TowerSpec:
        return cls(
            dataset=d["dataset"], events_view=d["events_view"], user_features=tuple(d["user_features"]),
            history_feature=d["history_feature"], item_view=d["item_view"], item_features=tuple(d["item_features"]),
        )

    @property
    def online_features(self) -> tuple[str, ...]:
        """Every user feature the query vector needs at request time (profile refs, then the history list)."""
        return (*self.user_features, self.history_feature)


DATASETS: dict[str, TowerSpec] = {
    "movielens": TowerSpec(
        dataset="movielens",
        events_view="user_activity",
        user_features=("user_profile:age", "user_profile:gender", "user_profile:occupation", "user_profile:zip_prefix"),
        history_feature="user_activity:item_id_last20_30d",
        item_view="item_profile",
        item_features=("genres", "release_year"),
    ),
    "synthetic": TowerSpec(
        dataset="synthetic",
        events_view="syn_user_activity",
        user_features=("syn_user_profile:home_category",),
        history_feature="syn_user_activity:item_id_last50_30d",
        item_view="syn_item_profile",
        item_features=("category", "author"),
    ),
}


def tower_spec(dataset: str) -> TowerSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}") from None


# ----------------------------------------------------------------------------- hashing


def _canonical(value: Any) -> str | None:
    """One string per value, equal for the offline (Arrow) and online (Redis) representations."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def bucket(ref: str, value: Any, buckets: int) -> int:
    """The hashed bucket of one scalar value of feature `ref`, in [1, buckets); 0 means missing."""
    s = _canonical(value)
    if s is None:
        return 0
    return 1 + zlib.crc32(f"{ref}={s}".encode()) % (buckets - 1)


def value_buckets(ref: str, value: Any, buckets: int) -> list[int]:
    """Buckets of a scalar or list value (a list hashes each element; missing elements are dropped)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        out = [bucket(ref, v, buckets) for v in value]
        return [b for b in out if b]
    b = bucket(ref, value, buckets)
    return [b] if b else []


def user_feature_rows(refs: tuple[str, ...], rows: Iterable[Mapping[str, Any]], buckets: int) -> np.ndarray:
    """(n, len(refs)) int64 rows of the user-feature table: feature j's bucket b is row j * buckets + b."""
    out = [[j * buckets + bucket(ref, row.get(ref), buckets) for j, ref in enumerate(refs)] for row in rows]
    return np.asarray(out, dtype=np.int64).reshape(-1, len(refs))


__all__ = ["DATASETS", "TowerSpec", "bucket", "tower_spec", "user_feature_rows", "value_buckets"]
