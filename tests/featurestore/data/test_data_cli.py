"""`cascade data ...` through featurestore.data.cli.main."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from featurestore.data.cli import main


def test_load_movielens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["load-movielens", "--root", str(tmp_path)]) == 0
    assert "943 users, 1682 items, 100000 ratings" in capsys.readouterr().out
    ratings = tmp_path / "movielens" / "ratings.parquet"
    ino = ratings.stat().st_ino
    assert main(["load-movielens", "--root", str(tmp_path)]) == 0
    assert ratings.stat().st_ino == ino
    assert main(["load-movielens", "--root", str(tmp_path), "--force"]) == 0
    assert ratings.stat().st_ino != ino


def test_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["synth", "--users", "20", "--items", "40", "--events", "500", "--seed", "3", "--root", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = tmp_path / "synthetic_u20_i40_e500_s3"
    assert "20 users, 40 items, 500 events" in capsys.readouterr().out
    assert pq.ParquetFile(out / "events.parquet").metadata.num_rows == 500


def test_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--users", "0", "--items", "1", "--events", "1", "--root", str(tmp_path), "--quiet"]) == 1
    assert "n_users must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--users", "1"])  # --items and --events are required
    with pytest.raises(SystemExit):
        main([])
