"""The model registry: publish, verify, refuse bad artifacts, pin, rollback, splits, restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rank_service_helpers import DEFS, FEATURE_SET, write_artifact

from featurestore.repository import FeatureRepo, load_repo
from ranking.registry import (
    FAILED,
    REGISTERED,
    REJECTED,
    ArtifactRejected,
    ModelRegistry,
    NotServable,
    UnknownModel,
    UnknownVersion,
)
from ranking.traffic import InvalidSplit, TrafficSplit, bucket_point

NAME = "rs_model"


@pytest.fixture(scope="module")
def repo() -> FeatureRepo:
    return load_repo(DEFS)


@pytest.fixture()
def fp(repo: FeatureRepo) -> str:
    return repo.resolve(FEATURE_SET).fingerprint


@pytest.fixture()
def reg(tmp_path: Path, repo: FeatureRepo) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models", repo=repo, default_model=NAME)


def art(tmp_path: Path, version: str, fp: str, **kw) -> Path:
    return write_artifact(tmp_path / "src" / version, name=NAME, version=version, fingerprint=fp, **kw)


def test_publish_copies_verifies_and_records(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    src = art(tmp_path, "v1", fp, seed=1)
    assert reg.publish(src) == "v1"
    rec = reg.version("v1")
    assert rec.status == REGISTERED and rec.kind == "deepfm" and rec.feature_set == FEATURE_SET
    assert rec.metrics == {"auc": pytest.approx(0.51)} and rec.created_at_ms > 0
    copy = reg.artifact_path("v1")
    assert copy.is_dir() and Path(rec.path) == copy and copy != src
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in src.iterdir())
    assert reg.live() is None  # published, not promoted
    assert [r.version for r in reg.versions()] == ["v1"]
    assert reg.models() == [NAME]
    # no temp directories left behind
    assert not [p for p in (reg.root / NAME).iterdir() if p.name.startswith(".incoming")]
    # publishing the same artifact again is a no-op; other content under the same version is refused
    assert reg.publish(src) == "v1"
    other = write_artifact(tmp_path / "other" / "v1", name=NAME, version="v1", fingerprint=fp, seed=2)
    with pytest.raises(ArtifactRejected, match="never reused"):
        reg.publish(other)
    assert reg.version("v1").status == REGISTERED


def test_a_corrupt_artifact_is_refused_and_the_live_version_stays(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    reg.publish(art(tmp_path, "v1", fp), auto_promote=True)
    bad = art(tmp_path, "v2", fp, seed=2)
    (bad / "model.pt").write_bytes(b"flipped bits")
    with pytest.raises(ArtifactRejected, match=r"(?i)corrupt.*model\.pt") as err:
        reg.publish(bad, auto_promote=True)
    assert err.value.name == NAME and err.value.version == "v2"
    assert reg.live().version == "v1"
    rec = reg.version("v2")
    assert rec.status == REJECTED and "model.pt" in rec.status_message and not rec.path
    assert not reg.artifact_path("v2").exists()
    missing = art(tmp_path, "v3", fp, seed=3)
    (missing / "encoder.json").unlink()
    with pytest.raises(ArtifactRejected, match="encoder.json"):
        reg.publish(missing)
    with pytest.raises(NotServable):
        reg.pin("v2")
    assert reg.live().version == "v1"


def test_wrong_format_and_bad_manifests_are_refused(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    with pytest.raises(ArtifactRejected, match="format"):
        reg.publish(art(tmp_path, "v1", fp, fmt="something.else"))
    with pytest.raises(ArtifactRejected, match="not a directory"):
        reg.publish(tmp_path / "nowhere")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactRejected, match="JSON"):
        reg.publish(junk)
    with pytest.raises(ArtifactRejected, match="model name"):
        reg.publish(write_artifact(tmp_path / "x", name="Bad-Name", version="v9", fingerprint=fp))


def test_an_incompatible_feature_set_is_refused(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    reg.publish(art(tmp_path, "v1", fp), auto_promote=True)
    with pytest.raises(ArtifactRejected, match="incompatible feature set.*fingerprint") as err:
        reg.publish(art(tmp_path, "v2", "0" * 64), auto_promote=True)
    assert "retrain" in err.value.reason
    with pytest.raises(ArtifactRejected, match="incompatible feature set.*not defined"):
        reg.publish(art(tmp_path, "v3", fp, feature_set="no_such_set"))
    assert reg.live().version == "v1"
    assert reg.version("v2").status == REJECTED


def test_pin_and_rollback_walk_the_live_history(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    for i, v in enumerate(("v1", "v2", "v3")):
        reg.publish(art(tmp_path, v, fp, seed=i), auto_promote=(v == "v1"))
    assert reg.live().version == "v1"
    live, prev = reg.pin("v2", reason="try v2")
    assert live.version == "v2" and prev.version == "v1" and live.live_since_ms > 0
    live, prev = reg.pin("v2")  # pinning the live one is a no-op
    assert live.version == "v2"
    reg.pin("v3")
    assert reg.state().previous == ("v1", "v2")
    live, back_from = reg.rollback(reason="v3 is bad")
    assert (live.version, back_from.version) == ("v2", "v3")
    live, back_from = reg.rollback()
    assert (live.version, back_from.version) == ("v1", "v2")
    with pytest.raises(NotServable, match="no previous live"):
        reg.rollback()
    with pytest.raises(UnknownVersion):
        reg.pin("v404")
    with pytest.raises(UnknownModel):
        reg.pin("v1", "other_model")
    actions = [a["action"] for a in reg.state().audit]
    assert actions.count("pin") == 3 and actions.count("rollback") == 2


def test_rollback_skips_versions_that_can_no_longer_serve(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    for i, v in enumerate(("v1", "v2", "v3")):
        reg.publish(art(tmp_path, v, fp, seed=i), auto_promote=True)
    reg.mark_failed("v2", "load failed: boom")
    assert reg.version("v2").status == FAILED
    live, _ = reg.rollback()
    assert live.version == "v1"


def test_auto_promotion_can_be_suspended_by_a_pin(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    reg.publish(art(tmp_path, "v1", fp), auto_promote=True)
    reg.pin("v1", suspend_auto_promotion=True, reason="freeze")
    reg.publish(art(tmp_path, "v2", fp, seed=2), auto_promote=True)
    assert reg.live().version == "v1" and reg.state().auto_promotion_suspended
    reg.pin("v1", suspend_auto_promotion=False)
    reg.publish(art(tmp_path, "v3", fp, seed=3), auto_promote=True)
    assert reg.live().version == "v3"


def test_state_survives_a_restart(reg: ModelRegistry, tmp_path: Path, fp: str, repo: FeatureRepo) -> None:
    for i, v in enumerate(("v1", "v2")):
        reg.publish(art(tmp_path, v, fp, seed=i), auto_promote=True)
    reg.set_traffic_split(TrafficSplit("exp_a", "v1", 0.25))
    before = reg.state()
    again = ModelRegistry(reg.root, repo=repo, default_model=NAME)
    after = again.state()
    assert after.live == "v2" and after.previous == ("v1",)
    assert after.traffic_split == before.traffic_split and after.traffic_split.updated_at_ms > 0
    assert after.versions == before.versions and after.revision == before.revision
    state_file = json.loads(reg.state_path().read_text())
    assert state_file["format"] == "cascade.model_registry.v1"
    assert not [p for p in (reg.root / NAME).iterdir() if p.name.endswith(".tmp")]


def test_traffic_split_validation(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    reg.publish(art(tmp_path, "v1", fp), auto_promote=True)
    reg.publish(art(tmp_path, "v2", fp, seed=2))
    with pytest.raises(InvalidSplit, match="treatment_fraction"):
        reg.set_traffic_split(TrafficSplit("exp", "v2", 1.5))
    with pytest.raises(InvalidSplit, match="experiment"):
        reg.set_traffic_split(TrafficSplit("Not Snake", "v2", 0.5))
    with pytest.raises(UnknownVersion):
        reg.set_traffic_split(TrafficSplit("exp", "v404", 0.5))
    got = reg.set_traffic_split(TrafficSplit("exp", "v2", 0.5))
    assert got.treatment_version == "v2" and reg.state().traffic_split == got
    assert reg.set_traffic_split(None) is None and reg.state().traffic_split is None


def test_bucketing_is_stable_monotone_and_proportional() -> None:
    users = [str(u) for u in range(20_000)]
    s30 = TrafficSplit("exp_b", "v2", 0.3)
    s50 = TrafficSplit("exp_b", "v2", 0.5)
    t30 = {u for u in users if s30.bucket(u) == "treatment"}
    t50 = {u for u in users if s50.bucket(u) == "treatment"}
    assert t30 <= t50  # raising the fraction only adds users
    assert 0.28 < len(t30) / len(users) < 0.32
    assert all(s30.bucket(u) == s30.bucket(u) for u in users[:100])
    renamed = {u for u in users if TrafficSplit("exp_c", "v2", 0.3).bucket(u) == "treatment"}
    assert renamed != t30  # the experiment name salts the hash
    assert 0.0 <= bucket_point("exp_b", "42") < 1.0


def test_prune_keeps_the_newest_and_the_routed(reg: ModelRegistry, tmp_path: Path, fp: str) -> None:
    for i, v in enumerate(("v1", "v2", "v3", "v4")):
        reg.publish(art(tmp_path, v, fp, seed=i), auto_promote=(v == "v1"))
    removed = reg.prune(keep=2)
    assert removed == ["v2"]  # v1 is live; v3, v4 are the newest
    assert not reg.artifact_path("v2").exists()
    assert sorted(reg.state().versions) == ["v1", "v3", "v4"]


def test_an_artifact_already_in_place_is_registered_where_it_is(reg: ModelRegistry, fp: str) -> None:
    in_place = write_artifact(reg.root / NAME / "v7", name=NAME, version="v7", fingerprint=fp, seed=7)
    assert reg.publish(in_place, auto_promote=True) == "v7"
    assert reg.live().version == "v7" and (in_place / "model.pt").is_file()
    assert reg.publish(in_place) == "v7"


def test_the_models_command(tmp_path: Path, fp: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                            repo: FeatureRepo) -> None:
    from cascade import config as config_mod
    from ranking import registry as registry_mod

    cfg = config_mod.get_config()
    cfg = cfg.model_copy(update={"paths": cfg.paths.model_copy(update={"artifacts_dir": tmp_path / "artifacts"}),
                                 "ranking": cfg.ranking.model_copy(update={"model": NAME})})
    monkeypatch.setattr(config_mod, "get_config", lambda: cfg)
    real_init = registry_mod.ModelRegistry.__init__

    def with_test_repo(self, root, **kw):  # the test definitions instead of config/features.py
        kw["repo"] = repo
        real_init(self, root, **kw)

    monkeypatch.setattr(registry_mod.ModelRegistry, "__init__", with_test_repo)
    main = registry_mod.main
    assert main(["publish", str(art(tmp_path, "v1", fp)), "--promote"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": "v1", "live": "v1"}
    assert main(["publish", str(art(tmp_path, "v2", fp, seed=2))]) == 0
    capsys.readouterr()
    assert main(["pin", "v2", "--reason", "cli"]) == 0
    assert json.loads(capsys.readouterr().out) == {"live": "v2", "previous": "v1"}
    assert main(["split", "exp_cli", "v1", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["split"]["treatment_version"] == "v1"
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "* v2" in listing and "  v1" in listing and "split:" in listing
    assert main(["rollback"]) == 0
    assert json.loads(capsys.readouterr().out) == {"live": "v1", "rolled_back_from": "v2"}
    assert main(["rollback"]) == 1
    assert "no previous live" in capsys.readouterr().err
    assert main(["split", "--clear"]) == 0
