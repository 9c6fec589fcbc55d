"""`cascade loadtest ...` end to end against the loopback stub FeedService."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cascade.cli import main as cascade_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cascade_cli_discovers_loadtest(capsys: pytest.CaptureFixture[str]) -> None:
    assert cascade_main(["--help"]) == 0
    assert "loadtest" in capsys.readouterr().out
    assert cascade_main(["loadtest", "--help"]) == 0
    assert "cascade loadtest open" in capsys.readouterr().out
    assert cascade_main(["loadtest", "open", "--target", "x:1"]) == 2  # --rate missing


def test_open_run_writes_report_and_plots(feed_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    feed_server.behave(delay_s=0.002, fail_every=10, items=3)
    out = tmp_path / "run"
    rc = cascade_main(["loadtest", "open", "--target", feed_server.address, "--rate", "40", "--duration", "1.5",
                       "--warmup", "0.25", "--count", "3", "--users", "20", "--user-dist", "zipf", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "[loadtest open" in captured.err  # progress, once a second
    assert "latency    p50" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] == 60 == report["ok"] + report["errors"] + report["dropped"]
    assert report["codes"]["UNAVAILABLE"] > 0 and report["items_mean"] == 3.0
    assert "requests   60" in (out / "summary.txt").read_text()
    for name in ("latency_over_time.png", "latency_histogram.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
        assert report["plots"][name.removesuffix(".png")] == str(out / name)


def test_closed_run_prints_one_json_line(feed_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    feed_server.behave(delay_s=0.01)
    rc = cascade_main(["loadtest", "closed", "--target", feed_server.address, "--clients", "2", "--duration", "1",
                       "--warmup", "0", "--json", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err == ""
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report["settings"]["mode"] == "closed" and report["settings"]["clients"] == 2
    assert report["requests"] == report["ok"] > 0


def test_unreachable_target_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = cascade_main(["loadtest", "closed", "--target", f"127.0.0.1:{port}", "--clients", "1", "--duration", "1",
                       "--connect-timeout", "0.5", "--quiet"])
    assert rc == 1
    assert "cannot connect" in capsys.readouterr().err
