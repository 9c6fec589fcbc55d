"""Point-in-time training sets: labelled events x feature views, through `OfflineStore.get_training_set`.

Synthetic data (numpy, fixed seed), written as Parquet in a temporary directory
before the clock starts:

* labels: 10M (quick: 1M) events of 1M users x 100k items x 20 categories
  over 60 days, with a binary label;
* 5 feature views, 16.4M rows in all, history over 90 days (timestamps in
  whole seconds, so ties happen), each source split over 4 files:
  user_profile (user_id, 1.2M rows, no TTL), user_stats (user_id, 5M rows,
  TTL 30 d), user_category (user_id x category, 5M rows, TTL 30 d),
  item_stats (item_id, 5M rows, TTL 7 d), item_profile (item_id, 200k rows);
* a windowed view over 10M (quick: 2M) events of 100k users: count over
  1 h / 24 h / 7 d, sum and mean over 24 h / 7 d, last 10 items over 7 d,
  for 1M (quick: 200k) labels.

* a "dense" view: 5M rows over 10k users (quick: 2k), no TTL, for 1M (quick:
  200k) labels: hundreds of candidate rows per label.

Timed: the 5-view training set (labels already in memory as an Arrow table);
the 1M-label single-view case Feast's file offline store did in 4.0 s
(REFERENCES.md), with our ASOF join and with Feast's row_number design on the
same engine; the same two on the dense view (where the choice shows); and the
window aggregations and the tiles of the windowed view.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cascade.config import Config
from featurestore.definitions import (
    Aggregation,
    AggregationFunction,
    Entity,
    Feature,
    FeatureView,
    ParquetSource,
    ValueType,
    WindowedFeatureView,
)
from featurestore.offline import OfflineStore

FEAST_1M_1VIEW_S = 4.0  # REFERENCES.md: Feast's file offline store, 1M labels, one view
SEED = 20240101
T0_S = 1_700_000_000  # history starts here (2023-11-14)
DAY_S = 86_400
N_USERS, N_ITEMS, N_CATEGORIES = 1_000_000, 100_000, 20
FILES_PER_SOURCE = 4

USER = Entity("user", ("user_id",))
ITEM = Entity("item", ("item_id",))
CATEGORY = Entity("category", ("category",))


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.timestamp("us", tz="UTC"))


def _write(root: Path, name: str, table: pa.Table) -> str:
    """Write `table` as FILES_PER_SOURCE Parquet files under root/name/; return the glob."""
    (root / name).mkdir(parents=True)
    n = table.num_rows
    bounds = np.linspace(0, n, FILES_PER_SOURCE + 1).astype(int)
    for i in range(FILES_PER_SOURCE):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), root / name / f"part-{i:04d}.parquet",
                       row_group_size=1 << 20)
    return f"{name}/*.parquet"


def _history(rng: np.random.Generator, n: int, days: int = 90) -> np.ndarray:
    """Event times in whole seconds, mostly in time order (as logs are appended), some late."""
    ts = np.sort(rng.integers(T0_S, T0_S + days * DAY_S, n))
    late = rng.random(n) < 0.02
    ts[late] -= rng.integers(0, 3 * DAY_S, late.sum())
    return ts


def make_views(root: Path, rng: np.random.Generator) -> tuple[list[FeatureView], int]:
    specs: list[tuple[str, tuple[Entity, ...], int, timedelta | None, list[tuple[str, ValueType]]]] = [
        ("user_profile", (USER,), 1_200_000, None, [("age", ValueType.INT64), ("country", ValueType.INT64),
                                                   ("tenure", ValueType.FLOAT64)]),
        ("user_stats", (USER,), 5_000_000, timedelta(days=30), [("clicks_7d", ValueType.INT64),
                                                                ("ctr_7d", ValueType.FLOAT64),
                                                                ("dwell_7d", ValueType.FLOAT64)]),
        ("user_category", (USER, CATEGORY), 5_000_000, timedelta(days=30), [("cat_clicks", ValueType.INT64),
                                                                            ("cat_ctr", ValueType.FLOAT64)]),
        ("item_stats", (ITEM,), 5_000_000, timedelta(days=7), [("impressions", ValueType.INT64),
                                                               ("item_ctr", ValueType.FLOAT64),
                                                               ("price", ValueType.FLOAT64)]),
        ("item_profile", (ITEM,), 200_000, None, [("brand", ValueType.INT64), ("quality", ValueType.FLOAT64)]),
    ]
    views, total = [], 0
    for name, entities, rows, ttl, feats in specs:
        cols: dict[str, Any] = {}
        for e in entities:
            size = {"user_id": N_USERS, "item_id": N_ITEMS, "category": N_CATEGORIES}[e.join_keys[0]]
            cols[e.join_keys[0]] = rng.integers(0, size, rows)
        cols["event_ts"] = _ts(_history(rng, rows))
        for fname, dtype in feats:
            cols[fname] = rng.integers(0, 1000, rows) if dtype is ValueType.INT64 else rng.random(rows)
        path = _write(root, name, pa.table(cols))
        views.append(FeatureView(name, entities, ParquetSource(path), tuple(Feature(f, d) for f, d in feats), ttl=ttl))
        total += rows
    return views, total


def make_dense_view(root: Path, rng: np.random.Generator, rows: int, entities: int) -> FeatureView:
    """Long histories and no TTL: every label has hundreds of earlier rows (where a join + row_number blows up)."""
    path = _write(root, "dense", pa.table({"user_id": rng.integers(0, entities, rows), "event_ts": _ts(_history(rng, rows)),
                                           "x": rng.random(rows)}))
    return FeatureView("dense", (USER,), ParquetSource(path), (Feature("x", ValueType.FLOAT64),))


def make_labels(rng: np.random.Generator, n: int) -> pa.Table:
    return pa.table({
        "user_id": rng.integers(0, N_USERS, n),
        "item_id": rng.integers(0, N_ITEMS, n),
        "category": rng.integers(0, N_CATEGORIES, n),
        "event_ts": _ts(rng.integers(T0_S + 30 * DAY_S, T0_S + 90 * DAY_S, n)),
        "label": rng.integers(0, 2, n).astype(np.int8),
    })


def make_window_view(root: Path, rng: np.random.Generator, n_events: int) -> WindowedFeatureView:
    n_users = 100_000
    path = _write(root, "clicks", pa.table({
        "user_id": rng.integers(0, n_users, n_events),
        "event_ts": _ts(_history(rng, n_events, days=30)),
        "item_id": rng.integers(0, N_ITEMS, n_events),
        "dwell": rng.random(n_events) * 60,
    }))
    h, d = timedelta(hours=1), timedelta(days=1)
    return WindowedFeatureView("clicks", (USER,), ParquetSource(path), (
        Aggregation(AggregationFunction.COUNT, (h, d, 7 * d)),
        Aggregation(AggregationFunction.SUM, (d, 7 * d), column="dwell"),
        Aggregation(AggregationFunction.MEAN, (d, 7 * d), column="dwell"),
        Aggregation(AggregationFunction.LAST_N, (7 * d,), column="item_id", n=10),
    ))  # default hops: 1h by 5 min, 1d by 1h, 7d by 6h


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(quick: bool, config: Config) -> dict[str, Any]:
    n_labels = 1_000_000 if quick else 10_000_000
    n_window_events, n_window_labels = (2_000_000, 200_000) if quick else (10_000_000, 1_000_000)
    reps = 1 if quick else 3
    rng = np.random.default_rng(SEED)
    root = Path(tempfile.mkdtemp(prefix="bench-pit-join-"))
    try:
        _step(f"generating {n_labels:,} labels and 5 feature views under {root}")
        views, feature_rows = make_views(root, rng)
        labels = make_labels(rng, n_labels)
        window_view = make_window_view(root, rng, n_window_events)
        n_dense_labels, n_dense_entities = (200_000, 2_000) if quick else (1_000_000, 10_000)
        dense_view = make_dense_view(root, rng, 5_000_000, n_dense_entities)
        dense_labels = make_labels(rng, n_dense_labels).select(["user_id", "event_ts"])
        dense_labels = dense_labels.set_column(0, "user_id", pa.array(rng.integers(0, n_dense_entities, n_dense_labels)))
        window_labels = make_labels(rng, n_window_labels).select(["user_id", "event_ts", "label"])
        window_labels = window_labels.set_column(1, "event_ts", _ts(rng.integers(T0_S + 7 * DAY_S, T0_S + 30 * DAY_S,
                                                                                 n_window_labels)))
        with OfflineStore(root) as store:
            n_features = sum(len(v.features) for v in views)
            _step(f"training set: {n_labels:,} labels x 5 views ({feature_rows:,} feature rows, {n_features} features)")
            main_s, out = _timed(lambda: store.get_training_set(labels, views))
            assert out.num_rows == n_labels
            filled = {v.name: 1.0 - out.column(f"{v.name}__{v.features[0].name}").null_count / n_labels for v in views}
            _step(f"  {main_s:.1f} s")
            del out

            one = labels.slice(0, 1_000_000)
            stats_view = views[1]
            asof_runs, rn_runs = [], []
            for _ in range(reps):
                s, single = _timed(lambda: store.get_training_set(one, [stats_view]))
                asof_runs.append(s)
                s, single_rn = _timed(lambda: store.get_training_set(one, [stats_view], method="row_number"))
                rn_runs.append(s)
            assert single.equals(single_rn), "asof and row_number disagree"
            kept_without_feature = single.column("user_stats__ctr_7d").null_count
            asof_s, rn_s = statistics.median(asof_runs), statistics.median(rn_runs)
            _step(f"1M labels x 1 view: asof {asof_s:.2f} s, row_number {rn_s:.2f} s (Feast: {FEAST_1M_1VIEW_S} s)")

            dense_asof_s, d1 = _timed(lambda: store.get_training_set(dense_labels, [dense_view]))
            dense_rn_s, d2 = _timed(lambda: store.get_training_set(dense_labels, [dense_view], method="row_number"))
            assert d1.equals(d2), "asof and row_number disagree (dense)"
            _step(f"dense histories ({n_dense_labels:,} labels, 5M rows over {n_dense_entities:,} entities, no TTL): "
                  f"asof {dense_asof_s:.2f} s, row_number {dense_rn_s:.2f} s")

            win_s, wout = _timed(lambda: store.get_training_set(window_labels, [window_view]))
            assert wout.num_rows == n_window_labels
            _step(f"windows: {n_window_labels:,} labels over {n_window_events:,} events in {win_s:.1f} s")
            tiles_s, tiles = _timed(lambda: store.tiles(window_view))
            _step(f"tiles of {n_window_events:,} events: {tiles.num_rows:,} tiles in {tiles_s:.1f} s")
            ring_end = datetime.fromtimestamp(T0_S + 30 * DAY_S, tz=timezone.utc)
            ring_s, ring = _timed(lambda: store.tiles(window_view, end=ring_end, ring=True))
            _step(f"ring tiles as of the end (what materialization writes): {ring.num_rows:,} rows in {ring_s:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    return {
        "labels": n_labels,
        "feature_views": len(views),
        "feature_rows": feature_rows,
        "features": n_features,
        "training_set_seconds": round(main_s, 2),
        "training_set_rows_per_s": round(n_labels / main_s),
        "label_x_view_per_s": round(n_labels * len(views) / main_s),
        "goal_10m_x5_seconds": 60.0,
        "fill_rate_by_view": {k: round(v, 3) for k, v in filled.items()},
        "one_view_1m_asof_seconds": round(asof_s, 3),
        "one_view_1m_row_number_seconds": round(rn_s, 3),
        "feast_1m_1view_seconds": FEAST_1M_1VIEW_S,
        "asof_vs_feast_ratio": round(asof_s / FEAST_1M_1VIEW_S, 3),
        "speedup_vs_feast_x": round(FEAST_1M_1VIEW_S / asof_s, 1),
        "row_number_vs_asof_ratio": round(rn_s / asof_s, 2),
        "one_view_labels_kept_without_feature_rows": kept_without_feature,
        "dense_labels": n_dense_labels,
        "dense_rows_per_entity": 5_000_000 // n_dense_entities,
        "dense_asof_seconds": round(dense_asof_s, 2),
        "dense_row_number_seconds": round(dense_rn_s, 2),
        "dense_row_number_vs_asof_ratio": round(dense_rn_s / dense_asof_s, 1),
        "window_labels": n_window_labels,
        "window_events": n_window_events,
        "window_outputs": len(window_view.features),
        "windows_seconds": round(win_s, 2),
        "windows_rows_per_s": round(n_window_labels / win_s),
        "tiles_seconds": round(tiles_s, 2),
        "tiles": tiles.num_rows,
        "ring_tiles_seconds": round(ring_s, 2),
        "ring_tiles": ring.num_rows,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "method": [
            "OfflineStore.get_training_set, DuckDB in-process, threads = all cores",
            "one ASOF LEFT JOIN per feature view on (keys, order key <= label), TTL checked on the matched row",
            "order key = event_ts, then created ts, then source order (HUGEINT or STRUCT): deterministic ties",
            "labels in memory as Arrow; output = every label row, input order, NULLs when no feature row",
            f"1M x 1 view: median of {reps}; row_number = Feast's design (join + row_number) on the same engine",
            "windows: per-row RANGE frames over events+labels (count/sum/mean), ASOF on trailing lists (last-n); "
            "each window its default hop (1h by 5 min, 1d by 1h, 7d by 6h)",
            "tiles: every hop's tiles of all events plus the last-n rows; ring tiles: OfflineStore.tiles(ring=True) "
            "as of the end, what materialization writes",
            "synthetic data from numpy (seed fixed), timestamps in whole seconds (ties), 2% late rows",
        ],
    }
