"""Benchmarks: `./run bench NAME [--quick]` (or `python -m bench NAME`).

Each benchmark is a module ``bench/<name>.py`` with ``run(quick, config) -> dict``
listed in `bench.registry`; `bench.harness` runs it, appends a dated section to
BENCHMARKS.md and prints the result as one JSON line, the last line of stdout.
"""
