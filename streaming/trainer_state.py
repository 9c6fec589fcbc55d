"""What a trainer must not forget across a crash: learned-id memory, the learned set's fingerprint, the checkpoint.

* :class:`SampleDedup` -- the most recent ``capacity`` learned sample ids as
  64-bit murmur3 hashes in a ring (8 bytes each; a set beside it for lookups),
  so a sample the joiner emits twice (a replay, a retry) is learned once. Ids
  older than the ring are forgotten: the bound is the price of bounded memory.
  Two distinct ids colliding in 64 bits (a false "duplicate") has probability
  ~capacity / 2**64 per sample.
* :class:`LearnedSet` -- count, XOR and sum (mod 2**64) of the hashes of every
  learned id: an order-free fingerprint of the learned multiset. Comparing it
  with the produced ids' shows loss or duplication without storing the ids.
* :func:`save_checkpoint` / :func:`load_checkpoint` -- one ``.npz`` file (the
  learner's touched coordinates with their z and n, the dedup ring, and a JSON
  document: consumed offsets, counters, fingerprint, encoder, layout) written
  to a temporary file in the same directory, fsynced, renamed over the old one
  and the directory fsynced: a crash leaves the old or the new checkpoint,
  never a torn one. Offsets and state are taken at the same instant (between
  minibatches), so a restart consumes from exactly the next sample after the
  last one the restored state learned.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mmh3
import numpy as np

CHECKPOINT_FORMAT = "cascade.ftrl_checkpoint.v1"
CHECKPOINT_FILE = "checkpoint.npz"
_MASK64 = (1 << 64) - 1


def id_hash(sample_id: str) -> int:
    """64-bit murmur3 of a sample id (unsigned)."""
    return mmh3.hash64(sample_id, signed=False)[0]


class SampleDedup:
    """Bounded memory of learned sample ids; see the module docstring."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self.ring = np.zeros(self.capacity, dtype=np.uint64)
        self.pos = 0
        self.size = 0
        self._seen: set[int] = set()

    def __contains__(self, h: int) -> bool:
        return h in self._seen

    def fresh(self, hashes: Iterable[int]) -> np.ndarray:
        """Mask of the hashes not remembered and not repeated earlier in `hashes` (does not add them)."""
        batch: set[int] = set()
        out = []
        for h in hashes:
            ok = h not in self._seen and h not in batch
            batch.add(h)
            out.append(ok)
        return np.asarray(out, dtype=bool)

    def add(self, hashes: Iterable[int]) -> None:
        """Remember `hashes` (those already remembered are not refreshed); the oldest are forgotten beyond capacity."""
        seen = self._seen
        new = [h for h in dict.fromkeys(hashes) if h not in seen][-self.capacity:]
        k = len(new)
        if not k:
            return
        slots = (self.pos + np.arange(k)) % self.capacity
        if self.size + k > self.capacity:  # the slots about to be overwritten hold the oldest ids
            old = slots[slots < self.size] if self.size < self.capacity else slots
            seen.difference_update(self.ring[old].tolist())
        self.ring[slots] = np.asarray(new, dtype=np.uint64)
        seen.update(new)
        self.size = min(self.capacity, self.size + k)
        self.pos = (self.pos + k) % self.capacity

    def state(self) -> tuple[np.ndarray, dict[str, int]]:
        return self.ring[: self.size].copy() if self.size < self.capacity else self.ring.copy(), \
            {"pos": self.pos, "size": self.size, "capacity": self.capacity}

    @classmethod
    def restore(cls, ring: np.ndarray, meta: Mapping[str, int], capacity: int) -> SampleDedup:
        """The dedup state saved by :meth:`state`, re-bounded to `capacity` (the newest ids kept)."""
        d = cls(capacity)
        size, pos, old_cap = int(meta["size"]), int(meta["pos"]), int(meta["capacity"])
        ring = np.asarray(ring, dtype=np.uint64)
        ordered = ring[:size] if size < old_cap else np.concatenate([ring[pos:], ring[:pos]])  # oldest first
        d.add(int(h) for h in ordered[-capacity:])
        return d


class LearnedSet:
    """Count, XOR and sum of the hashes of learned sample ids."""

    def __init__(self, count: int = 0, xor: int = 0, total: int = 0) -> None:
        self.count, self.xor, self.total = int(count), int(xor), int(total)

    def add(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.count += 1
            self.xor ^= h
            self.total = (self.total + h) & _MASK64

    @classmethod
    def of(cls, sample_ids: Iterable[str]) -> LearnedSet:
        s = cls()
        s.add(id_hash(i) for i in sample_ids)
        return s

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "xor": f"{self.xor:016x}", "sum": f"{self.total:016x}"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LearnedSet:
        return cls(int(d["count"]), int(d["xor"], 16), int(d["sum"], 16))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LearnedSet) and (self.count, self.xor, self.total) == (other.count, other.xor, other.total)

    def __repr__(self) -> str:
        return f"LearnedSet({self.to_json()})"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(directory: Path, *, idx: np.ndarray, z: np.ndarray, n: np.ndarray, dedup: SampleDedup,
                    meta: Mapping[str, Any]) -> Path:
    """Write the checkpoint atomically (temp file + fsync + rename + directory fsync); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    ring, dmeta = dedup.state()
    doc = {"format": CHECKPOINT_FORMAT, **meta, "dedup": dmeta}
    buf = io.BytesIO()
    np.savez(buf, idx=np.asarray(idx, dtype=np.int64), z=np.asarray(z, dtype=np.float64),
             n=np.asarray(n, dtype=np.float64), dedup=ring, meta=np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8))
    final = directory / CHECKPOINT_FILE
    tmp = directory / f".{CHECKPOINT_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(directory)
    return final


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The checkpoint's arrays and JSON document (key ``meta``), or None when there is none."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in ("idx", "z", "n", "dedup")}
        meta = json.loads(data["meta"].tobytes().decode())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (format {meta.get('format')!r})")
    out["meta"] = meta
    return out


def clean_temp_files(directory: Path) -> None:
    """Remove temp files a killed writer left behind."""
    if directory.is_dir():
        for p in directory.glob(f".{CHECKPOINT_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "LearnedSet", "SampleDedup", "clean_temp_files", "id_hash",
           "load_checkpoint", "save_checkpoint"]
