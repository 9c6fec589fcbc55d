"""Run the recall channels concurrently, each under its own budget, and merge their candidates.

:class:`RecallMerger.recall` for one request:

1. **Plan.** Every configured channel gets its quota (configured, or the
   request's override). A channel with quota 0 is SKIPPED ("disabled"), one
   that is not loaded or not applicable to the user (``channel.applicable(query)``
   is False, e.g. item2item without recent items) is SKIPPED too and its quota
   goes to the runnable channels in proportion to theirs; so does the part of
   a quota beyond what a channel says it can return (``channel.capacity(query)``,
   e.g. item2item's seeds x stored neighbours). When the request
   wants fewer candidates than the quotas add up to, every quota shrinks in
   proportion (a 10-candidate call does not pull 1,000). Each channel is then
   asked for ``quota * (1 + overfetch)`` plus room for filtered items: the
   surplus is what backfill draws on.
2. **Run.** All channels start at once; each is awaited for at most its own
   budget (``channel_timeouts_ms``), capped by what is left of the request's
   deadline (:func:`serving.context.time_remaining` minus the safety margin).
   A channel past its budget is TIMEOUT (its call is left to finish in the
   background, not cancelled: see :meth:`RecallMerger._abandon`), one that raises (or returns
   something that is not a :class:`ChannelResult`) is ERROR; either makes the
   result degraded and neither fails the call.
3. **Filter.** Items in the request's exclude list and the user's recent
   items are dropped from every channel's list (and duplicates inside a list),
   and its fused scores computed, as soon as that channel answers: the work
   overlaps the slower channels (the embedding search) instead of following them.
4. **Select.** The first ``quota`` items of each channel (after filtering)
   are the primary set; if the union holds fewer than ``count`` items
   (overlap between channels, a channel that under-delivered, timed out or
   failed), the best remaining items of any channel fill up ("backfill");
   if it holds more, the best ``count`` stay. If even then fewer than
   ``count`` remain, a second round asks the channels that filled their ask
   (they may hold more) for the shortfall -- a cold user's missing history
   channels are made up by popular and fresh this way.
5. **Score.** Weighted reciprocal-rank fusion over every channel that
   returned the item: ``merged = sum_c weight_c / (rrf_k + position_c + 1)``
   (position after filtering). Candidates are ordered by it (ties: smaller
   item id), and each keeps every channel that returned it, with that
   channel's native score and rank.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recall.channel import Channel, ChannelResult, RecallQuery
from serving.context import safety_margin, time_remaining

DEFAULT_TIMEOUT_MS = 10.0
MAX_ABANDONED = 32  # late calls per channel left to finish before further late calls are cancelled
MAX_MESSAGE_BYTES = 1024


class ChannelStatus(enum.IntEnum):
    """Outcome of one channel; the numbers are recall.proto's ``ChannelStatus``."""

    OK = 1
    TIMEOUT = 2
    ERROR = 3
    SKIPPED = 4


@dataclass
class ChannelOutcome:
    """What happened to one channel in one request (recall.proto's ``ChannelStats``)."""

    name: str
    status: ChannelStatus
    quota: int  # configured or overridden (before redistribution and scaling)
    asked: int = 0  # k the channel was called with
    returned: int = 0  # items it returned (before filtering)
    latency_ms: float = 0.0
    message: str = ""
    result: ChannelResult | None = None
    # `result` made ready for the merge (see RecallMerger._prepare), computed as soon as the channel answered
    prepared: tuple[np.ndarray, ...] | None = field(default=None, repr=False)


