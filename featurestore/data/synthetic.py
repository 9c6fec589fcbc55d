"""A synthetic feed at any size: users, items and click events with latent tastes.

:func:`generate` writes ``<root>/synthetic_<tag>/`` (root: the offline store's
root by default) holding:

``users.parquet``
    user_id int64 (1..n_users), taste list<float32> (the latent vector, unit norm;
    only when ``spec.write_latents``), home_category int64, event_ts timestamp[us, UTC]
    (= start minus one second: a profile is valid for every event).
``items.parquet``
    item_id int64 (1..n_items), category int64 (0..n_categories-1), author int64
    (0..n_authors-1), group_id int64 (near-duplicate group: the item_id of the group's
    original, its own id for a singleton), published_ts timestamp[us, UTC],
    popularity float64 (the popularity prior: the probability the power law gives
    the item; sums to 1), latent list<float32> (only when ``spec.write_latents``),
    event_ts timestamp[us, UTC] (= published_ts: an item's row exists from publication).
``events.parquet``
    user_id int64, item_id int64, event_type string (always ``"click"``),
    event_ts timestamp[us, UTC], value float64 (dwell seconds, longer when the
    user's taste matches the item). Sorted by event_ts (then user_id, item_id
    within a row group); row groups of ``spec.chunk_events`` rows. There are no
    impression rows: negatives for ranking are to be sampled (e.g. by the items'
    popularity prior, among items published by the event's time).
``spec.json``
    The spec; written last, so its presence means the directory is complete.

The model (all vectorised numpy, deterministic given the spec):

* Category centroids are random unit vectors; category sizes follow a mild power law.
* An item's latent vector is its category centroid plus noise; each author writes in
  one category. About ``duplicate_fraction`` of the items are in near-duplicate pairs
  (a copy with almost the same vector, same category and author, published up to two
  days after its original).
* Item popularity is a power law with exponent ``zipf_a`` over a random ranking of
  the items. ``fresh_fraction`` of the items are published during the span (the rest
  in the ``days`` before it), and no item is clicked before its publication.
* A user's taste mixes a home category and two secondary ones (weights 0.6/0.25/0.15)
  plus noise; user activity is itself a power law (``user_activity_a``).
* Each event picks a user by activity, draws ``candidates`` items: part from the global
  popularity law and part (``taste_share``) from the popularity law restricted to one
  of the user's categories, drops those not yet published, and chooses one with
  probability softmax(``affinity_scale`` * user·item) (Gumbel-max).
* Event times increase through the span with a daily cycle, rate ~ 1 + daily_amplitude ·
  cos(2π (hour - 20) / 24) (peak 20:00 UTC, trough 08:00: 4x lower at the default 0.6),
  weekends 15% quieter and a random level per day.

Speed and memory (2 cores): 1M users, 1M items, 10M events take about 40 s and peak
at about 1 GB, independent of n_events (one chunk of events is in memory at a time).
The output depends on ``chunk_events`` (each chunk has its own random stream).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from featurestore.data._io import atomic_path, parquet_rows, write_table_atomic

TS_TYPE = pa.timestamp("us", tz="UTC")
_US = 1_000_000
_DAY_US = 86_400 * _US
_SUB_BLOCK = 65_536  # events scored at once: bounds the (block, candidates, dim) gather


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic dataset; equal specs give equal data."""

    n_users: int
    n_items: int
    n_events: int
    n_categories: int = 50
    n_authors: int | None = None  # default: one author per 50 items (at least one per category)
    latent_dim: int = 16
    zipf_a: float = 1.1  # item popularity: P(rank r) ~ r^-zipf_a
    start: str = "2026-01-01"  # UTC midnight of the first day (ISO date or datetime)
    days: int = 30
    seed: int = 0
    user_activity_a: float = 0.8  # user activity: P(rank r) ~ r^-a
    category_a: float = 0.7  # category sizes: P(category rank c) ~ c^-a
    fresh_fraction: float = 0.3  # items published during the span (the rest: the `days` before)
    duplicate_fraction: float = 0.05  # items in a near-duplicate group with another item
    candidates: int = 16  # items drawn per event before the taste choice
    taste_share: float = 0.25  # of those, the share drawn from the user's categories
    affinity_scale: float = 3.0  # softmax inverse temperature on user·item (both unit norm)
    daily_amplitude: float = 0.6  # daily cycle: rate ~ 1 + amplitude * cos(2π (hour - 20) / 24)
    write_latents: bool = True  # write users' taste and items' latent vectors
    chunk_events: int = 1_000_000  # events per generated chunk and Parquet row group

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_events", "n_categories", "latent_dim", "days", "candidates", "chunk_events"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"SyntheticSpec.{name} must be positive, got {getattr(self, name)}")
        if self.n_authors is not None and self.n_authors <= 0:
            raise ValueError("SyntheticSpec.n_authors must be positive")
        if not 0.0 <= self.fresh_fraction < 1.0:
            raise ValueError("SyntheticSpec.fresh_fraction must be in [0, 1): events need items published before the span")
        for name in ("duplicate_fraction", "taste_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticSpec.{name} must be in [0, 1]")
        if not 0.0 <= self.daily_amplitude < 1.0:
            raise ValueError("SyntheticSpec.daily_amplitude must be in [0, 1)")
        for name in ("zipf_a", "user_activity_a", "category_a"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0")
        _ = self.start_datetime  # validates the date

    @property
    def authors(self) -> int:
        return self.n_authors if self.n_authors is not None else max(self.n_categories, self.n_items // 50, 1)

    @property
    def start_datetime(self) -> datetime:
        dt = datetime.fromisoformat(self.start)
        return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)

    @property
    def start_us(self) -> int:
        return (self.start_datetime - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * _DAY_US

    @property
    def tag(self) -> str:
        """Directory suffix: the sizes and seed, plus a hash of any other non-default field."""
        base = f"u{self.n_users}_i{self.n_items}_e{self.n_events}_s{self.seed}"
        sizes = {"n_users", "n_items", "n_events", "seed"}
        extra = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in sizes and getattr(self, f.name) != f.default
        }
        if not extra:
            return base
        digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{base}_{digest}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`generate` put a dataset, with its row counts."""

    root: Path  # <root>/synthetic_<tag>
    users: Path
    items: Path
    events: Path
    manifest: Path
    n_users: int
    n_items: int
    n_events: int
    spec: SyntheticSpec


# --------------------------------------------------------------------------- samplers


def powerlaw_sample(u: np.ndarray, n: np.ndarray | int, a: float) -> np.ndarray:
    """Ranks in [0, n) with P(rank r) ~ (r+1)^-a, by inverting the continuous law on [1, n+1).

    `u` is uniform in [0, 1); `n` may be an array (one population size per draw).
    O(1) per draw, vectorised; :func:`powerlaw_mass` gives each rank's exact probability.
    """
    n = np.asarray(n, dtype=np.float64)
    if abs(1.0 - a) < 1e-9:
        x = np.exp(u * np.log1p(n))
    else:
        b = 1.0 - a
        x = (1.0 + u * ((n + 1.0) ** b - 1.0)) ** (1.0 / b)
    r = np.floor(x).astype(np.int64) - 1
    return np.clip(r, 0, np.maximum(n.astype(np.int64) - 1, 0))


def powerlaw_mass(n: int, a: float) -> np.ndarray:
    """Probability of each rank 0..n-1 under :func:`powerlaw_sample` (sums to 1)."""
    x = np.arange(1, n + 2, dtype=np.float64)
    if abs(1.0 - a) < 1e-9:
        cdf = np.log(x) / np.log(n + 1.0)
    else:
        b = 1.0 - a
        cdf = (x**b - 1.0) / ((n + 1.0) ** b - 1.0)
    return np.diff(cdf)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32)


def _rng(spec: SyntheticSpec, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *stream]))


def _list_array(vectors: np.ndarray) -> pa.Array:
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32()))


def _ts(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype=np.int64), type=pa.int64()).cast(TS_TYPE)


# --------------------------------------------------------------------------- the world


@dataclass
class _World:
    centroids: np.ndarray  # (C, d)
    category_p: np.ndarray  # (C,)
    # items (index = item_id - 1)
    item_cat: np.ndarray
    item_author: np.ndarray
    item_group: np.ndarray  # item ids
    item_vec: np.ndarray  # (n_items, d) float32
    item_rank: np.ndarray  # global popularity rank of each item
    item_at_rank: np.ndarray  # item index at each rank
    item_prior: np.ndarray
    published_us: np.ndarray
    cat_items: np.ndarray  # item indices ordered by (category, rank)
    cat_offset: np.ndarray  # (C,)
    cat_count: np.ndarray  # (C,)
    back_items: np.ndarray  # items published by the span's start, by rank
    # users (index = user_id - 1)
    user_cats: np.ndarray  # (n_users, 3): home, secondary, secondary
    user_vec: np.ndarray
    user_at_rank: np.ndarray


_USER_CAT_WEIGHTS = np.array([0.6, 0.25, 0.15])


def _build_world(spec: SyntheticSpec) -> _World:
    C, d, n_items, n_users = spec.n_categories, spec.latent_dim, spec.n_items, spec.n_users
    rng = _rng(spec, 0)
    centroids = _unit(rng.standard_normal((C, d)))
    category_p = powerlaw_mass(C, spec.category_a)[rng.permutation(C)]  # category ids not ordered by size

    # Authors: each writes in one category; every category has one when there are enough authors.
    n_authors = spec.authors
    author_cat = rng.choice(C, size=n_authors, p=category_p)
    if n_authors >= C:
        author_cat[:C] = np.arange(C)
    authors_by_cat = np.argsort(author_cat, kind="stable")
    a_count = np.bincount(author_cat, minlength=C)
    a_offset = np.cumsum(a_count) - a_count

    item_cat = rng.choice(C, size=n_items, p=category_p)
    pick = np.floor(rng.random(n_items) * a_count[item_cat]).astype(np.int64)
    has_author = a_count[item_cat] > 0
    item_author = np.where(
        has_author,
        authors_by_cat[np.minimum(a_offset[item_cat] + pick, n_authors - 1)],
        rng.integers(0, n_authors, size=n_items),
    ).astype(np.int64)
    item_vec = _unit(centroids[item_cat] + rng.standard_normal((n_items, d)).astype(np.float32) * (0.6 / math.sqrt(d)))

    span_us = spec.days * _DAY_US
    fresh = rng.random(n_items) < spec.fresh_fraction
    offset = np.floor(rng.random(n_items) * span_us).astype(np.int64)
    published_us = np.where(fresh, spec.start_us + offset, spec.start_us - offset)

    # Near-duplicate pairs: a copy of an original (same category and author, almost the same vector, later).
    item_group = np.arange(1, n_items + 1, dtype=np.int64)
    n_dup = int(round(spec.duplicate_fraction * n_items / 2))
    if n_dup > 0 and n_items >= 2:
        n_dup = min(n_dup, n_items // 2)
        is_dup = np.zeros(n_items, dtype=bool)
        dups = rng.choice(n_items, size=n_dup, replace=False)
        is_dup[dups] = True
        originals = np.flatnonzero(~is_dup)
        src = originals[rng.integers(0, originals.size, size=n_dup)]
        item_cat[dups] = item_cat[src]
        item_author[dups] = item_author[src]
        item_vec[dups] = _unit(item_vec[src] + rng.standard_normal((n_dup, d)).astype(np.float32) * (0.05 / math.sqrt(d)))
        item_group[dups] = src + 1
        delay = np.floor(rng.random(n_dup) * 2 * _DAY_US).astype(np.int64)
        published_us[dups] = np.minimum(published_us[src] + delay, spec.end_us - _US)

    item_rank = rng.permutation(n_items)
    item_at_rank = np.argsort(item_rank)
    item_prior = powerlaw_mass(n_items, spec.zipf_a)[item_rank]

    cat_items = np.lexsort((item_rank, item_cat))
    cat_count = np.bincount(item_cat, minlength=C)
    cat_offset = np.cumsum(cat_count) - cat_count
    if not np.any(published_us <= spec.start_us):  # tiny catalogues: keep one item clickable from the start
        published_us[item_at_rank[0]] = spec.start_us - _US
    back_items = item_at_rank[published_us[item_at_rank] <= spec.start_us]

    rng_u = _rng(spec, 1)
    home = rng_u.choice(C, size=n_users, p=category_p)
    sec1 = rng_u.choice(C, size=n_users, p=category_p)
    if C > 1:
        clash = sec1 == home
        sec1[clash] = (home[clash] + 1 + rng_u.integers(0, C - 1, size=int(clash.sum()))) % C
    sec2 = rng_u.choice(C, size=n_users, p=category_p)
    user_cats = np.stack([home, sec1, sec2], axis=1).astype(np.int64)
    mix = np.einsum("j,ujd->ud", _USER_CAT_WEIGHTS, centroids[user_cats])
    user_vec = _unit(mix + rng_u.standard_normal((n_users, d)) * (0.5 / math.sqrt(d)))
    user_at_rank = rng_u.permutation(n_users)

    return _World(
        centroids=centroids,
        category_p=category_p,
        item_cat=item_cat.astype(np.int64),
        item_author=item_author,
        item_group=item_group,
        item_vec=item_vec,
        item_rank=item_rank,
        item_at_rank=item_at_rank,
        item_prior=item_prior,
        published_us=published_us,
        cat_items=cat_items,
        cat_offset=cat_offset,
        cat_count=cat_count,
        back_items=back_items,
        user_cats=user_cats,
        user_vec=user_vec,
        user_at_rank=user_at_rank,
    )


def _time_curve(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative share of events, µs offset from start) on a one-minute grid over the span."""
    rng = _rng(spec, 3)
    minutes = np.arange(spec.days * 1440 + 1, dtype=np.float64)
    hour = (minutes / 60.0) % 24.0
    day = np.minimum((minutes // 1440).astype(np.int64), spec.days - 1)
    weekday = (spec.start_datetime.weekday() + day) % 7
    day_level = np.exp(rng.normal(0.0, 0.15, size=spec.days))[day]
    weekly = np.where(weekday >= 5, 0.85, 1.0)
    rate = day_level * weekly * (1.0 + spec.daily_amplitude * np.cos(2 * np.pi * (hour - 20.0) / 24.0))
    cdf = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) / 2.0)])
    cdf /= cdf[-1]
    return cdf, minutes * 60.0 * _US


