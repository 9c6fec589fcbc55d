"""The BENCHMARKS.md writer: one dated markdown section per run, appended."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from bench.machine import describe_load, describe_machine, is_busy

HEADER = """# Benchmarks

Appended by `./run bench NAME [--quick]`, newest last; nothing here is edited by hand.
Each section names the machine it was measured on. Later benchmarks are read as
ratios of the `baseline` ceilings (GEMM, Redis, Kafka, gRPC) measured on the same
machine; `--quick` runs use fewer repetitions and are for smoke checks, not claims.
"""

# Result keys that describe the run rather than being figures.
RESERVED_KEYS = frozenset({"bench", "quick", "machine", "method", "utc", "duration_s", "command"})

_SUFFIX_UNITS: list[tuple[str, str]] = [
    ("_ms", "ms"),
    ("_us", "µs"),
    ("_ns", "ns"),
    ("_s", "s"),
    ("gflops", "GFLOP/s"),
    ("_qps", "queries/s"),
    ("ratio", "×"),
    ("_pct", "%"),
    ("_bytes", "bytes"),
    ("_kib", "KiB"),
    ("_mib", "MiB"),
    ("_gib", "GiB"),
    ("_mb", "MB"),
    ("_gb", "GB"),
]


def unit_for(key: str) -> str:
    """The unit a figure's key carries: `rows_per_s` → 'rows/s', `p99_ms` → 'ms', `gemm_gflops` → 'GFLOP/s'."""
    k = key.lower()
    m = re.search(r"(?:^|_)([a-z0-9]+)_per_s$", k)
    if m:
        return f"{m.group(1)}/s"
    if k.endswith("_per_s"):
        return "/s"
    for suffix, unit in _SUFFIX_UNITS:
        if k.endswith(suffix):
            return unit
    return ""


def format_value(value: Any) -> str:
    """Readable, still exact enough: thousands separators for big numbers, 3-4 significant digits for small."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        a = abs(value)
        if a >= 1000:
            return f"{value:,.0f}"
        if a >= 100:
            return f"{value:.1f}"
        if a >= 1:
            return f"{value:.2f}"
        if a == 0:
            return "0"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def figures(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, value) rows of a result: everything but the reserved keys, nested dicts flattened as `a.b`."""
    rows: list[tuple[str, Any]] = []

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append((prefix, obj))

    for key, value in result.items():
        if key not in RESERVED_KEYS:
            walk(key, value)
    return rows


def method_lines(method: Any) -> list[str]:
    """Method notes as markdown bullets, from a {figure: sentence} dict, a list of strings, or a string."""
    if not method:
        return []
    if isinstance(method, str):
        return [f"- {method}"]
    if isinstance(method, dict):
        return [f"- `{k}`: {v}" for k, v in method.items()]
    return [f"- {line}" for line in method]


def render_section(result: dict[str, Any], command: str) -> str:
    """The markdown section for one run (without leading blank line)."""
    name = result.get("bench", "?")
    when = result.get("utc", "?")
    mode = "quick" if result.get("quick") else "full"
    lines = [
        f"## {name} — {when} ({mode})",
        "",
        f"- Command: `{command}`",
        f"- Machine: {describe_machine(result.get('machine') or {})}",
    ]
    machine = result.get("machine") or {}
    load = describe_load(machine)
    if load:
        lines.append(f"- Load: {load}")
        if is_busy(machine):
            lines.append("- **Warning**: the machine was busy with other work around this run; "
                         "its figures are lower bounds.")
    if result.get("duration_s") is not None:
        lines.append(f"- Duration: {result['duration_s']:.1f} s")
    lines += ["", "| figure | value | unit |", "|---|---:|---|"]
    for key, value in figures(result):
        lines.append(f"| `{key}` | {format_value(value)} | {unit_for(key)} |")
    notes = method_lines(result.get("method"))
    if notes:
        lines += ["", "Method:", "", *notes]
    lines += ["", embed_result(result)]
    return "\n".join(lines) + "\n"


_EMBED_PREFIX = "<!-- bench-result "
_EMBED_RE = re.compile(r"^<!-- bench-result (\{.*\}) -->$", re.MULTILINE)


def embed_result(result: dict[str, Any]) -> str:
    """The result without its method notes, as one invisible markdown comment line (read back by `read_results`)."""
    data = {k: v for k, v in result.items() if k != "method"}
    # '>' only occurs inside JSON strings, where \u003e is equivalent: the comment can never be closed early.
    payload = json.dumps(data, ensure_ascii=True).replace(">", "\\u003e")
    return f"{_EMBED_PREFIX}{payload} -->"


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every result embedded in a BENCHMARKS.md, oldest first; [] if the file is absent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for m in _EMBED_RE.finditer(text):
        try:
            out.append(json.loads(m.group(1)))
        except ValueError:
            continue
    return out


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same CPU model, core count and affinity: figures from the two are comparable."""
    keys = ("cpu_model", "cpu_count", "cpu_affinity")
    return all(a.get(k) == b.get(k) for k in keys)


def latest_result(name: str, path: Path, *, machine: dict[str, Any] | None = None,
                  quick: bool | None = None) -> dict[str, Any] | None:
    """The newest recorded result of benchmark `name` (e.g. the `baseline` ceilings a ratio divides by).

    `machine` keeps only results measured on the same kind of machine (see
    `same_machine`); `quick` True/False keeps only quick/full runs. None if there is none.
    """
    for result in reversed(read_results(path)):
        if result.get("bench") != name:
            continue
        if quick is not None and bool(result.get("quick")) != quick:
            continue
        if machine is not None and not same_machine(result.get("machine") or {}, machine):
            continue
        return result
    return None


def append_report(result: dict[str, Any], path: Path, command: str) -> str:
    """Append the run's section to `path` (created with a header if absent or empty); returns the section."""
    section = render_section(result, command)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists() or path.stat().st_size == 0
    sep = "\n"
    if not fresh:
        with path.open("rb") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                sep = "\n\n"
    with path.open("a", encoding="utf-8") as fh:
        if fresh:
            fh.write(HEADER)
        fh.write(sep + section)
    return section
