"""Recall quality on MovieLens-100K: hit rate and recall@K per channel and merged, against popularity.

Protocol (global temporal split 80/10/10, `featurestore.data.temporal_split`):

* **validation**: tables built from *train* as of the validation start, users
  evaluated on the items they rate in *valid*; **test**: built from train +
  valid as of the test start, evaluated on *test*. Nothing evaluated precedes
  what it was built from, for any user.
* Ground truth per user: the items rated in the evaluation period that the
  user had not rated before. Every user rating anything in the period counts
  (cold users too: channels that cannot serve them score zero for them).
* The query is what serving builds: ``recent_items`` = the user's last 20
  distinct items within 30 days before the cut (``user_activity:item_id_last20_30d``),
  ``now_ms`` = the cut. Items the user rated before are passed as ``exclude``.
* Channels are the real ones on an embedded Redis: item2item (co-visitation
  built with DuckDB from the history, published to Redis), popular (trending
  sets bootstrapped from the history; categories = genres, preferred from the
  recent items), fresh (an item's "publication" = its first rating, MovieLens
  has no dates), and embedding when its artifacts can be trained here
  (recall.embedding). Each channel alone is asked for K + |seen| items and
  scored on its first K unseen ones; *merged* is `RecallMerger` with count K.
* **Popularity baseline**: all-time rating counts of the history, top K unseen.
* Metrics at K = 50, 100, 500: hit rate (share of users with at least one
  truth item in the K) and recall (mean over users of |hits| / |truth|).

Tuning is done on the validation split only (co-visitation window,
half-life and gap, trending half-life, category boost, the merge quotas); the
test split is evaluated once with the chosen settings, and once with the
configured defaults for comparison.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cascade.config import Config
from recall.categories import ItemCategories
from recall.channel import ChannelResult, RecallQuery
from recall.covisit import CovisitSpec, build_and_publish
from recall.merge import RecallMerger

KS = (50, 100, 500)
RECENT_N = 20
RECENT_DAYS = 30
_DAY_MS = 86_400_000


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    name: str
    history: pa.Table
    target: pa.Table
    cut_ms: int
    users: list[int] = field(default_factory=list)
    truth: dict[int, set[int]] = field(default_factory=dict)
    seen: dict[int, np.ndarray] = field(default_factory=dict)
    recent: dict[int, list[int]] = field(default_factory=dict)
    popularity: np.ndarray | None = None  # items by all-time count, descending
    profiles: dict[int, dict[str, Any]] = field(default_factory=dict)  # user_profile features (what serving reads)

    def query(self, user: int) -> RecallQuery:
        return RecallQuery(user_id=user, now_ms=self.cut_ms, recent_items=tuple(self.recent.get(user, ())),
                           user_features=self.profiles.get(user, {}))


def _ms(col: pa.ChunkedArray) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy() // 1000


def make_split(name: str, history: pa.Table, target: pa.Table) -> Split:
    cut = int(_ms(target["event_ts"]).min())
    s = Split(name, history, target, cut)
    hu, hi, ht = history["user_id"].to_numpy(), history["item_id"].to_numpy(), _ms(history["event_ts"])
    order = np.lexsort((hi, -ht, hu))  # per user, newest first
    hu, hi, ht = hu[order], hi[order], ht[order]
    bounds = np.flatnonzero(np.diff(hu)) + 1
    for u_idx in np.split(np.arange(hu.size), bounds):
        if not u_idx.size:
            continue
        u = int(hu[u_idx[0]])
        s.seen[u] = np.unique(hi[u_idx])
        recent: list[int] = []
        for item, t in zip(hi[u_idx].tolist(), ht[u_idx].tolist()):
            if t < cut - RECENT_DAYS * _DAY_MS:
                break
            if item not in recent:
                recent.append(item)
                if len(recent) >= RECENT_N:
                    break
        s.recent[u] = recent
    tu, ti = target["user_id"].to_numpy(), target["item_id"].to_numpy()
    for u, i in zip(tu.tolist(), ti.tolist()):
        s.truth.setdefault(u, set()).add(i)
    for u in list(s.truth):
        seen = s.seen.get(u)
        if seen is not None:
            s.truth[u] -= set(seen.tolist())
        if not s.truth[u]:
            del s.truth[u]
    s.users = sorted(s.truth)
    counts = pc.value_counts(history["item_id"]).to_pylist()
    counts.sort(key=lambda d: (-d["counts"], d["values"]))
    s.popularity = np.array([d["values"] for d in counts], dtype=np.int64)
    return s


def _profiles(users: pa.Table) -> dict[int, dict[str, Any]]:
    """The user_profile features the service would read (config/features.py: zip_prefix = first ZIP character)."""
    out: dict[int, dict[str, Any]] = {}
    for row in users.to_pylist():
        out[int(row["user_id"])] = {
            "user_profile:age": row["age"], "user_profile:gender": row["gender"],
            "user_profile:occupation": row["occupation"], "user_profile:zip_prefix": (row["zip_code"] or "")[:1] or None,
        }
    return out


def metrics(lists: Mapping[int, np.ndarray], split: Split, ks: Sequence[int] = KS) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        hits = recall = 0.0
        for u in split.users:
            got = lists.get(u)
            truth = split.truth[u]
            n = len(truth.intersection(got[:k].tolist())) if got is not None and len(got) else 0
            hits += n > 0
            recall += n / len(truth)
        out[f"hit@{k}"] = round(hits / len(split.users), 4)
        out[f"recall@{k}"] = round(recall / len(split.users), 4)
    return out


def unseen(items: np.ndarray, split: Split, user: int) -> np.ndarray:
    block = [split.seen.get(user, np.empty(0, np.int64)), np.asarray(split.recent.get(user, []), np.int64)]
    return items[~np.isin(items, np.concatenate(block))]


# ----------------------------------------------------------------------------- channels on Redis


@dataclass(frozen=True)
class Settings:
    covisit_window_hours: float | None
    covisit_half_life_days: float | None
    covisit_max_gap: int
    trending_half_life_hours: float
    category_boost: float
    weights: tuple[tuple[str, float], ...]
    quotas: tuple[tuple[str, int], ...]

    def short(self) -> dict[str, Any]:
        return {"covisit_window_hours": self.covisit_window_hours, "covisit_half_life_days": self.covisit_half_life_days,
                "covisit_max_gap": self.covisit_max_gap, "trending_half_life_hours": self.trending_half_life_hours,
                "popular_category_boost": self.category_boost, "channel_weights": dict(self.weights),
                "channel_quotas": dict(self.quotas)}


def default_settings(config: Config) -> Settings:
    rc = config.recall
    return Settings(rc.covisit_window_hours, rc.covisit_half_life_days, rc.covisit_max_gap, rc.trending_half_life_hours,
                    rc.popular_category_boost, tuple(rc.channel_weights.items()), tuple(rc.channel_quotas.items()))


class Bench:
    """Redis tables for one split, the channels reading them, and their cached answers."""

    def __init__(self, config: Config, redis_client: Any, redis_url: str, items: pa.Table, categories: ItemCategories) -> None:
        self.config = config
        self.redis = redis_client
        self.redis_url = redis_url
        self.items = items
        self.categories = categories
        self._n = 0
        self.embedding: Any = None  # (split name -> channel) when the embedding channel can be built

    def namespace(self) -> str:
        self._n += 1
        return f"benchrecall{self._n}"

    def publish_covisit(self, split: Split, st: Settings) -> str:
        ns = self.namespace()
        spec = CovisitSpec.from_config(self.config.recall, window_hours=st.covisit_window_hours,
                                       half_life_days=st.covisit_half_life_days, max_gap=st.covisit_max_gap)
        build_and_publish(self.redis, ns, split.history, spec, as_of=split.cut_ms)
        return ns

    def publish_trending(self, split: Split, st: Settings) -> str:
        from recall.trending import TrendingStore

        ns = self.namespace()
        rc = self.config.recall
        TrendingStore(self.redis, ns, half_life_hours=st.trending_half_life_hours, event_weights=rc.popular_event_weights,
                      max_items=rc.popular_max_items, max_items_per_category=rc.popular_max_items_per_category,
                      categories=self.categories).bootstrap(split.history, as_of=split.cut_ms)
        return ns

    def publish_fresh(self, split: Split) -> str:
        from recall.fresh import FreshIndex

        ns = self.namespace()
        first = split.history.group_by("item_id").aggregate([("event_ts", "min")]).rename_columns(["item_id", "published_ts"])
        FreshIndex(self.redis, ns, max_age_hours=self.config.recall.fresh_max_age_hours,
                   categories=self.categories).bootstrap(first, split.cut_ms)
        return ns

    async def run_channel(self, make: Any, split: Split, kmax: int) -> dict[int, ChannelResult]:
        from recall.redis_io import async_redis

        client = async_redis(self.redis_url, self.config.redis)
        try:
            ch = make(client)
            out: dict[int, ChannelResult] = {}
            for u in split.users:
                q = split.query(u)
                applicable = getattr(ch, "applicable", None)
                if applicable is not None and not applicable(q):
                    out[u] = ChannelResult.empty()
                    continue
                k = kmax + len(split.seen.get(u, ())) + len(q.recent_items)
                out[u] = await ch.recall(q, k)
            return out
        finally:
            await client.aclose()

    def answers(self, split: Split, st: Settings, kmax: int, which: Sequence[str] = ("item2item", "popular", "fresh")
                ) -> dict[str, dict[int, ChannelResult]]:
        from recall.channels.fresh import FreshChannel
        from recall.channels.item2item import Item2ItemChannel
        from recall.channels.popular import PopularChannel

        rc = self.config.recall
        out: dict[str, dict[int, ChannelResult]] = {}
        if "item2item" in which:
            ns = self.publish_covisit(split, st)
            out["item2item"] = asyncio.run(self.run_channel(
                lambda c: Item2ItemChannel(c, ns, max_seeds=rc.recent_items, seed_decay=rc.item2item_seed_decay), split, kmax))
        if "popular" in which:
            ns = self.publish_trending(split, st)
            out["popular"] = asyncio.run(self.run_channel(
                lambda c: PopularChannel(c, ns, half_life_hours=st.trending_half_life_hours, categories=self.categories,
                                         max_categories=rc.preferred_categories, category_boost=st.category_boost),
                split, kmax))
        if "fresh" in which:
            ns = self.publish_fresh(split)
            out["fresh"] = asyncio.run(self.run_channel(
                lambda c: FreshChannel(c, ns, max_age_hours=rc.fresh_max_age_hours, categories=self.categories,
                                       max_categories=rc.preferred_categories, category_boost=rc.fresh_category_boost),
                split, kmax))
        if "embedding" in which and self.embedding is not None and split.name in self.embedding:
            ch = self.embedding[split.name]
            out["embedding"] = asyncio.run(self._run_plain(ch, split, kmax))
        return out

    async def _run_plain(self, ch: Any, split: Split, kmax: int) -> dict[int, ChannelResult]:
        out: dict[int, ChannelResult] = {}
        for u in split.users:
            q = split.query(u)
            out[u] = await ch.recall(q, kmax + len(split.seen.get(u, ())) + len(q.recent_items))
        return out


class _Cached:
    """A channel answering from a cache of real answers (the merge is re-run for many weights)."""

    def __init__(self, name: str, answers: Mapping[int, ChannelResult], applicable_users: set[int] | None = None) -> None:
        self.name = name
        self.answers = answers
        self.users = applicable_users
        self.user = -1

    def applicable(self, query: RecallQuery) -> bool:
        return self.users is None or query.user_id in self.users

    async def recall(self, query: RecallQuery, k: int) -> ChannelResult:
        r = self.answers.get(query.user_id)
        if r is None:
            return ChannelResult.empty()
        return ChannelResult(r.items[:k], r.scores[:k])


def channel_lists(answers: Mapping[int, ChannelResult], split: Split) -> dict[int, np.ndarray]:
    return {u: unseen(np.asarray(r.items, dtype=np.int64), split, u) for u, r in answers.items()}


def merged_lists(answers: Mapping[str, Mapping[int, ChannelResult]], split: Split, k: int, config: Config,
                 weights: Mapping[str, float], quotas: Mapping[str, int]) -> dict[int, np.ndarray]:
    rc = config.recall
    chans = []
    for name, ans in answers.items():
        users = {u for u in split.users if len(split.recent.get(u, ()))} if name == "item2item" else None
        chans.append(_Cached(name, ans, users))
    merger = RecallMerger(chans, quotas=quotas, timeouts_ms={n: 60_000.0 for n in quotas}, weights=weights,
                          rrf_k=rc.rrf_k, overfetch=rc.overfetch, max_candidates=rc.max_candidates, order=list(quotas))

    async def run() -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for u in split.users:
            res = await merger.recall(split.query(u), k, exclude=split.seen.get(u, np.empty(0, np.int64)))
            out[u] = res.items
        return out

    return asyncio.run(run())


def evaluate(bench: Bench, split: Split, st: Settings, which: Sequence[str], answers: dict | None = None) -> tuple[dict[str, Any], dict]:
    kmax = max(KS)
    answers = answers if answers is not None else bench.answers(split, st, kmax, which)
    out: dict[str, Any] = {}
    base = {u: unseen(split.popularity, split, u)[:kmax] for u in split.users}  # type: ignore[arg-type]
    out["popularity_baseline"] = metrics(base, split)
    for name, ans in answers.items():
        out[name] = metrics(channel_lists(ans, split), split)
    merged: dict[str, float] = {}
    for k in KS:
        lists = merged_lists(answers, split, k, bench.config, dict(st.weights), dict(st.quotas))
        merged.update(metrics(lists, split, (k,)))
    out["merged"] = merged
    return out, answers


def score(m: Mapping[str, float]) -> float:
    """What tuning maximises: mean recall over the K's."""
    return float(np.mean([m[f"recall@{k}"] for k in KS]))


