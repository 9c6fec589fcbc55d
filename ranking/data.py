"""Training data: MovieLens-100K ratings as point-in-time-correct, temporally split training sets.

Labels are the ratings themselves: ``label = rating >= 4`` for the (user, item)
at the rating's time. Features come from the offline store
(``OfflineStore.get_training_set``) as of **1 microsecond before** each
rating: a user rates many movies within the same second, and the window
aggregations (counts, means, last-20 items) at the rating's own timestamp would
include that very rating -- and its label. Request features (hour, weekday)
are computed from the rating's own time (the label table's ``event_ts``); the
store joins on ``feature_ts``.

Splits: :func:`featurestore.data.temporal_split` on ``event_ts`` (80/10/10 by
default): every validation row is later than every training row, every test
row later than every validation row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.data.movielens import load_movielens, temporal_split

FEATURE_TS = "feature_ts"
LABEL = "label"
RICH_COLUMN = "user_activity__rating_count_30d"  # ratings in the 30-day window before the label


@dataclass
class Splits:
    train: pa.Table
    valid: pa.Table
    test: pa.Table
    feature_set: str
    fingerprint: str

    def sizes(self) -> dict[str, int]:
        return {"train": self.train.num_rows, "valid": self.valid.num_rows, "test": self.test.num_rows}


def movielens_labels(offline_root: Path, *, max_rows: int | None = None, min_rating: float = 4.0) -> pa.Table:
    """user_id, item_id, event_ts (the rating's time), feature_ts (1 us before), label (rating >= 4)."""
    paths = load_movielens(offline_root)
    ratings = pq.read_table(paths.ratings, columns=["user_id", "item_id", "rating", "event_ts"])
    if max_rows is not None and ratings.num_rows > max_rows:
        # an evenly spaced sample over time keeps the temporal structure
        idx = np.linspace(0, ratings.num_rows - 1, max_rows).astype(np.int64)
        ratings = ratings.take(pa.array(idx))
    ts = ratings["event_ts"]
    feature_ts = pc.subtract(ts.cast(pa.int64()), 1).cast(ts.type)
    return pa.table({
        "user_id": ratings["user_id"],
        "item_id": ratings["item_id"],
        "event_ts": ts,
        FEATURE_TS: feature_ts,
        LABEL: pc.greater_equal(ratings["rating"], min_rating),
    })


def build_splits(feature_set: str, *, config: Any = None, repo: Any = None, max_rows: int | None = None,
                 fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), offline_root: Path | None = None) -> Splits:
    """The feature set's training set over MovieLens-100K ratings, split by time."""
    from featurestore.offline import OfflineStore
    from featurestore.repository import get_repo

    if config is None:
        from cascade.config import get_config

        config = get_config()
    repo = repo or get_repo(config.features.definitions)
    resolved = repo.resolve(feature_set)
    root = Path(offline_root) if offline_root is not None else config.offline_root
    labels = movielens_labels(root, max_rows=max_rows)
    with OfflineStore(root, threads=2) as store:
        table = store.get_training_set(labels, repo.feature_set(feature_set), repo.views, timestamp_field=FEATURE_TS)
    train, valid, test = temporal_split(table, fractions, timestamp_field="event_ts")
    return Splits(train, valid, test, resolved.name, resolved.fingerprint)


def labels_of(table: pa.Table) -> np.ndarray:
    return np.asarray(table[LABEL].to_numpy(zero_copy_only=False), dtype=np.float32)


def rich_mask(table: pa.Table, min_ratings: int) -> np.ndarray | None:
    """Rows whose user had at least `min_ratings` ratings in the 30-day window before the label (None if unknown)."""
    if RICH_COLUMN not in table.column_names:
        return None
    counts = np.asarray(pc.fill_null(table[RICH_COLUMN], 0).to_numpy(zero_copy_only=False))
    return counts >= min_ratings


__all__ = ["FEATURE_TS", "LABEL", "RICH_COLUMN", "Splits", "build_splits", "labels_of", "movielens_labels", "rich_mask"]
