"""RerankEngine: the rule chain applied to one request, in process or behind the gRPC service.

    engine = RerankEngine.from_config(config, redis_url)        # rules from config.rerank.rules_file
    result = await engine.rerank(request)                        # a RerankRequest proto or a RerankInput
    result.items, result.dropped, result.policy_version, result.degraded
    result.to_proto()                                            # RerankResponse

One request:

1. validate (:func:`rerank.convert.validate`; ValidationError names the field);
2. sort the candidates by score (stable) and the injections by priority;
3. **fetch**: every enabled Redis-backed rule queues its reads on one pipeline,
   sent as one round trip under ``rerank.fetch_timeout_ms`` (and the caller's
   deadline). If it fails or times out the result is degraded but still served
   (fail open): the seen filter is skipped, the blocked and availability
   filters run on what the request itself carries (fallback
   ``request_data_only``);
4. **apply**: the rules, in configured order, each a pure ``Slate -> Slate``;
   a rule that raises is skipped (its input slate carries on) and reported;
5. assemble the page: slot positions get their injections, the other positions
   the organic items in order, up to ``count``.

:meth:`RerankEngine.apply` is steps 2, 4 and 5 with the fetched values given:
the pure pass, for tests and offline replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import Counter, Histogram

from cascade.config import Config, RerankConfig
from proto.cascade.v1 import rerank_pb2
from rerank.convert import from_proto, validate
from rerank.impressions import backend_from_config, now_ms
from rerank.rules import RULE_TYPES, Rule, RuleContext, Stores
from rerank.rules_config import RulesConfig, load_rules
from rerank.types import Degradation, Entry, ItemKind, PlacedItem, RerankInput, RerankResult, Slate

_log = logging.getLogger("cascade.rerank")

DROPPED = Counter("cascade_rerank_dropped_total", "Candidates and injections removed by a rerank rule.", ["rule"])
SKIPPED = Counter("cascade_rerank_rule_skipped_total", "Rules skipped because they or their Redis read failed.", ["rule", "code"])
FETCH_LATENCY = Histogram(
    "cascade_rerank_fetch_seconds", "The one Redis round trip of the Redis-backed rules.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)

_REDIS_ERRORS: tuple[type[BaseException], ...]
try:
    import redis.exceptions as _rexc

    _REDIS_ERRORS = (_rexc.RedisError, OSError)
except ImportError:  # pragma: no cover
    _REDIS_ERRORS = (OSError,)


def _hiredis_connection_class() -> Any:
    """An asyncio connection that packs commands with hiredis, like the synchronous client does.

    ``redis.asyncio`` packs in pure Python, about 1 us per argument: 3-4 ms for the
    ~3,000 arguments of one rerank fetch (measured), against ~0.3 ms with hiredis.
    """
    import hiredis
    import redis.asyncio as aredis

    pack = hiredis.pack_command

    class HiredisPackingConnection(aredis.Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            if isinstance(args[0], str) and " " in args[0]:  # "CONFIG GET"-style names go as separate words
                args = (*args[0].split(), *args[1:])
            return [pack(args)]

        def pack_commands(self, commands: Any) -> list[bytes]:
            return [b"".join(self.pack_command(*cmd)[0] for cmd in commands)]

    return HiredisPackingConnection


def async_redis_client(url: str, config: Config) -> Any:
    """A ``redis.asyncio`` client (a RedisCluster when configured) for the engine's reads."""
    import redis.asyncio as aredis

    common: dict[str, Any] = {
        "socket_timeout": config.redis.socket_timeout_s,
        "socket_connect_timeout": config.redis.socket_timeout_s,
        "max_connections": config.redis.max_connections,
    }
    if config.redis.cluster:
        return aredis.RedisCluster.from_url(url, **common)
    if url.startswith("redis://"):
        try:
            common["connection_class"] = _hiredis_connection_class()
        except ImportError:  # pragma: no cover - hiredis is a dependency
            pass
    return aredis.Redis.from_url(url, **common)


