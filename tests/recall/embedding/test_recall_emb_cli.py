"""`cascade recall build | query | versions | activate` on a small synthetic offline store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main as cascade_main
from recall.artifacts import current_version, list_versions, read_manifest
from recall.cli import SUBCOMMANDS, main


def test_build_query_versions_activate(syn_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "art"
    common = ["--dataset", "synthetic", "--artifacts-dir", str(art)]
    build = ["build", *common, "--offline-root", str(syn_root), "--epochs", "1", "--batch-size", "512", "--threads", "1",
             "--quiet"]
    assert main(build) == 0
    out = capsys.readouterr().out
    first = current_version(art)
    assert first is not None and f"version {first}" in out and "(now CURRENT)" in out
    manifest = read_manifest(art / first)
    assert manifest["dataset"] == "synthetic" and manifest["index"]["items"] == 300
    assert manifest["build"]["train_params"]["epochs"] == 1
    assert {"next_item_hr@100", "ann_recall@100", "index_build_s"} <= set(manifest["metrics"])

    assert main(["query", *common, "--user", "5", "-k", "7", "--offline-root", str(syn_root), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["version"] == first and len(answer["items"]) == 7
    assert answer["recent_items"], "user 5 has clicks before the end of the data"
    assert main(["query", *common, "--user", "5", "-k", "3", "--recent", "1,2,3", "--offline-root", str(syn_root)]) == 0
    text = capsys.readouterr().out
    assert "recent items (3): [1, 2, 3]" in text and text.count(" item ") == 3

    assert main([*build, "--no-activate", "--no-eval"]) == 0
    capsys.readouterr()
    versions = list_versions(art)
    assert len(versions) == 2 and current_version(art) == first
    assert cascade_main(["recall", "versions", *common]) == 0  # registered with the top-level CLI
    listing = capsys.readouterr().out
    assert f"* {first}" in listing and versions[1] in listing
    assert main(["activate", *common, versions[1]]) == 0
    assert current_version(art) == versions[1]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--dataset", "synthetic", "--artifacts-dir", str(tmp_path), "--user", "1"]) == 1
    assert "no index" in capsys.readouterr().err
    assert main(["activate", "--artifacts-dir", str(tmp_path), "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert set(SUBCOMMANDS) >= {"build", "query", "versions", "activate"}
