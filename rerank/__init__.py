"""rerank: the rule engine that turns scored candidates into a page.

Public API::

    from rerank import RerankEngine, RerankInput, Candidate, ItemKind
    engine = RerankEngine.from_config(config, redis_url)     # rules: config/rerank.toml
    result = await engine.rerank(RerankInput("u1", 20, candidates, injections))   # or a RerankRequest proto
    result.items            # PlacedItem(item_id, position, final_score, original_score, reasons, kind, channels)
    result.dropped          # Dropped(item_id, Reason(rule, explanation), kind)
    result.to_proto()       # cascade.v1.RerankResponse

    history = AsyncImpressionHistory.from_config(async_redis, config.rerank)   # ImpressionHistory: sync twin
    await history.record(user_id, item_ids, now_ms)
    mask = await history.seen(user_id, item_ids, since_ms)

    build_rerank_server(config, redis_url) -> GrpcServer       # rerank.service
    cascade rerank [serve|check]                               # rerank.cli

Modules: ``engine`` (fetch + pure pass + page assembly), ``rules/`` (one module
per rule), ``rules_config`` (the TOML chain), ``impressions`` (seen history),
``stores`` (block lists, item state), ``convert`` (validation, proto), ``service``.
"""

from rerank.engine import RerankEngine, assemble, async_redis_client
from rerank.impressions import AsyncImpressionHistory, ImpressionHistory
from rerank.rules_config import DEFAULT_RULES, RulesConfig, RulesConfigError, load_rules, parse_rules
from rerank.stores import BlockLists, ItemStateStore
from rerank.types import (
    Candidate,
    Degradation,
    Dropped,
    Entry,
    ItemKind,
    PlacedItem,
    Reason,
    RerankInput,
    RerankResult,
    Slate,
)

__all__ = [
    "DEFAULT_RULES",
    "AsyncImpressionHistory",
    "BlockLists",
    "Candidate",
    "Degradation",
    "Dropped",
    "Entry",
    "ImpressionHistory",
    "ItemKind",
    "ItemStateStore",
    "PlacedItem",
    "Reason",
    "RerankEngine",
    "RerankInput",
    "RerankResult",
    "RulesConfig",
    "RulesConfigError",
    "Slate",
    "assemble",
    "async_redis_client",
    "load_rules",
    "parse_rules",
]
