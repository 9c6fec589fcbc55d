"""Redis-held signals of the filters, besides the impression history: block lists and item state.

Layout (``prefix`` = ``rerank.key_prefix``):

* ``{prefix}:u:{<user>}:blocked_items`` / ``...:blocked_authors``: sets of ids
  the user blocked (hid, muted, reported). Read with one ``SMISMEMBER`` each
  over the candidates' ids / distinct authors.
* ``{prefix}:item_state``: one hash for the catalogue, field = item id, value
  ``"<available 0|1>,<expires_at_ms>"`` (``"0,0"``: out of stock; ``"1,<ms>"``:
  available until then). Only items with a restriction need a field; read with
  one ``HMGET`` over the candidates.

Every ``queue_*`` function adds commands to a pipeline (sync or asyncio: queueing
is the same) and returns the function that parses exactly those replies, so the
engine sends all Redis-backed rules' reads in one round trip. The writers take a
synchronous client (tests, catalogue jobs, the demo).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rerank.impressions import Parse, user_key


def blocked_items_key(prefix: str, user_id: str) -> str:
    return user_key(prefix, user_id, "blocked_items")


def blocked_authors_key(prefix: str, user_id: str) -> str:
    return user_key(prefix, user_id, "blocked_authors")


def item_state_key(prefix: str) -> str:
    return f"{prefix}:item_state"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def queue_blocked(pipe: Any, prefix: str, user_id: str, item_ids: Sequence[str], authors: Sequence[str]) -> Parse:
    """Queue the block-list lookups; the parser returns (blocked item ids, blocked authors)."""
    ids = list(item_ids)
    auth = list(authors)
    if ids:
        pipe.smismember(blocked_items_key(prefix, user_id), ids)
    if auth:
        pipe.smismember(blocked_authors_key(prefix, user_id), auth)

    def parse(replies: Sequence[Any]) -> tuple[frozenset[str], frozenset[str]]:
        it = iter(replies)
        items = frozenset(i for i, hit in zip(ids, next(it)) if hit) if ids else frozenset()
        authors_hit = frozenset(a for a, hit in zip(auth, next(it)) if hit) if auth else frozenset()
        return items, authors_hit

    return parse


def queue_item_state(pipe: Any, prefix: str, item_ids: Sequence[str]) -> Parse:
    """Queue the item-state lookup; the parser returns {item id: (available, expires_at_ms)} for items with a state."""
    ids = list(item_ids)
    if ids:
        pipe.hmget(item_state_key(prefix), ids)

    def parse(replies: Sequence[Any]) -> dict[str, tuple[bool, int]]:
        if not ids:
            return {}
        out: dict[str, tuple[bool, int]] = {}
        for i, raw in zip(ids, replies[0]):
            if raw is None:
                continue
            avail, _, expires = _text(raw).partition(",")
            out[i] = (avail.strip() not in ("0", "false"), int(expires or 0))
        return out

    return parse


class BlockLists:
    """Write a user's block lists (synchronous client)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def block_items(self, user_id: str, item_ids: Iterable[str]) -> None:
        ids = list(item_ids)
        if ids:
            self.client.sadd(blocked_items_key(self.prefix, user_id), *ids)

    def block_authors(self, user_id: str, authors: Iterable[str]) -> None:
        auth = list(authors)
        if auth:
            self.client.sadd(blocked_authors_key(self.prefix, user_id), *auth)

    def unblock_items(self, user_id: str, item_ids: Iterable[str]) -> None:
        ids = list(item_ids)
        if ids:
            self.client.srem(blocked_items_key(self.prefix, user_id), *ids)


class ItemStateStore:
    """Write catalogue state: availability and expiry (synchronous client)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def set_many(self, states: Mapping[str, tuple[bool, int]]) -> None:
        """{item id: (available, expires_at_ms or 0)}."""
        if states:
            self.client.hset(item_state_key(self.prefix), mapping={
                i: f"{1 if avail else 0},{int(expires)}" for i, (avail, expires) in states.items()
            })

    def set(self, item_id: str, *, available: bool = True, expires_at_ms: int = 0) -> None:
        self.set_many({item_id: (available, expires_at_ms)})

    def clear(self, item_ids: Iterable[str]) -> None:
        ids = list(item_ids)
        if ids:
            self.client.hdel(item_state_key(self.prefix), *ids)