@dataclass
class RecallResult:
    """Merged candidates, best first, with per-candidate channel attribution in CSR form."""

    items: np.ndarray  # int64
    merged_scores: np.ndarray  # float64, descending
    attr_offsets: np.ndarray  # int64, len(items) + 1: candidate i's attributions are [off[i], off[i+1])
    attr_channel: np.ndarray  # int32 index into `channels`
    attr_score: np.ndarray  # float64 channel-native score
    attr_rank: np.ndarray  # int32 0-based rank in the channel's own list
    channels: tuple[str, ...]
    outcomes: list[ChannelOutcome] = field(default_factory=list)
    backfilled: int = 0  # candidates taken beyond their channels' quotas
    topped_up: bool = False  # a second round asked the channels for more

    def __len__(self) -> int:
        return int(self.items.size)

    @property
    def degraded(self) -> bool:
        return any(o.status in (ChannelStatus.TIMEOUT, ChannelStatus.ERROR) for o in self.outcomes)

    @property
    def all_failed(self) -> bool:
        """Some channel was queried and none answered."""
        queried = [o for o in self.outcomes if o.status != ChannelStatus.SKIPPED]
        return bool(queried) and all(o.status != ChannelStatus.OK for o in queried)

    def outcome(self, name: str) -> ChannelOutcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def attributions(self, i: int) -> list[tuple[str, float, int]]:
        a, b = int(self.attr_offsets[i]), int(self.attr_offsets[i + 1])
        return [(self.channels[c], float(s), int(r))
                for c, s, r in zip(self.attr_channel[a:b].tolist(), self.attr_score[a:b].tolist(), self.attr_rank[a:b].tolist())]

    def channels_of(self, item: int) -> list[str]:
        idx = np.flatnonzero(self.items == item)
        return [c for c, _, _ in self.attributions(int(idx[0]))] if idx.size else []


def _empty_result(channels: tuple[str, ...], outcomes: list[ChannelOutcome]) -> RecallResult:
    z = np.empty(0, dtype=np.int64)
    return RecallResult(z, np.empty(0), np.zeros(1, dtype=np.int64), np.empty(0, np.int32), np.empty(0),
                        np.empty(0, np.int32), channels, outcomes)