def _event_chunk(spec: SyntheticSpec, w: _World, curve: tuple[np.ndarray, np.ndarray], k: int, lo: int, hi: int) -> pa.Table:
    rng = _rng(spec, 2, k)
    m = hi - lo
    n_items = spec.n_items
    # Times: stratified quantiles (i + U) / N are increasing, so chunks come out in time order.
    q = (np.arange(lo, hi, dtype=np.float64) + rng.random(m)) / spec.n_events
    t_us = spec.start_us + np.interp(q, *curve).astype(np.int64)

    users = w.user_at_rank[powerlaw_sample(rng.random(m), spec.n_users, spec.user_activity_a)]
    k_taste = int(round(spec.candidates * spec.taste_share))
    k_pop = spec.candidates - k_taste

    cand = np.empty((m, spec.candidates), dtype=np.int64)
    cand[:, :k_pop] = w.item_at_rank[powerlaw_sample(rng.random((m, k_pop)), n_items, spec.zipf_a)]
    if k_taste:
        which = np.searchsorted(np.cumsum(_USER_CAT_WEIGHTS), rng.random((m, k_taste)) * _USER_CAT_WEIGHTS.sum(), side="right")
        cats = w.user_cats[users[:, None], np.minimum(which, 2)]
        counts = w.cat_count[cats]
        within = powerlaw_sample(rng.random((m, k_taste)), counts, spec.zipf_a)
        fallback = w.item_at_rank[powerlaw_sample(rng.random((m, k_taste)), n_items, spec.zipf_a)]
        cand[:, k_pop:] = np.where(counts > 0, w.cat_items[np.minimum(w.cat_offset[cats] + within, n_items - 1)], fallback)

    gumbel_u = rng.random((m, spec.candidates), dtype=np.float32)
    back_u = rng.random(m)
    noise = rng.standard_normal(m)

    chosen = np.empty(m, dtype=np.int64)
    affinity = np.empty(m, dtype=np.float32)
    with np.errstate(divide="ignore"):
        gumbel = -np.log(-np.log(gumbel_u))
    for b in range(0, m, _SUB_BLOCK):
        sl = slice(b, min(b + _SUB_BLOCK, m))
        c = cand[sl]
        aff = np.einsum("bkd,bd->bk", w.item_vec[c], w.user_vec[users[sl]])
        logits = spec.affinity_scale * aff + gumbel[sl]
        logits[w.published_us[c] > t_us[sl, None]] = -np.inf
        j = np.argmax(logits, axis=1)
        rows = np.arange(c.shape[0])
        chosen[sl] = c[rows, j]
        affinity[sl] = aff[rows, j]
        none = ~np.isfinite(logits[rows, j])
        if none.any():  # every candidate unpublished: fall back to the back catalogue's popularity law
            idx = np.flatnonzero(none) + b
            pick = w.back_items[powerlaw_sample(back_u[idx], w.back_items.size, spec.zipf_a)]
            chosen[idx] = pick
            affinity[idx] = np.einsum("bd,bd->b", w.item_vec[pick], w.user_vec[users[idx]])

    value = np.round(np.exp(np.log(30.0) + 1.5 * affinity + 0.5 * noise), 3)
    user_id = users + 1
    item_id = chosen + 1
    order = np.lexsort((item_id, user_id, t_us))
    return pa.table(
        {
            "user_id": pa.array(user_id[order]),
            "item_id": pa.array(item_id[order]),
            "event_type": pa.repeat("click", m).cast(pa.string()),
            "event_ts": _ts(t_us[order]),
            "value": pa.array(value[order], type=pa.float64()),
        },
        schema=EVENTS_SCHEMA,
    )


EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_type", pa.string()),
        ("event_ts", TS_TYPE),
        ("value", pa.float64()),
    ]
)


def users_schema(write_latents: bool = True) -> pa.Schema:
    fields = [("user_id", pa.int64())]
    if write_latents:
        fields.append(("taste", pa.list_(pa.float32())))
    fields += [("home_category", pa.int64()), ("event_ts", TS_TYPE)]
    return pa.schema(fields)


def items_schema(write_latents: bool = True) -> pa.Schema:
    fields = [
        ("item_id", pa.int64()),
        ("category", pa.int64()),
        ("author", pa.int64()),
        ("group_id", pa.int64()),
        ("published_ts", TS_TYPE),
        ("popularity", pa.float64()),
    ]
    if write_latents:
        fields.append(("latent", pa.list_(pa.float32())))
    fields.append(("event_ts", TS_TYPE))
    return pa.schema(fields)


def _users_table(spec: SyntheticSpec, w: _World) -> pa.Table:
    cols: dict[str, Any] = {"user_id": pa.array(np.arange(1, spec.n_users + 1, dtype=np.int64))}
    if spec.write_latents:
        cols["taste"] = _list_array(w.user_vec)
    cols["home_category"] = pa.array(w.user_cats[:, 0])
    cols["event_ts"] = _ts(np.full(spec.n_users, spec.start_us - _US, dtype=np.int64))
    return pa.table(cols, schema=users_schema(spec.write_latents))


