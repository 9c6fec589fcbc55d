"""What the demo builds before it serves: MovieLens moved to "now", features, models, indexes.

Every step uses the stage's own command or job (the same code a user runs by
hand), against the demo's private directories (``var/demo``) and the stack the
demo started. Slow artifacts (the DeepFM, the two-tower index) are reused
while the shifted data they were trained on is less than ``DATA_MAX_AGE``
old; what lives in Redis is rebuilt each run (the embedded Redis starts empty).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cascade.config import REPO_ROOT, Config

DEMO_DIR = REPO_ROOT / "var" / "demo"
DATA_MAX_AGE = timedelta(hours=12)
MOVIELENS_VIEWS = ("user_profile", "item_profile", "user_activity", "item_popularity")
ONLINE_MODELS = ("ftrl_on", "ftrl_off")  # learning on / frozen after warm-up (see cascade/demo.py)


def demo_environment(root: Path = DEMO_DIR) -> dict[str, str]:
    """Configuration overrides of the demo (env form, so the processes it starts share them)."""
    return {
        "CASCADE__PATHS__VAR_DIR": str(root),
        "CASCADE__PATHS__DATA_DIR": str(root / "data"),
        "CASCADE__PATHS__ARTIFACTS_DIR": str(root / "artifacts"),
        "CASCADE__FEED__RECALL_ITEMS": "movielens/items.parquet",
        "CASCADE__FEED__RECALL_CATEGORY_COLUMN": "genres",
        "CASCADE__FEED__RECALL_EMBEDDING": "movielens",
        "CASCADE__FEED__ITEM_ATTRIBUTES": json.dumps({"category": "item_profile:genres"}),
        "CASCADE__FEED__BUCKET_RANKING": json.dumps({"treatment": ONLINE_MODELS[0], "control": ONLINE_MODELS[1]}),
        "CASCADE__FEED__DEADLINE_MS": "250",
        # Of 1,682 movies, 500 candidates: half the CPU of 1,000, and still enough left after the seen filter
        # for users who ask for a page every few seconds (300 ran dry: rerank's INSUFFICIENT_RESULTS).
        "CASCADE__FEED__CANDIDATES": "500",
        "CASCADE__RECALL__TOTAL_CANDIDATES": "500",
        # Everything shares two cores with the learning loop: channels get more than the 3-6 ms of a serving box.
        "CASCADE__RECALL__CHANNEL_TIMEOUTS_MS": json.dumps({"embedding": 15.0, "item2item": 15.0, "popular": 10.0, "fresh": 10.0}),
        "CASCADE__STREAMING__HASH_BITS": "18",  # 262k weights: plenty for 2 x 30 users, cheap to publish and load
        "CASCADE__STREAMING__FTRL_ALPHA": "0.2",
        # Few clicks per user: a strong L1 (1.0) keeps every user x genre weight at exactly zero.
        "CASCADE__STREAMING__FTRL_L1": "0.05",
        "CASCADE__STREAMING__FTRL_L2": "0.1",
        "CASCADE__STREAMING__ATTRIBUTION_WINDOW_S": "20",
        "CASCADE__STREAMING__PUBLISH_EVERY_S": "5",
        "CASCADE__STREAMING__CHECKPOINT_EVERY_S": "5",
        "CASCADE__STREAMING__JOINER_IDLE_ADVANCE_S": "3",
        "CASCADE__STREAMING__JOINER_ALLOWED_LATENESS_S": "3",
    }


@dataclass
class DemoWorld:
    """What the phases after the build need."""

    items_path: Path
    genres: list[str]
    item_categories: dict[str, np.ndarray]  # item id -> genre multi-hot
    deepfm_version: str
    n_users: int
    timings: dict[str, float] = field(default_factory=dict)


def _timed(world_timings: dict[str, float], name: str, say: Callable[[str], None], fn: Callable[[], object]) -> object:
    t0 = time.perf_counter()
    out = fn()
    world_timings[name] = round(time.perf_counter() - t0, 2)
    say(f"  {name}: {world_timings[name]:.1f}s")
    return out


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"demo build step failed: {what} (exit {rc})")


def _data_is_fresh(marker: Path) -> bool:
    try:
        end = datetime.fromisoformat(json.loads(marker.read_text())["end_at"])
    except (OSError, ValueError, KeyError):
        return False
    return datetime.now(timezone.utc) - end < DATA_MAX_AGE


def _live_version(config: Config, name: str) -> str | None:
    from ranking.registry import ModelRegistry

    record = ModelRegistry.from_config(config).live(name)
    return record.version if record is not None else None


def item_genres(items_path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Genre vocabulary and each item's multi-hot (the simulated users' categories)."""
    table = pq.read_table(items_path, columns=["item_id", "genres"]).to_pydict()
    genres = sorted({g for gs in table["genres"] for g in gs})
    index = {g: i for i, g in enumerate(genres)}
    cats: dict[str, np.ndarray] = {}
    for item, gs in zip(table["item_id"], table["genres"]):
        v = np.zeros(len(genres))
        v[[index[g] for g in gs]] = 1.0
        cats[str(item)] = v
    return genres, cats


