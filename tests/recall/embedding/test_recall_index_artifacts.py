"""Versioned artifacts: manifest and checksums, CURRENT, refusal of corrupt versions, background swap under load."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from recall.artifacts import (
    ArtifactError,
    LiveIndex,
    NoIndexLoaded,
    current_version,
    list_versions,
    load_artifact,
    prune,
    read_manifest,
    set_current,
    write_artifact,
)
from recall.index import IndexParams, ItemIndex


def _version(root: Path, make_encoder, make_clustered, seed: int, activate: bool = True, kind: str = "hnsw") -> Path:
    encoder = make_encoder(dim=16, seed=seed)
    x, _ = make_clustered(800, 16, seed=seed)
    index = ItemIndex.build(x, np.arange(1, 801, dtype=np.int64) + 1000 * seed, IndexParams(kind=kind))
    return write_artifact(root, index, encoder, build={"seed": seed}, metrics={"ann_recall@100": 1.0}, activate=activate)


def test_write_manifest_checksums_and_current(tmp_path: Path, make_encoder, make_clustered) -> None:
    path = _version(tmp_path, make_encoder, make_clustered, seed=1)
    manifest = read_manifest(path)
    assert manifest["version"] == path.name and current_version(tmp_path) == path.name
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert {"index/index.faiss", "index/ids.npy", "encoder/weights.npz", "encoder/item_table.npy"} <= files
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in manifest["files"].values())
    assert manifest["index"]["kind"] == "hnsw" and manifest["index"]["items"] == 800
    assert manifest["query"]["required_features"] == ["syn_user_profile:home_category", "syn_user_activity:item_id_last50_30d"]
    assert manifest["build"] == {"seed": 1} and manifest["metrics"]["ann_recall@100"] == 1.0
    art = load_artifact(path)
    ids, scores = art.recall({"syn_user_profile:home_category": "2"}, [3, 1, 4], 10)
    assert ids.shape == (10,) and np.all(ids > 1000) and np.all(np.diff(scores) <= 1e-5)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_versions_sort_by_time_and_prune_keeps_current(tmp_path: Path, make_encoder, make_clustered) -> None:
    paths = [_version(tmp_path, make_encoder, make_clustered, seed=s, activate=(s == 1)) for s in (1, 2, 3, 4)]
    assert list_versions(tmp_path) == [p.name for p in paths]
    assert current_version(tmp_path) == paths[0].name
    removed = prune(tmp_path, keep=2)
    assert removed == [paths[1].name]
    assert list_versions(tmp_path) == [paths[0].name, paths[2].name, paths[3].name]
    with pytest.raises(ArtifactError):
        set_current(tmp_path, paths[1].name)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupt_artifact_is_refused_and_old_keeps_serving(tmp_path: Path, make_encoder, make_clustered, damage: str) -> None:
    good = _version(tmp_path, make_encoder, make_clustered, seed=1)
    live = LiveIndex(tmp_path)
    live.load()
    bad = _version(tmp_path, make_encoder, make_clustered, seed=2)
    target = bad / "index" / "index.faiss"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "delete":
        target.unlink()
    else:
        (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        load_artifact(bad)
    fut = live.refresh()  # CURRENT now names the bad version
    assert fut is not None
    with pytest.raises(ArtifactError):
        fut.result(timeout=30)
    assert live.version == good.name and isinstance(live.last_error, ArtifactError)
    assert live.search(np.ones((1, 16), np.float32), 5)[0].min() > 1000  # the old version still answers
    assert live.refresh() is None  # a refused version is not retried on every poll
    live.close()


def test_unloaded_live_index_says_so(tmp_path: Path) -> None:
    live = LiveIndex(tmp_path)
    with pytest.raises(NoIndexLoaded):
        live.current
    with pytest.raises(ArtifactError, match="CURRENT"):
        live.load()


def test_background_swap_while_searching_never_fails(tmp_path: Path, make_encoder, make_clustered) -> None:
    """Searchers hammer the live index while versions swap in; every search succeeds on exactly one version."""
    first = _version(tmp_path, make_encoder, make_clustered, seed=1)
    live = LiveIndex(tmp_path)
    live.load()
    swapped: list[tuple[str, str | None]] = []
    live.add_listener(lambda new, old: swapped.append((new.version, old.version if old else None)))
    q = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    errors: list[BaseException] = []
    seen_ranges: set[int] = set()
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                art = live.current  # one version per "request"
                ids, _ = art.index.search(art.encoder.encode({}, [1, 2])[None, :], 20)
                ids2, _ = art.index.search(q, 20)
                blocks = {int(i) // 1000 for i in np.concatenate([ids.ravel(), ids2.ravel()]) if i >= 0}
                assert len(blocks) == 1, "a search mixed two versions"
                seen_ranges.update(blocks)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        versions = [first.name]
        for seed in (2, 3, 4):
            path = _version(tmp_path, make_encoder, make_clustered, seed=seed, activate=False)
            set_current(tmp_path, path.name)
            live.refresh().result(timeout=60)
            versions.append(path.name)
            assert live.version == path.name
            for _ in range(3000):  # let the searchers run on this version before the next swap
                if seed in seen_ranges or errors:
                    break
                threading.Event().wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        live.close()
    assert not errors, errors[:1]
    assert swapped == list(zip(versions[1:], versions[:-1]))
    assert seen_ranges == {1, 2, 3, 4}  # the searchers really ran on every version, across the swaps


def test_watcher_picks_up_a_new_current(tmp_path: Path, make_encoder, make_clustered) -> None:
    _version(tmp_path, make_encoder, make_clustered, seed=1)
    live = LiveIndex(tmp_path)
    live.load()
    done = threading.Event()
    live.add_listener(lambda new, old: done.set())
    live.start_watching(0.05)
    try:
        newer = _version(tmp_path, make_encoder, make_clustered, seed=2)
        assert done.wait(30)
        assert live.version == newer.name
    finally:
        live.close()


def test_manifest_is_json_with_format(tmp_path: Path, make_encoder, make_clustered) -> None:
    path = _version(tmp_path, make_encoder, make_clustered, seed=1, kind="flat")
    raw = json.loads((path / "manifest.json").read_text())
    assert raw["format"] == 1 and raw["index"]["kind"] == "flat"
    raw["format"] = 99
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(path)