class RerankEngine:
    """The configured rule chain. Cheap to call concurrently: it holds no per-request state."""

    def __init__(self, rules: RulesConfig, settings: RerankConfig | None = None, *, redis: Any = None,
                 prefix: str | None = None, max_request_items: int | None = None) -> None:
        self.settings = settings or RerankConfig()
        self.rules_config = rules
        self.policy_version = rules.version
        self.prefix = self.settings.key_prefix if prefix is None else prefix
        self.stores = Stores(self.prefix, backend_from_config(self.settings, self.prefix))
        self.rules: list[Rule] = [RULE_TYPES[p.type](p, self.stores) for p in rules.rules if p.enabled]
        self.redis = redis
        self.max_request_items = max_request_items

    @classmethod
    def from_config(cls, config: Config, redis_url: str | None = None, *, rules_path: Any = None,
                    prefix: str | None = None, redis: Any = None) -> RerankEngine:
        """The engine for ``config`` (rules from ``rules_path`` or ``config.rerank.rules_file``).

        Without ``redis`` (a ``redis.asyncio`` client) one is made for ``redis_url``;
        create the engine in the event loop that will use it.
        """
        rules = load_rules(rules_path, config.rerank)
        if redis is None and redis_url is not None:
            redis = async_redis_client(redis_url, config)
        return cls(rules, config.rerank, redis=redis, prefix=prefix, max_request_items=config.grpc.max_request_items)

    async def warm_up(self, timeout_s: float | None = None) -> bool:
        """Connect to Redis (and learn a cluster's slots) before the first request; False if it is not reachable.

        Without it the first request pays for the connection (tens of ms for a
        cluster) and its Redis-backed rules time out. Never raises: serving starts
        anyway and fails open.
        """
        if self.redis is None:
            return False
        timeout = self.settings.fetch_timeout_ms / 1000 * 40 if timeout_s is None else timeout_s
        try:
            if hasattr(self.redis, "initialize") and hasattr(self.redis, "get_nodes"):  # RedisCluster
                await asyncio.wait_for(self.redis.initialize(), timeout)
            await asyncio.wait_for(self.redis.ping(), timeout)
            return True
        except (*_REDIS_ERRORS, TimeoutError, asyncio.TimeoutError) as exc:
            _log.warning("rerank: Redis not reachable at start-up (%s: %s); serving degraded until it is",
                         type(exc).__name__, exc)
            return False

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    # ------------------------------------------------------------------ the request path

    def prepare(self, request: RerankInput | rerank_pb2.RerankRequest) -> RerankInput:
        """Validate (and convert a proto request); raises ValidationError."""
        if isinstance(request, rerank_pb2.RerankRequest):
            return from_proto(request, self.settings, now_ms(), self.max_request_items)
        return validate(request, self.settings, self.max_request_items)

    def active_rules(self, inp: RerankInput) -> list[Rule]:
        if not inp.disabled_rules:
            return self.rules
        return [r for r in self.rules if r.name not in inp.disabled_rules]

    async def rerank(self, request: RerankInput | rerank_pb2.RerankRequest) -> RerankResult:
        """Validate, fetch (one Redis round trip), apply the rules, assemble the page."""
        t0 = time.perf_counter()
        inp = self.prepare(request)
        rules = self.active_rules(inp)
        ctx = self.context(inp)
        slate = self.initial_slate(inp)
        t1 = time.perf_counter()
        fetched, degradations = await self.fetch(rules, ctx, slate)
        t2 = time.perf_counter()
        result = self._run(rules, slate, replace(ctx, fetched=fetched), inp.count, degradations)
        t3 = time.perf_counter()
        timings = {"prepare": (t1 - t0) * 1e3, "fetch": (t2 - t1) * 1e3, **result.timings_ms, "total": (t3 - t0) * 1e3}
        return RerankResult(result.items, result.dropped, result.policy_version, result.degradations, timings)

    def apply(self, request: RerankInput | rerank_pb2.RerankRequest, fetched: Mapping[str, Any] | None = None) -> RerankResult:
        """The pure pass with the Redis-backed rules' values given (``{rule name: value}``); no I/O.

        A Redis-backed rule without a value in ``fetched`` is skipped and reported as degraded.
        """
        inp = self.prepare(request)
        rules = self.active_rules(inp)
        ctx = replace(self.context(inp), fetched=dict(fetched or {}))
        missing = [Degradation(r.name, "UNAVAILABLE", "no fetched value given",
                               "request_data_only" if r.works_without_fetch else "skipped")
                   for r in rules if r.needs_fetch and r.name not in ctx.fetched]
        return self._run(rules, self.initial_slate(inp), ctx, inp.count, missing)

    # ------------------------------------------------------------------ steps

    def context(self, inp: RerankInput) -> RuleContext:
        return RuleContext(
            user_id=inp.user_id,
            now_ms=now_ms() if inp.now_ms is None else int(inp.now_ms),
            count=inp.count,
            blocked_item_ids=frozenset(inp.blocked_item_ids),
            blocked_authors=frozenset(inp.blocked_authors),
        )

    @staticmethod
    def initial_slate(inp: RerankInput) -> Slate:
        items = sorted((Entry.of(c) for c in inp.candidates), key=lambda e: -e.final_score)  # stable
        injections = sorted((Entry.of(c) for c in inp.injections), key=lambda e: -e.final_score)
        return Slate(tuple(items), tuple(injections))

    def _fetch_timeout(self) -> float:
        from serving.context import safety_margin, time_remaining

        budget = self.settings.fetch_timeout_ms / 1000.0
        remaining = time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - safety_margin(remaining))
        return budget

    async def fetch(self, rules: list[Rule], ctx: RuleContext, slate: Slate) -> tuple[dict[str, Any], list[Degradation]]:
        """One pipelined round trip for every Redis-backed rule; fail open."""
        wanting = [r for r in rules if r.needs_fetch]
        if not wanting:
            return {}, []
        if self.redis is None:
            return {}, [self._skip(r, "UNAVAILABLE", "no Redis configured") for r in wanting]
        pipe = self.redis.pipeline(transaction=False)
        queued: list[tuple[Rule, Any, int, int]] = []
        degradations: list[Degradation] = []
        for r in wanting:
            start = len(pipe)
            try:
                parse = r.queue(pipe, ctx, slate)
            except Exception as exc:  # noqa: BLE001 - a broken rule must not break the request
                _log.exception("rerank rule %s failed to queue its Redis read", r.name)
                degradations.append(self._skip(r, "ERROR", f"{type(exc).__name__}: {exc}"))
                continue  # whatever it queued still runs (reads only); its replies are ignored
            queued.append((r, parse, start, len(pipe)))
        replies: list[Any] = []
        if len(pipe):
            timeout = self._fetch_timeout()
            t0 = time.perf_counter()
            try:
                if timeout <= 0:
                    raise TimeoutError("no time left in the caller's deadline")
                replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), timeout)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                msg = f"Redis read exceeded {timeout * 1e3:.1f} ms" if timeout > 0 else str(exc)
                return {}, degradations + [self._skip(r, "TIMEOUT", msg) for r, *_ in queued]
            except _REDIS_ERRORS as exc:
                msg = f"Redis read failed: {type(exc).__name__}: {exc}"
                _log.warning("rerank fetch failed: %s", msg)
                return {}, degradations + [self._skip(r, "UNAVAILABLE", msg) for r, *_ in queued]
            finally:
                FETCH_LATENCY.observe(time.perf_counter() - t0)
        fetched: dict[str, Any] = {}
        for r, parse, start, end in queued:
            part = replies[start:end]
            try:
                err = next((x for x in part if isinstance(x, Exception)), None)
                if err is not None:
                    raise err
                fetched[r.name] = parse(part)
            except Exception as exc:  # noqa: BLE001
                _log.warning("rerank rule %s: bad Redis reply: %s", r.name, exc)
                degradations.append(self._skip(r, "ERROR", f"{type(exc).__name__}: {exc}"))
        return fetched, degradations

    @staticmethod
    def _skip(rule: Rule, code: str, message: str, *, fetch: bool = True) -> Degradation:
        SKIPPED.labels(rule.name, code).inc()
        partial = fetch and rule.works_without_fetch
        return Degradation(rule.name, code, message, "request_data_only" if partial else "skipped")

    def _run(self, rules: list[Rule], slate: Slate, ctx: RuleContext, count: int,
             degradations: list[Degradation]) -> RerankResult:
        skipped = {d.rule for d in degradations if d.fallback == "skipped"}
        timings: dict[str, float] = {}
        for r in rules:
            if r.name in skipped:
                continue
            t0 = time.perf_counter()
            n_dropped = len(slate.dropped)
            try:
                slate = r.apply(slate, ctx)
            except Exception as exc:  # noqa: BLE001 - fail open: skip the rule, keep its input
                _log.exception("rerank rule %s failed; skipped", r.name)
                degradations = [d for d in degradations if d.rule != r.name]
                degradations.append(self._skip(r, "ERROR", f"{type(exc).__name__}: {exc}", fetch=False))
                continue
            finally:
                timings[r.name] = (time.perf_counter() - t0) * 1e3
            if len(slate.dropped) > n_dropped:
                DROPPED.labels(r.name).inc(len(slate.dropped) - n_dropped)
        return RerankResult(tuple(assemble(slate, count)), slate.dropped, self.policy_version, tuple(degradations), timings)


def assemble(slate: Slate, count: int) -> list[PlacedItem]:
    """The page: injections at their slots, organic items in order elsewhere; slots past the organic items close up."""
    pending = dict(slate.placed)
    organic = iter(slate.items)
    chosen: list[Entry] = []
    shown: set[str] = set()
    while len(chosen) < count:
        e = pending.pop(len(chosen), None)
        if e is None:
            e = next(organic, None)
            if e is None:
                break
        if e.item_id not in shown:  # defensive: the page never shows an id twice
            shown.add(e.item_id)
            chosen.append(e)
    for _, e in sorted(pending.items()):
        if len(chosen) >= count:
            break
        if e.item_id not in shown:
            shown.add(e.item_id)
            chosen.append(e)
    out = []
    for pos, e in enumerate(chosen):
        c = e.candidate
        kind = ItemKind.ORGANIC if c.kind == ItemKind.UNSPECIFIED else ItemKind(c.kind)
        out.append(PlacedItem(c.item_id, pos, e.final_score, float(c.score), e.reasons, kind, c.channels))
    return out
