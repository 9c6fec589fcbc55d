"""MovieLens moved to "now" for a live demo keeps every relative time."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.data.movielens import load_movielens


def test_end_at_moves_the_newest_rating_and_keeps_the_gaps(tmp_path) -> None:
    plain = load_movielens(tmp_path / "plain")
    end = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    moved = load_movielens(tmp_path / "moved", end_at=end)
    a = pq.read_table(plain.ratings)
    b = pq.read_table(moved.ratings)
    assert b.num_rows == a.num_rows
    assert pc.max(b["event_ts"]).as_py() == end
    gaps_a = pc.subtract(a["event_ts"].cast("int64"), pc.min(a["event_ts"]).cast("int64"))
    gaps_b = pc.subtract(b["event_ts"].cast("int64"), pc.min(b["event_ts"]).cast("int64"))
    assert gaps_a.equals(gaps_b)
    users = pq.read_table(moved.users)
    assert pc.max(users["event_ts"]).as_py() < pc.min(b["event_ts"]).as_py()
