"""The joiner's checkpoint in Redis: state, input offsets and output positions, written in one transaction.

Keys (one hash tag, so one Redis Cluster slot and MULTI/EXEC works there too),
for joiner group ``G`` under prefix ``P``::

    P:{G}:meta      hash: input offsets, where to re-read impressions from, output end offsets, watermark, dedup
                    floor, topics, sizes
    P:{G}:snapshot  list: the state as of the last compaction, in chunks (streaming.join_state.encode_entries)
    P:{G}:deltas    list: one blob per checkpoint since: the keys it changed (final value, or a tombstone)
    P:{G}:epoch     integer: incremented by every joiner start; a checkpoint only commits under its own epoch

State = snapshot, then the deltas in order. A checkpoint appends one delta
and rewrites the meta in one MULTI/EXEC, guarded by WATCH on the epoch: a
joiner that another one has replaced (a paused zombie) cannot overwrite the
newer one's checkpoint. The cost of a checkpoint is the size of what changed,
not of the whole state; once the deltas outgrow both a floor and twice the
snapshot, :meth:`JoinCheckpoint.compact` writes a new snapshot and drops the
deltas, in the same kind of transaction (so Redis holds at most ~3x the state).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

# "4": open impressions without event types are not stored (re-read from the impressions topic from the offsets in
# the meta's "replay"); "3" (all of them stored, blobs of columns) and "2" (one record per entry) still load
FORMAT_VERSION = "4"
_READABLE = ("2", "3", "4")
_PAGE = 8  # list elements per LRANGE when loading (each up to a chunk)


class CheckpointFenced(RuntimeError):
    """Another joiner of the same group started after this one: this one must stop."""


@dataclass
class StoredCheckpoint:
    meta: dict[str, Any]
    snapshot: list[bytes]
    deltas: list[bytes]

    @property
    def blobs(self) -> Iterator[bytes]:
        yield from self.snapshot
        yield from self.deltas


class JoinCheckpoint:
    """Load, commit and compact one joiner group's checkpoint (see the module docstring)."""

    def __init__(self, client: Any, prefix: str, group: str) -> None:
        base = f"{prefix}:{{{group}}}"
        self.client = client
        self.meta_key = f"{base}:meta"
        self.snapshot_key = f"{base}:snapshot"
        self.deltas_key = f"{base}:deltas"
        self.epoch_key = f"{base}:epoch"

    def acquire(self) -> int:
        """Take over the group: returns this instance's epoch (older instances are fenced from now on)."""
        return int(self.client.incr(self.epoch_key))

    def load(self) -> StoredCheckpoint | None:
        raw = self.client.hgetall(self.meta_key)
        if not raw:
            return None
        meta = {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in raw.items()}
        if str(meta.get("version")) not in _READABLE:
            raise ValueError(f"checkpoint {self.meta_key} has format {meta.get('version')!r}, "
                             f"this joiner reads {', '.join(_READABLE)}; reset it (cascade streaming join --reset)")
        return StoredCheckpoint(meta, self._list(self.snapshot_key), self._list(self.deltas_key))

    def _list(self, key: str) -> list[bytes]:
        out: list[bytes] = []
        n = int(self.client.llen(key))
        for start in range(0, n, _PAGE):
            out.extend(self.client.lrange(key, start, min(n, start + _PAGE) - 1))
        return out

    def commit(self, epoch: int, deltas: Sequence[bytes], meta: Mapping[str, Any]) -> None:
        """Append `deltas` and replace the meta atomically; CheckpointFenced if a newer joiner took over."""
        self._transaction(epoch, meta, deltas=deltas)

    def compact(self, epoch: int, chunks: Sequence[bytes], meta: Mapping[str, Any]) -> None:
        """Replace snapshot and deltas by `chunks` (the whole state) and the meta atomically."""
        self._transaction(epoch, meta, snapshot=chunks)

    def _transaction(self, epoch: int, meta: Mapping[str, Any], *, deltas: Sequence[bytes] = (),
                     snapshot: Sequence[bytes] | None = None) -> None:
        fields = {k: json.dumps(v) for k, v in meta.items()}
        fields["version"] = json.dumps(FORMAT_VERSION)
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(self.epoch_key)
                current = pipe.get(self.epoch_key)
                if current is None or int(current) != epoch:
                    raise CheckpointFenced(f"joiner epoch {epoch} was superseded by {current!r} ({self.epoch_key})")
                pipe.multi()
                if snapshot is not None:
                    pipe.delete(self.snapshot_key, self.deltas_key)
                    if snapshot:
                        pipe.rpush(self.snapshot_key, *snapshot)
                elif deltas:
                    pipe.rpush(self.deltas_key, *deltas)
                pipe.hset(self.meta_key, mapping=fields)
                pipe.execute()
            except redis.WatchError:
                raise CheckpointFenced(f"joiner epoch {epoch} was superseded while checkpointing ({self.epoch_key})") from None

    def reset(self) -> None:
        """Forget the checkpoint (the next start reads the inputs from their beginning)."""
        self.client.delete(self.meta_key, self.snapshot_key, self.deltas_key)


__all__ = ["CheckpointFenced", "JoinCheckpoint", "StoredCheckpoint"]
