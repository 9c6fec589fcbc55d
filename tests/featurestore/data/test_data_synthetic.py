"""The synthetic feed at a small size: schema, determinism and the statistics it promises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.data import SyntheticPaths, SyntheticSpec, generate
from featurestore.data.synthetic import powerlaw_mass, powerlaw_sample

UTC_US = pa.timestamp("us", tz="UTC")
SPEC = SyntheticSpec(n_users=1_000, n_items=2_000, n_events=50_000, seed=0, chunk_events=20_000)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    return generate(SPEC, tmp_path_factory.mktemp("offline"), progress=False)


@pytest.fixture(scope="module")
def tables(data: SyntheticPaths) -> dict[str, pa.Table]:
    return {name: pq.read_table(getattr(data, name)) for name in ("users", "items", "events")}


def test_layout_and_counts(data: SyntheticPaths) -> None:
    assert data.root.name == "synthetic_u1000_i2000_e50000_s0_" + SPEC.tag.rsplit("_", 1)[1]  # chunk size is non-default
    assert SyntheticSpec(n_users=1, n_items=2, n_events=3, seed=4).tag == "u1_i2_e3_s4"
    assert (data.n_users, data.n_items, data.n_events) == (1_000, 2_000, 50_000)
    assert json.loads(data.manifest.read_text()) == SPEC.to_dict()
    assert pq.ParquetFile(data.events).metadata.num_row_groups == 3  # 20k + 20k + 10k


def test_schemas(data: SyntheticPaths) -> None:
    f32 = pa.list_(pa.float32())
    assert pq.read_schema(data.users).remove_metadata().equals(
        pa.schema([("user_id", pa.int64()), ("taste", f32), ("home_category", pa.int64()), ("event_ts", UTC_US)])
    )
    assert pq.read_schema(data.items).remove_metadata().equals(
        pa.schema([("item_id", pa.int64()), ("category", pa.int64()), ("author", pa.int64()), ("group_id", pa.int64()),
                   ("published_ts", UTC_US), ("popularity", pa.float64()), ("latent", f32), ("event_ts", UTC_US)])
    )
    assert pq.read_schema(data.events).remove_metadata().equals(
        pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()),
                   ("event_ts", UTC_US), ("value", pa.float64())])
    )


def test_deterministic_for_a_seed(tmp_path: Path, tables: dict[str, pa.Table]) -> None:
    again = generate(SPEC, tmp_path, progress=False)
    for name in ("users", "items", "events"):
        assert pq.read_table(getattr(again, name)).equals(tables[name]), name
    other = generate(SyntheticSpec(n_users=1_000, n_items=2_000, n_events=50_000, seed=1, chunk_events=20_000), tmp_path, progress=False)
    assert not pq.read_table(other.events).equals(tables["events"])


def test_ids_and_values(tables: dict[str, pa.Table]) -> None:
    users, items, events = tables["users"], tables["items"], tables["events"]
    assert users["user_id"].to_pylist() == list(range(1, 1_001))
    assert items["item_id"].to_pylist() == list(range(1, 2_001))
    u, i = events["user_id"].to_numpy(), events["item_id"].to_numpy()
    assert u.min() >= 1 and u.max() <= 1_000 and i.min() >= 1 and i.max() <= 2_000
    assert set(events["event_type"].unique().to_pylist()) == {"click"}
    assert (events["value"].to_numpy() > 0).all()
    cat = items["category"].to_numpy()
    assert cat.min() >= 0 and cat.max() < SPEC.n_categories
    assert np.isclose(items["popularity"].to_numpy().sum(), 1.0)
    taste = np.array(users["taste"].to_pylist(), dtype=np.float32)
    assert taste.shape == (1_000, 16) and np.allclose(np.linalg.norm(taste, axis=1), 1.0, atol=1e-5)


def test_timestamps_within_span_sorted_with_daily_cycle(tables: dict[str, pa.Table]) -> None:
    ts = tables["events"]["event_ts"].cast(pa.int64()).to_numpy()
    assert np.all(np.diff(ts) >= 0)
    assert ts.min() >= SPEC.start_us and ts.max() < SPEC.end_us
    assert SPEC.start_us == 1_767_225_600 * 1_000_000  # 2026-01-01T00:00:00Z
    per_hour = np.bincount((ts // 3_600_000_000) % 24, minlength=24)
    assert per_hour[19:22].mean() > 2 * per_hour[7:10].mean()  # evening peak, morning trough (measured ~3.8x)
    per_day = np.bincount((ts - SPEC.start_us) // 86_400_000_000, minlength=SPEC.days)
    assert per_day.size == SPEC.days and per_day.min() > 0
    for t in (tables["users"],):
        assert set(t["event_ts"].cast(pa.int64()).to_pylist()) == {SPEC.start_us - 1_000_000}


def test_items_published_before_their_clicks_and_some_fresh(tables: dict[str, pa.Table]) -> None:
    items, events = tables["items"], tables["events"]
    pub = items["published_ts"].cast(pa.int64()).to_numpy()
    assert np.array_equal(pub, items["event_ts"].cast(pa.int64()).to_numpy())
    fresh = (pub > SPEC.start_us).mean()
    assert 0.25 < fresh < 0.35  # fresh_fraction 0.3
    ts = events["event_ts"].cast(pa.int64()).to_numpy()
    assert (pub[events["item_id"].to_numpy() - 1] <= ts).all()
    clicked_fresh = np.unique(events["item_id"].to_numpy()[pub[events["item_id"].to_numpy() - 1] > SPEC.start_us])
    assert clicked_fresh.size > 100  # new items do get clicks


def test_near_duplicate_groups(tables: dict[str, pa.Table]) -> None:
    items = tables["items"]
    group, ids = items["group_id"].to_numpy(), items["item_id"].to_numpy()
    size = np.bincount(group)[group]
    assert 0.04 <= (size > 1).mean() <= 0.06  # ~5% of items share a group
    dup = group != ids
    src = group[dup] - 1
    cat, author = items["category"].to_numpy(), items["author"].to_numpy()
    assert (cat[dup] == cat[src]).all() and (author[dup] == author[src]).all()
    latent = np.array(items["latent"].to_pylist(), dtype=np.float32)
    assert (np.einsum("nd,nd->n", latent[dup], latent[src]) > 0.99).all()
    pub = items["published_ts"].cast(pa.int64()).to_numpy()
    assert (pub[dup] >= pub[src]).all()


def test_power_law_popularity(tables: dict[str, pa.Table]) -> None:
    counts = np.sort(np.bincount(tables["events"]["item_id"].to_numpy(), minlength=2_001)[1:])[::-1]
    top1 = counts[:20].sum() / counts.sum()
    top10 = counts[:200].sum() / counts.sum()
    # measured over seeds 0-4: top 1% of items get 26-34% of clicks, top 10% about 62%; uniform would be ~1% / 10%
    assert top1 > 0.2 and top10 > 0.5
    prior = tables["items"]["popularity"].to_numpy()
    clicks = np.bincount(tables["events"]["item_id"].to_numpy(), minlength=2_001)[1:]
    assert np.corrcoef(np.log(prior), np.log1p(clicks))[0, 1] > 0.5


def test_users_concentrate_on_their_taste(tables: dict[str, pa.Table]) -> None:
    events, items, users = tables["events"], tables["items"], tables["users"]
    event_cat = items["category"].to_numpy()[events["item_id"].to_numpy() - 1]
    home = users["home_category"].to_numpy()[events["user_id"].to_numpy() - 1]
    share = np.bincount(event_cat, minlength=SPEC.n_categories) / event_cat.size
    observed, chance = (event_cat == home).mean(), share[home].mean()
    assert observed > 0.3 and observed > 5 * chance  # measured ~0.45 against ~0.04
    # and clicked items lie closer to the user's taste vector than random items
    taste = np.array(users["taste"].to_pylist(), dtype=np.float32)
    latent = np.array(items["latent"].to_pylist(), dtype=np.float32)
    u, i = events["user_id"].to_numpy()[:5_000] - 1, events["item_id"].to_numpy()[:5_000] - 1
    rand = np.random.default_rng(0).integers(0, 2_000, size=5_000)
    assert np.einsum("nd,nd->n", taste[u], latent[i]).mean() > np.einsum("nd,nd->n", taste[u], latent[rand]).mean() + 0.3


def test_generate_is_idempotent_and_force_rewrites(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_users=50, n_items=100, n_events=1_000, write_latents=False)
    first = generate(spec, tmp_path, progress=False)
    st = first.events.stat()
    assert generate(spec, tmp_path, progress=False) == first
    assert (first.events.stat().st_ino, first.events.stat().st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    generate(spec, tmp_path, progress=False, force=True)
    assert first.events.stat().st_ino != st.st_ino
    assert "taste" not in pq.read_schema(first.users).names and "latent" not in pq.read_schema(first.items).names
    assert not [p for p in first.root.iterdir() if p.name.startswith(".")]


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticSpec(n_users=0, n_items=1, n_events=1)
    with pytest.raises(ValueError):
        SyntheticSpec(n_users=1, n_items=1, n_events=1, fresh_fraction=1.0)
    with pytest.raises(ValueError):
        SyntheticSpec(n_users=1, n_items=1, n_events=1, start="not a date")


def test_tiny_catalogue_still_works(tmp_path: Path) -> None:
    for seed in range(5):
        spec = SyntheticSpec(n_users=1, n_items=2, n_events=20, seed=seed, fresh_fraction=0.9)
        out = generate(spec, tmp_path, progress=False)
        assert out.n_events == 20


@pytest.mark.parametrize("a", [0.8, 1.0, 1.1])
def test_powerlaw_sampler_matches_its_mass(a: float) -> None:
    mass = powerlaw_mass(100, a)
    assert np.isclose(mass.sum(), 1.0) and np.all(np.diff(mass) <= 0)
    draws = powerlaw_sample(np.random.default_rng(1).random(200_000), 100, a)
    freq = np.bincount(draws, minlength=100) / draws.size
    assert np.abs(freq - mass).max() < 0.01


def test_generated_dataset_becomes_the_active_one(tmp_path) -> None:
    from featurestore.data.synthetic import active_dataset

    first = generate(SyntheticSpec(n_users=20, n_items=30, n_events=200, seed=1), tmp_path, progress=False)
    assert active_dataset(tmp_path) == first.root.resolve()
    assert (tmp_path / "synthetic" / "events.parquet").is_file()
    second = generate(SyntheticSpec(n_users=20, n_items=30, n_events=200, seed=2), tmp_path, progress=False)
    assert active_dataset(tmp_path) == second.root.resolve()
    generate(SyntheticSpec(n_users=20, n_items=30, n_events=200, seed=3), tmp_path, progress=False, activate_it=False)
    assert active_dataset(tmp_path) == second.root.resolve()