def _truncate(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[:MAX_MESSAGE_BYTES - 3].decode("utf-8", "ignore") + "..."


def _allocate(quotas: Mapping[str, int], caps: Mapping[str, int], target: int) -> dict[str, int]:
    """Split `target` over the channels in proportion to their quotas, none above its cap (water-filling)."""
    alloc: dict[str, int] = {}
    free = {n: q for n, q in quotas.items() if q > 0}
    remaining = float(target)
    while free:
        total = sum(free.values())
        share = {n: remaining * q / total for n, q in free.items()}
        over = [n for n in free if n in caps and share[n] >= caps[n]]
        if not over:
            for n in free:
                alloc[n] = max(1, math.ceil(share[n]))
            break
        for n in over:
            alloc[n] = caps[n]
            remaining = max(0.0, remaining - caps[n])
            del free[n]
    return alloc


class RecallMerger:
    """Channels + quotas, budgets and weights; :meth:`recall` runs one request (see the module docstring)."""

    def __init__(self, channels: Sequence[Channel], *, quotas: Mapping[str, int],
                 timeouts_ms: Mapping[str, float] | None = None, weights: Mapping[str, float] | None = None,
                 rrf_k: float = 60.0, overfetch: float = 0.5, max_candidates: int = 5000,
                 order: Sequence[str] | None = None, topup: bool = True) -> None:
        by_name: dict[str, Channel] = {}
        for ch in channels:
            if ch.name in by_name:
                raise ValueError(f"two channels named {ch.name!r}")
            by_name[ch.name] = ch
        self.channels = by_name
        names = list(order) if order is not None else list(quotas)
        names += [n for n in by_name if n not in names]
        self.names: tuple[str, ...] = tuple(names)
        self.quotas = {n: int(quotas.get(n, 0)) for n in self.names}
        self.timeouts_ms = {n: float((timeouts_ms or {}).get(n, DEFAULT_TIMEOUT_MS)) for n in self.names}
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in self.names}
        if rrf_k < 0 or overfetch < 0:
            raise ValueError("rrf_k and overfetch must be >= 0")
        self.rrf_k = float(rrf_k)
        self.overfetch = float(overfetch)
        self.max_candidates = int(max_candidates)
        self.topup = topup
        self._abandoned: dict[str, set[asyncio.Future[Any]]] = {}

    @classmethod
    def from_config(cls, channels: Sequence[Channel], recall: Any, **overrides: Any) -> "RecallMerger":
        kwargs: dict[str, Any] = dict(quotas=recall.channel_quotas, timeouts_ms=recall.channel_timeouts_ms,
                                      weights=recall.channel_weights, rrf_k=recall.rrf_k, overfetch=recall.overfetch,
                                      max_candidates=recall.max_candidates, order=list(recall.channel_quotas))
        kwargs.update(overrides)
        return cls(channels, **kwargs)

    @property
    def versions(self) -> list[str]:
        """Versions of the channels' loaded data (``channel.version`` where present), in channel order."""
        out: list[str] = []
        for n in self.names:
            ch = self.channels.get(n)
            v = getattr(ch, "version", None)
            if v is None:  # the embedding channel: its live index's version
                v = getattr(getattr(ch, "live", None), "version", None)
            if v and str(v) not in out:
                out.append(str(v))
        return out

    # ------------------------------------------------------------------ planning

    def _plan(self, query: RecallQuery, count: int, overrides: Mapping[str, int] | None,
              n_filtered: int) -> tuple[list[ChannelOutcome], dict[str, int]]:
        outcomes: list[ChannelOutcome] = []
        runnable: dict[str, int] = {}
        caps: dict[str, int] = {}
        lost = 0
        for n in self.names:
            quota = int(overrides[n]) if overrides and n in overrides else self.quotas[n]
            ch = self.channels.get(n)
            if quota <= 0:
                outcomes.append(ChannelOutcome(n, ChannelStatus.SKIPPED, max(quota, 0), message="disabled (quota 0)"))
                continue
            if ch is None:
                outcomes.append(ChannelOutcome(n, ChannelStatus.SKIPPED, quota, message="channel not loaded"))
                lost += quota
                continue
            applicable = getattr(ch, "applicable", None)
            try:
                ok = applicable(query) if applicable is not None else True
            except Exception as exc:  # noqa: BLE001 - a broken channel fails open
                outcomes.append(ChannelOutcome(n, ChannelStatus.ERROR, quota, message=_truncate(f"applicable(): {type(exc).__name__}: {exc}")))
                lost += quota
                continue
            if not ok:
                outcomes.append(ChannelOutcome(n, ChannelStatus.SKIPPED, quota, message="not applicable to this user"))
                lost += quota
                continue
            outcomes.append(ChannelOutcome(n, ChannelStatus.OK, quota))
            runnable[n] = quota
            capacity = getattr(ch, "capacity", None)
            if capacity is not None:  # the channel cannot return more than this: the rest goes elsewhere up front
                try:
                    caps[n] = max(1, int(capacity(query)))
                except Exception:  # noqa: BLE001 - no bound then
                    pass
        effective = _allocate(runnable, caps, min(count, sum(runnable.values()) + lost))
        for o in outcomes:
            if o.name in effective:
                e = effective[o.name]
                o.asked = min(self.max_candidates, math.ceil(e * (1.0 + self.overfetch)) + min(n_filtered, e))
        return outcomes, effective

    # ------------------------------------------------------------------ running

    def _abandon(self, name: str, task: asyncio.Future[Any]) -> None:
        """A late channel call is left to finish on its own rather than cancelled.

        Cancelling an asyncio Redis command mid-reply makes the client drop the
        connection, so every timeout would cost the next request a reconnect;
        letting the (bounded: socket timeouts) call complete keeps the pool warm.
        Past ``MAX_ABANDONED`` unfinished calls per channel (a hung dependency),
        late calls are cancelled instead so they cannot pile up.
        """
        pending = self._abandoned.setdefault(name, set())
        if len(pending) >= MAX_ABANDONED:
            task.cancel()
        pending.add(task)

        def done(t: asyncio.Future[Any]) -> None:
            pending.discard(t)
            if not t.cancelled():
                t.exception()  # retrieved: a late failure is not "never retrieved"

        task.add_done_callback(done)

    def abandoned(self) -> dict[str, int]:
        """Late channel calls still running, per channel."""
        return {n: len(p) for n, p in self._abandoned.items() if p}

    async def _run(self, ch: Channel, query: RecallQuery, outcome: ChannelOutcome,
                   prepare: tuple[int, np.ndarray] | None = None) -> None:
        """One channel under its budget; with `prepare` (quota, blocked items) its answer is readied for the merge
        right away, while slower channels are still running (off the request's critical path)."""
        budget = self.timeouts_ms[outcome.name] / 1000.0
        remaining = time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - safety_margin(remaining))
        if budget <= 0:
            outcome.status = ChannelStatus.TIMEOUT
            outcome.message = "no time left before the request deadline"
            return
        t0 = time.perf_counter()
        task = asyncio.ensure_future(ch.recall(query, outcome.asked))
        try:
            done, _ = await asyncio.wait((task,), timeout=budget)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            outcome.status = ChannelStatus.TIMEOUT
            outcome.latency_ms = budget * 1000.0
            outcome.message = f"no answer within {budget * 1000.0:.1f} ms"
            self._abandon(outcome.name, task)
            return
        try:
            result = task.result()
        except Exception as exc:  # noqa: BLE001 - a failing channel degrades the result, never fails the call
            outcome.status = ChannelStatus.ERROR
            outcome.latency_ms = (time.perf_counter() - t0) * 1000.0
            outcome.message = _truncate(f"{type(exc).__name__}: {exc}")
            return
        outcome.latency_ms = (time.perf_counter() - t0) * 1000.0
        if not isinstance(result, ChannelResult):
            outcome.status = ChannelStatus.ERROR
            outcome.message = f"returned {type(result).__name__}, not a ChannelResult"
            return
        if len(result.items) > outcome.asked:
            result = ChannelResult(result.items[:outcome.asked], result.scores[:outcome.asked])
        outcome.result = result
        outcome.returned = int(len(result.items))
        if prepare is not None:
            outcome.prepared = self._prepare(outcome, prepare[0], prepare[1])

    async def recall(self, query: RecallQuery, count: int, *, quotas: Mapping[str, int] | None = None,
                     exclude: Iterable[int] | np.ndarray = ()) -> RecallResult:
        """Up to `count` merged candidates for `query`, never an excluded or recent item (see the module docstring)."""
        blocked = np.unique(np.concatenate([
            np.asarray(exclude if isinstance(exclude, np.ndarray) else list(exclude), dtype=np.int64).ravel(),
            np.asarray([int(x) for x in query.recent_items], dtype=np.int64),
        ]))
        outcomes, effective = self._plan(query, count, quotas, int(blocked.size))
        runs = [self._run(self.channels[o.name], query, o, (effective[o.name], blocked))
                for o in outcomes if o.name in effective]
        if runs:
            await asyncio.gather(*runs)
        result = self.merge(outcomes, effective, count, blocked)
        if self.topup and len(result) < count:
            if await self._top_up(query, outcomes, count - len(result), effective, blocked):
                result = self.merge(outcomes, effective, count, blocked)
                result.topped_up = True
        return result

    async def _top_up(self, query: RecallQuery, outcomes: list[ChannelOutcome], deficit: int,
                      effective: Mapping[str, int], blocked: np.ndarray) -> bool:
        """Second round when the union fell short: channels that filled their ask (so may hold more) are asked for
        `deficit` more. A late or failing top-up keeps the channel's first answer and degrades nothing."""
        more = [o for o in outcomes if o.status == ChannelStatus.OK and o.result is not None
                and o.returned >= o.asked and o.asked < self.max_candidates]
        if not more:
            return False
        again = [ChannelOutcome(o.name, ChannelStatus.OK, o.quota, asked=min(self.max_candidates, o.asked + deficit))
                 for o in more]
        await asyncio.gather(*(self._run(self.channels[a.name], query, a, (effective[a.name], blocked)) for a in again))
        grew = False
        for o, a in zip(more, again):
            o.latency_ms += a.latency_ms
            if a.status == ChannelStatus.OK and a.result is not None and a.returned > o.returned:
                o.result, o.returned, o.asked, o.prepared = a.result, a.returned, a.asked, a.prepared
                grew = True
        return grew

    # ------------------------------------------------------------------ merging

    def _prepare(self, o: ChannelOutcome, quota: int, blocked: np.ndarray) -> tuple[np.ndarray, ...]:
        """One channel's list for :meth:`merge`: blocked items and repeats dropped, then per entry (item, channel
        index, native score, native rank, fused score, within quota)."""
        assert o.result is not None
        items = np.asarray(o.result.items, dtype=np.int64)
        scores = np.asarray(o.result.scores, dtype=np.float64)
        ranks = np.arange(items.size, dtype=np.int32)
        keep = ~np.isin(items, blocked) if blocked.size else np.ones(items.size, bool)
        _, first = np.unique(items, return_index=True)  # duplicates inside one list: keep the first
        if first.size < items.size:
            dup = np.ones(items.size, bool)
            dup[first] = False
            keep &= ~dup
        items, scores, ranks = items[keep], scores[keep], ranks[keep]
        pos = np.arange(items.size)
        ci = np.full(items.size, self.names.index(o.name), dtype=np.int32)
        fused = self.weights[o.name] / (self.rrf_k + pos + 1.0)
        return items, ci, scores, ranks, fused, pos < quota

    def merge(self, outcomes: list[ChannelOutcome], effective: Mapping[str, int], count: int,
              blocked: np.ndarray) -> RecallResult:
        parts: list[tuple[np.ndarray, ...]] = []
        for o in outcomes:
            if o.status != ChannelStatus.OK or o.result is None or len(o.result.items) == 0:
                continue
            prepared = o.prepared if o.prepared is not None else self._prepare(o, effective.get(o.name, 0), blocked)
            if prepared[0].size:
                parts.append(prepared)
        if not parts or count <= 0:
            return _empty_result(self.names, outcomes)
        e_item, e_chan, e_score, e_rank, e_fused, e_inq = (np.concatenate(x) for x in zip(*parts))
        uniq, inv = np.unique(e_item, return_inverse=True)
        merged = np.bincount(inv, weights=e_fused, minlength=uniq.size)
        primary = np.bincount(inv, weights=e_inq.astype(np.float64), minlength=uniq.size) > 0
        pick = np.lexsort((uniq, -merged, ~primary))[:count]  # primary first, then by merged score
        backfilled = int((~primary[pick]).sum())
        final = pick[np.lexsort((uniq[pick], -merged[pick]))]
        slot = np.full(uniq.size, -1, dtype=np.int64)
        slot[final] = np.arange(final.size)
        e_slot = slot[inv]
        sel = np.flatnonzero(e_slot >= 0)
        order = sel[np.lexsort((e_chan[sel], e_slot[sel]))]
        counts = np.bincount(e_slot[order], minlength=final.size)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return RecallResult(
            items=uniq[final], merged_scores=merged[final], attr_offsets=offsets,
            attr_channel=e_chan[order], attr_score=e_score[order], attr_rank=e_rank[order],
            channels=self.names, outcomes=outcomes, backfilled=backfilled,
        )


__all__ = ["ChannelOutcome", "ChannelStatus", "RecallMerger", "RecallResult"]