def build_world(config: Config, redis_url: str, *, smoke: bool, say: Callable[[str], None]) -> DemoWorld:
    """Data, features, models and indexes for the demo (see the module docstring)."""
    from featurestore import cli as features_cli
    from featurestore.data.movielens import load_movielens
    from featurestore.materialize import cli_main as materialize_main
    from ranking import cli as ranking_cli
    from recall import cli as recall_cli

    timings: dict[str, float] = {}
    var = config.paths.var_dir
    var.mkdir(parents=True, exist_ok=True)
    marker = var / "movielens_shift.json"
    fresh = _data_is_fresh(marker)
    if not fresh:
        end_at = datetime.now(timezone.utc) - timedelta(minutes=1)
        say(f"loading MovieLens-100K, shifted so its last rating is at {end_at:%Y-%m-%d %H:%M} UTC")
        paths = _timed(timings, "load MovieLens", say, lambda: load_movielens(config.offline_root, force=True, end_at=end_at))
        marker.write_text(json.dumps({"end_at": end_at.isoformat()}))
        for name in ("deepfm", *ONLINE_MODELS):  # trained on the old shift: retrain
            shutil.rmtree(config.paths.artifacts_dir / config.ranking.artifacts_subdir / name, ignore_errors=True)
        shutil.rmtree(config.paths.artifacts_dir / config.recall.artifacts_subdir, ignore_errors=True)
    else:
        say("MovieLens-100K already loaded (shifted less than 12 h ago)")
        paths = load_movielens(config.offline_root)
    say(f"  {paths.n_users} users, {paths.n_items} movies, {paths.n_ratings} ratings")
    quiet = ["--quiet"]
    _check(_timed(timings, "apply feature definitions", say, lambda: features_cli.main(["apply"])), "features apply")
    (var / "materialize.json").unlink(missing_ok=True)  # the embedded Redis starts empty: materialize everything
    _check(_timed(timings, "materialize features to Redis", say,
                  lambda: materialize_main([*MOVIELENS_VIEWS, "--redis-url", redis_url, "--no-progress"])), "materialize")
    version = _live_version(config, "deepfm")
    if version is None:
        epochs = "1" if smoke else "3"
        _check(_timed(timings, f"train DeepFM ({epochs} epochs)", say,
                      lambda: ranking_cli.main(["train", "--model", "deepfm", "--epochs", epochs, "--publish", "--promote", *quiet])),
               "rank train")
        version = _live_version(config, "deepfm")
    else:
        say(f"DeepFM {version} already trained on this data")
    if version is None:
        raise RuntimeError("demo: no live DeepFM version after training")
    current = config.paths.artifacts_dir / config.recall.artifacts_subdir / "movielens" / "CURRENT"
    if not current.exists():
        epochs = "2" if smoke else "5"
        _check(_timed(timings, f"train two-tower embeddings + FAISS index ({epochs} epochs)", say,
                      lambda: recall_cli.main(["build", "--epochs", epochs, *quiet])), "recall build")
    else:
        say("two-tower index already built on this data")
    _check(_timed(timings, "co-visitation (DuckDB) -> Redis", say,
                  lambda: recall_cli.main(["covisit", "--redis-url", redis_url])), "recall covisit")
    _check(_timed(timings, "trending counts -> Redis", say,
                  lambda: recall_cli.main(["trending", "--redis-url", redis_url])), "recall trending")
    sys.stdout.flush()
    genres, cats = item_genres(paths.items)
    return DemoWorld(items_path=paths.items, genres=genres, item_categories=cats, deepfm_version=version,
                     n_users=paths.n_users, timings=timings)


def reset_online_learning(config: Config) -> None:
    """Each demo run starts its online models from scratch (its Kafka is memory-only, its Redis empty)."""
    root = config.paths.artifacts_dir / config.ranking.artifacts_subdir
    for name in ONLINE_MODELS:
        shutil.rmtree(root / name, ignore_errors=True)
        shutil.rmtree(config.paths.var_dir / config.streaming.checkpoint_subdir / f"trainer-{name}", ignore_errors=True)


def child_environment(base: dict[str, str], redis_url: str, kafka: str, **extra: str) -> dict[str, str]:
    """Environment of a process the demo starts: its config, its stack, and `extra` overrides."""
    env = dict(os.environ)
    env.update(base)
    env.update({"REDIS_URL": redis_url, "KAFKA_BOOTSTRAP_SERVERS": kafka, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env