# ----------------------------------------------------------------------------- the benchmark


def _embedding_channels(config: Config, splits: Sequence[Split], quick: bool) -> dict[str, Any] | None:
    """Embedding channels trained per split through recall.embedding's API, when it is available."""
    try:
        from bench._recall_embedding import build_embedding_channels  # noqa: PLC0415
    except ImportError:
        return None
    return build_embedding_channels(config, splits, quick)


def run(quick: bool, config: Config) -> dict[str, Any]:
    from featurestore.data import load_movielens, temporal_split
    from stack import Stack
    from stack.clients import redis_client

    paths = load_movielens()
    ratings = pq.read_table(paths.ratings)
    items = pq.read_table(paths.items)
    categories = ItemCategories.from_table(items, "genres")
    train, valid, test = temporal_split(ratings, (0.8, 0.1, 0.1))
    v_split = make_split("valid", train, valid)
    t_split = make_split("test", pa.concat_tables([train, valid]), test)
    profiles = _profiles(pq.read_table(paths.users))
    v_split.profiles = t_split.profiles = profiles
    _step(f"MovieLens-100K: {ratings.num_rows} ratings; valid users {len(v_split.users)}, test users {len(t_split.users)}")
    with Stack(config, kafka=False) as stack:
        client = redis_client(stack.redis_url, config.redis)
        try:
            bench = Bench(config, client, stack.redis_url, items, categories)
            bench.embedding = _embedding_channels(config, (v_split, t_split), quick)
            which = ["item2item", "popular", "fresh"] + (["embedding"] if bench.embedding else [])
            defaults = default_settings(config)
            result = _tune_and_test(bench, v_split, t_split, defaults, which, quick)
        finally:
            client.close()
    result.update({
        "dataset": "movielens-100k", "split": "temporal 80/10/10", "ks": list(KS),
        "valid_users": len(v_split.users), "test_users": len(t_split.users),
        "test_users_with_recent_items": sum(1 for u in t_split.users if t_split.recent.get(u)),
        "channels": which,
    })
    return result


