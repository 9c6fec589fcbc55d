"""Which benchmarks exist.

A benchmark is a callable ``run(quick: bool, config: Config) -> dict`` of figures.
Every public module ``bench/<name>.py`` is one (found by file name, imported only
when run, so listing stays cheap); `register` adds a callable directly (tests, plugins).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from cascade.config import Config

BenchFn = Callable[[bool, Config], dict[str, Any]]

# Modules of the package that are plumbing, not benchmarks.
_NOT_BENCHMARKS = {"harness", "machine", "registry", "report", "stats"}


def _discover() -> dict[str, str]:
    import bench

    return {
        m.name: f"bench.{m.name}"
        for m in pkgutil.iter_modules(bench.__path__)
        if not m.name.startswith("_") and m.name not in _NOT_BENCHMARKS
    }


# name -> "package.module" exposing `run(quick, config)`, or the callable itself.
BENCHMARKS: dict[str, str | BenchFn] = _discover()


class UnknownBenchmark(KeyError):
    """No benchmark of that name; `.available` lists the ones that exist."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.available = available()

    def __str__(self) -> str:
        return f"unknown benchmark {self.name!r}; available: {', '.join(self.available) or '(none)'}"


def register(name: str, fn: BenchFn | None = None) -> Any:
    """Register `fn` under `name`; usable as `register("x", fn)` or as a decorator `@register("x")`."""

    def add(f: BenchFn) -> BenchFn:
        BENCHMARKS[name] = f
        return f

    return add(fn) if fn is not None else add


def unregister(name: str) -> None:
    BENCHMARKS.pop(name, None)


def available() -> list[str]:
    """Names of the registered benchmarks, sorted."""
    return sorted(BENCHMARKS)


def resolve(name: str) -> BenchFn:
    """The benchmark's `run` callable; raises `UnknownBenchmark`."""
    try:
        target = BENCHMARKS[name]
    except KeyError:
        raise UnknownBenchmark(name) from None
    if callable(target):
        return target
    module = importlib.import_module(target)
    fn = getattr(module, "run", None)
    if not callable(fn):
        raise TypeError(f"benchmark module {target} has no run(quick, config) function")
    return fn
