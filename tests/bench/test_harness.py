"""The benchmark harness: statistics, the BENCHMARKS.md writer, the registry and `main`.

No real benchmark runs here (benchmarks never live in timed tests): a tiny fake
one goes end to end through `main`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import harness, registry
from bench.report import HEADER, append_report, format_value, render_section, unit_for
from bench.stats import percentiles, rate


# ---------------------------------------------------------------- statistics


def test_percentiles_in_ms_from_seconds() -> None:
    samples = np.arange(1, 1001) / 1000.0  # 1 ms .. 1000 ms
    p = percentiles(samples)
    assert set(p) == {"p50_ms", "p90_ms", "p99_ms", "p999_ms", "mean_ms"}
    assert p["p50_ms"] == pytest.approx(500.5)
    assert p["p90_ms"] == pytest.approx(900.1)
    assert p["p99_ms"] == pytest.approx(990.01)
    assert p["p999_ms"] == pytest.approx(999.001)
    assert p["mean_ms"] == pytest.approx(500.5)
    assert all(isinstance(v, float) for v in p.values())


def test_percentiles_single_sample_list_and_prefix() -> None:
    p = percentiles([0.002], prefix="get_")
    assert p == {"get_p50_ms": 2.0, "get_p90_ms": 2.0, "get_p99_ms": 2.0, "get_p999_ms": 2.0, "get_mean_ms": 2.0}


def test_percentiles_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        percentiles([])


def test_rate() -> None:
    assert rate(1000, 0.5) == 2000.0
    with pytest.raises(ValueError):
        rate(1, 0)


# ---------------------------------------------------------------- report


@pytest.mark.parametrize(("key", "unit"), [
    ("redis_mget_1000_p99_ms", "ms"),
    ("kafka_produce_msgs_per_s", "msgs/s"),
    ("rows_per_s", "rows/s"),
    ("gemm_gflops", "GFLOP/s"),
    ("speedup_ratio", "×"),
    ("grpc_unary_qps", "queries/s"),
    ("duration_s", "s"),
    ("grpc_server_cpu_pct", "%"),
    ("index_bytes", "bytes"),
    ("candidates", ""),
])
def test_unit_from_key_suffix(key: str, unit: str) -> None:
    assert unit_for(key) == unit


def test_format_value() -> None:
    assert format_value(1234567.8) == "1,234,568"
    assert format_value(12345) == "12,345"
    assert format_value(0.00123456) == "0.00123"
    assert format_value(3.14159) == "3.14"
    assert format_value(None) == "—"
    assert format_value(True) == "yes"
    assert format_value("a|b") == "a\\|b"


def _result(**figures: object) -> dict:
    return {
        "bench": "fake",
        "quick": True,
        **figures,
        "method": {"widgets_per_s": "counted widgets over wall time."},
        "utc": "2030-01-02T03:04:05Z",
        "duration_s": 1.5,
        "machine": {"cpu_count": 2, "cpu_affinity": 2, "cpu_model": "Test CPU", "mem_total_gib": 8.0,
                    "os": "Linux 6", "arch": "x86_64", "python": "3.11.7", "torch": "2.13.0",
                    "busy_pct_before": 1.0, "others_busy_pct_during": 40.0},
    }


def test_render_section_has_date_machine_command_table_and_method() -> None:
    text = render_section(_result(widgets_per_s=12345.6, lat_p99_ms=0.25, nested={"a_ms": 1.0}),
                          "./run bench fake --quick")
    assert text.startswith("## fake — 2030-01-02T03:04:05Z (quick)")
    assert "`./run bench fake --quick`" in text
    assert "2 CPUs (affinity 2)" in text and "Test CPU" in text and "8.0 GiB RAM" in text
    assert "Python 3.11.7" in text and "torch 2.13.0" in text
    assert "| `widgets_per_s` | 12,346 | widgets/s |" in text
    assert "| `lat_p99_ms` | 0.25 | ms |" in text
    assert "| `nested.a_ms` | 1.00 | ms |" in text
    assert "- `widgets_per_s`: counted widgets over wall time." in text
    assert "**Warning**" in text  # other processes used 40% of CPU during the run
    # Run metadata is not a figure row.
    assert "| `utc`" not in text and "| `machine" not in text and "| `bench`" not in text


def test_method_as_list_of_strings() -> None:
    result = _result(x_ms=1.0)
    result["method"] = ["first note", "second note"]
    text = render_section(result, "cmd")
    assert "- first note\n- second note" in text


def test_append_report_creates_with_header_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "BENCHMARKS.md"
    append_report(_result(widgets_per_s=1.0), path, "./run bench fake --quick")
    first = path.read_text()
    assert first.startswith(HEADER)
    assert first.count("## fake") == 1
    append_report(_result(widgets_per_s=2.0), path, "./run bench fake")
    second = path.read_text()
    assert second.startswith(first)
    assert second.count("## fake") == 2 and second.count("# Benchmarks") == 1


def test_append_report_keeps_existing_content_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Mine\n\nhand-written line")
    append_report(_result(widgets_per_s=1.0), path, "cmd")
    text = path.read_text()
    assert text.startswith("# Mine\n\nhand-written line\n\n## fake")
    assert HEADER not in text


# ---------------------------------------------------------------- registry and main


@pytest.fixture()
def fake_benchmark():
    calls: list[tuple[bool, object]] = []

    def fake(quick: bool, config: object) -> dict:
        calls.append((quick, config))
        print("noise a benchmark printed to stdout")
        harness.step("a progress line")
        return {"widgets_per_s": 1234.6, "lat_p50_ms": np.float64(0.5), "lat_p99_ms": float("nan"),
                "method": {"widgets_per_s": "counted widgets."}}

    registry.register("fake_for_test", fake)
    yield calls
    registry.unregister("fake_for_test")


def test_register_and_available(fake_benchmark: list) -> None:
    assert "fake_for_test" in registry.available()
    assert "baseline" in registry.available()
    assert registry.available() == sorted(registry.available())

    @registry.register("decorated_for_test")
    def decorated(quick: bool, config: object) -> dict:
        return {}

    try:
        assert registry.resolve("decorated_for_test") is decorated
    finally:
        registry.unregister("decorated_for_test")
    assert "decorated_for_test" not in registry.available()


def test_unknown_benchmark_exits_2_and_lists_available(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    assert harness.main(["no_such_benchmark", "--output", str(out)]) == 2
    captured = capsys.readouterr()
    assert "no_such_benchmark" in captured.err and "baseline" in captured.err
    assert captured.out == ""
    assert not out.exists()


def test_missing_name_and_bad_flag_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main([]) == 2
    assert harness.main(["baseline", "--no-such-flag"]) == 2
    assert "baseline" in capsys.readouterr().err


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.main(["--list"]) == 0
    assert "baseline" in capsys.readouterr().out.split()


def test_fake_benchmark_end_to_end_through_main(fake_benchmark: list, capfd: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert harness.main(["fake_for_test", "--quick", "--output", str(out)]) == 0
    captured = capfd.readouterr()

    # Exactly one stdout line, the JSON; the benchmark's own print went to stderr.
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[-1])
    assert result["bench"] == "fake_for_test" and result["quick"] is True
    assert result["widgets_per_s"] == 1234.6
    assert result["lat_p50_ms"] == 0.5
    assert result["lat_p99_ms"] is None  # NaN is not JSON
    assert result["machine"]["cpu_count"] >= 1
    assert "noise a benchmark printed" in captured.err and "a progress line" in captured.err

    [(quick, config)] = fake_benchmark
    assert quick is True and config is not None

    text = out.read_text()
    assert text.startswith(HEADER)
    assert "## fake_for_test" in text and "`./run bench fake_for_test --quick`" in text
    assert "| `widgets_per_s` | 1,235 | widgets/s |" in text
    assert "- `widgets_per_s`: counted widgets." in text


def test_run_benchmark_failure_returns_1_and_writes_nothing(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def broken(quick: bool, config: object) -> dict:
        raise RuntimeError("boom")

    registry.register("broken_for_test", broken)
    try:
        out = tmp_path / "B.md"
        assert harness.main(["broken_for_test", "--output", str(out)]) == 1
        captured = capfd.readouterr()
        assert captured.out == "" and "boom" in captured.err
        assert not out.exists()
    finally:
        registry.unregister("broken_for_test")


def test_stdout_restored_after_run(fake_benchmark: list, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    harness.run_benchmark("fake_for_test", False, benchmarks_file=tmp_path / "B.md")
    print("after")
    sys.stdout.flush()
    out = capfd.readouterr().out.splitlines()
    assert json.loads(out[0])["quick"] is False and out[1] == "after"


# ---------------------------------------------------------------- results read back (ratios to the baseline)


def test_results_embedded_and_read_back(tmp_path: Path) -> None:
    from bench.report import latest_result, read_results

    path = tmp_path / "BENCHMARKS.md"
    assert read_results(path) == []
    first = _result(widgets_per_s=1.0)
    first["note"] = "a --> b"
    append_report(first, path, "cmd")
    append_report({**_result(widgets_per_s=2.0), "quick": False}, path, "cmd")
    other_machine = _result(widgets_per_s=3.0)
    other_machine["machine"] = {**other_machine["machine"], "cpu_model": "Other CPU"}
    append_report(other_machine, path, "cmd")

    results = read_results(path)
    assert [r["widgets_per_s"] for r in results] == [1.0, 2.0, 3.0]
    assert results[0]["note"] == "a --> b" and "method" not in results[0]
    here = _result()["machine"]
    assert latest_result("fake", path)["widgets_per_s"] == 3.0
    assert latest_result("fake", path, machine=here)["widgets_per_s"] == 2.0
    assert latest_result("fake", path, machine=here, quick=True)["widgets_per_s"] == 1.0
    assert latest_result("nope", path) is None


def test_baseline_figures_prefers_full_run_on_this_machine(tmp_path: Path) -> None:
    from bench.machine import machine_info

    path = tmp_path / "BENCHMARKS.md"
    assert harness.baseline_figures(benchmarks_file=path) is None
    here = machine_info(busy_sample_s=0)
    for quick, value in ((False, 10.0), (True, 20.0)):
        append_report({"bench": "baseline", "quick": quick, "redis_mset_rows_per_s": value, "machine": here},
                      path, "cmd")
    base = harness.baseline_figures(benchmarks_file=path)
    assert base is not None and base["redis_mset_rows_per_s"] == 10.0
    assert harness.ratio(5.0, base["redis_mset_rows_per_s"]) == 0.5
    assert harness.ratio(5.0, 0) is None and harness.ratio(None, 1.0) is None