def _tune_and_test(bench: Bench, v: Split, t: Split, defaults: Settings, which: list[str], quick: bool) -> dict[str, Any]:
    config = bench.config
    kmax = max(KS)
    # 1. co-visitation and trending settings, each channel on its own (validation only)
    windows = [defaults.covisit_window_hours, None] if quick else [defaults.covisit_window_hours, 24.0, None]
    half_lives = [defaults.covisit_half_life_days, None] if quick else [defaults.covisit_half_life_days, 30.0, None]
    gaps = [defaults.covisit_max_gap] if quick else [defaults.covisit_max_gap, 50]
    best_cov, best_cov_score, cov_answers = None, -1.0, None
    for w, h, g in itertools.product(windows, half_lives, gaps):
        st = replace(defaults, covisit_window_hours=w, covisit_half_life_days=h, covisit_max_gap=g)
        ans = bench.answers(v, st, kmax, ("item2item",))["item2item"]
        sc = score(metrics(channel_lists(ans, v), v))
        _step(f"valid item2item window={w} half_life_days={h} gap={g}: mean recall {sc:.4f}")
        if sc > best_cov_score:
            best_cov, best_cov_score, cov_answers = (w, h, g), sc, ans
    trend_hl = [defaults.trending_half_life_hours, 168.0] if quick else [defaults.trending_half_life_hours, 24.0, 168.0, 720.0]
    boosts = [defaults.category_boost, 0.0] if quick else [0.0, 0.5, defaults.category_boost]
    best_pop, best_pop_score, pop_answers = None, -1.0, None
    for hl, b in itertools.product(trend_hl, dict.fromkeys(boosts)):
        st = replace(defaults, trending_half_life_hours=hl, category_boost=b)
        ans = bench.answers(v, st, kmax, ("popular",))["popular"]
        sc = score(metrics(channel_lists(ans, v), v))
        _step(f"valid popular half_life_hours={hl} boost={b}: mean recall {sc:.4f}")
        if sc > best_pop_score:
            best_pop, best_pop_score, pop_answers = (hl, b), sc, ans
    tuned = replace(defaults, covisit_window_hours=best_cov[0], covisit_half_life_days=best_cov[1],  # type: ignore[index]
                    covisit_max_gap=best_cov[2], trending_half_life_hours=best_pop[0], category_boost=best_pop[1])  # type: ignore[index]
    v_answers = {"item2item": cov_answers, "popular": pop_answers,
                 **bench.answers(v, tuned, kmax, [c for c in which if c not in ("item2item", "popular")])}
    # 2. merge quotas on the cached validation answers. The weights only order the merged list (and pick the
    #    backfill), the set of K candidates comes from the quotas: those are what is tuned.
    names = list(dict(defaults.quotas))
    total = sum(dict(defaults.quotas).values())
    emb_shares = (0.0, 0.25, 0.5) if "embedding" in which else (0.0,)
    i2i_shares = (0.1, 0.3) if quick else (0.1, 0.2, 0.3, 0.45)
    fresh_shares = (0.0, 0.05) if quick else (0.0, 0.02, 0.05)
    quota_grid = [dict(defaults.quotas)]
    for e, i, f in itertools.product(emb_shares, i2i_shares, fresh_shares):
        if e + i + f < 0.95:
            quota_grid.append({"embedding": round(e * total), "item2item": round(i * total), "fresh": round(f * total),
                               "popular": round((1 - e - i - f) * total)})
    weight_grid = [dict(defaults.weights)]
    best_merge, best_merge_score = None, -1.0
    for wts, qts in itertools.product(weight_grid, quota_grid):
        m: dict[str, float] = {}
        for k in KS:
            m.update(metrics(merged_lists(v_answers, v, k, config, wts, qts), v, (k,)))
        sc = score(m)
        _step(f"valid merged quotas={qts}: mean recall {sc:.4f}")
        if sc > best_merge_score:
            best_merge, best_merge_score = (wts, qts), sc
    tuned = replace(tuned, weights=tuple(best_merge[0].items()), quotas=tuple((n, best_merge[1].get(n, 0)) for n in names))  # type: ignore[index]
    valid_report, _ = evaluate(bench, v, tuned, which, v_answers)
    _step(f"valid (tuned): {valid_report['merged']}")
    # 3. test, once with the tuned settings and once with the configured defaults
    test_report, _ = evaluate(bench, t, tuned, which)
    _step(f"test (tuned): merged {test_report['merged']}")
    default_report, _ = evaluate(bench, t, defaults, which)
    single = [c for c in test_report if c != "merged"]
    beats = {f"@{k}": all(test_report["merged"][f"recall@{k}"] > test_report[c][f"recall@{k}"] for c in single) for k in KS}
    return {
        "test": test_report,
        "valid": valid_report,
        "test_with_defaults": {"merged": default_report["merged"], **{c: default_report[c] for c in single}},
        "tuned_on_valid": tuned.short(),
        "merged_beats_every_channel_recall": beats,
    }