def _items_table(spec: SyntheticSpec, w: _World) -> pa.Table:
    cols: dict[str, Any] = {
        "item_id": pa.array(np.arange(1, spec.n_items + 1, dtype=np.int64)),
        "category": pa.array(w.item_cat),
        "author": pa.array(w.item_author),
        "group_id": pa.array(w.item_group),
        "published_ts": _ts(w.published_us),
        "popularity": pa.array(w.item_prior),
    }
    if spec.write_latents:
        cols["latent"] = _list_array(w.item_vec)
    cols["event_ts"] = _ts(w.published_us)
    return pa.table(cols, schema=items_schema(spec.write_latents))


def _default_root() -> Path:
    from cascade.config import get_config

    return get_config().offline_root


def _paths(out: Path, spec: SyntheticSpec) -> SyntheticPaths:
    users, items, events = out / "users.parquet", out / "items.parquet", out / "events.parquet"
    return SyntheticPaths(
        root=out,
        users=users,
        items=items,
        events=events,
        manifest=out / "spec.json",
        n_users=parquet_rows(users),
        n_items=parquet_rows(items),
        n_events=parquet_rows(events),
        spec=spec,
    )


def dataset_dir(spec: SyntheticSpec, root: Path | None = None) -> Path:
    """``<root>/synthetic_<tag>``, where :func:`generate` writes `spec`'s data."""
    return (Path(root) if root is not None else _default_root()) / f"synthetic_{spec.tag}"


ACTIVE_LINK = "synthetic"


def activate(paths: "SyntheticPaths") -> Path:
    """Point ``<root>/synthetic`` (what `config/features.py` reads) at this dataset, atomically."""
    link = paths.root.parent / ACTIVE_LINK
    tmp = link.with_name(f".{ACTIVE_LINK}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(paths.root.name, tmp)
    os.replace(tmp, link)
    return link


def active_dataset(root: Path | None = None) -> Path | None:
    """The dataset directory ``<root>/synthetic`` points at, or None."""
    link = (Path(root) if root is not None else _default_root()) / ACTIVE_LINK
    return link.resolve() if link.exists() else None


def generate(spec: SyntheticSpec, root: Path | None = None, progress: bool = True, force: bool = False,
             activate_it: bool = True) -> SyntheticPaths:
    """Generate `spec`'s dataset under ``<root>/synthetic_<tag>/`` (root: the offline store's root).

    Skipped when the directory already holds a complete dataset of the same spec
    (its ``spec.json``), unless `force`. Files are written under temporary names
    and renamed; ``spec.json`` goes last. Memory stays bounded by the catalogue
    (items and users) plus one chunk of events. With `activate_it`, the
    dataset becomes the active one (``<root>/synthetic``) once complete.
    """
    out = dataset_dir(spec, root)
    manifest = out / "spec.json"
    if not force and manifest.is_file() and all((out / f).is_file() for f in ("users.parquet", "items.parquet", "events.parquet")):
        try:
            if json.loads(manifest.read_text()) == spec.to_dict():
                paths = _paths(out, spec)
                if activate_it:
                    activate(paths)
                return paths
        except (OSError, ValueError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)

    world = _build_world(spec)
    write_table_atomic(_users_table(spec, world), out / "users.parquet")
    write_table_atomic(_items_table(spec, world), out / "items.parquet")

    curve = _time_curve(spec)
    with atomic_path(out / "events.parquet") as tmp, pq.ParquetWriter(tmp, EVENTS_SCHEMA) as writer, tqdm(
        total=spec.n_events, unit="ev", unit_scale=True, desc=f"synthetic {spec.tag}", disable=not progress
    ) as bar:
        for k, lo in enumerate(range(0, spec.n_events, spec.chunk_events)):
            hi = min(lo + spec.chunk_events, spec.n_events)
            writer.write_table(_event_chunk(spec, world, curve, k, lo, hi), row_group_size=spec.chunk_events)
            bar.update(hi - lo)

    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    paths = _paths(out, spec)
    if activate_it:
        activate(paths)
    return paths
