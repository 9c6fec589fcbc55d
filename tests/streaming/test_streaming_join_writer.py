"""The joiner's own record-batch framing, read back with kafka-python's record reader (no servers)."""

from __future__ import annotations

import random

from kafka.record.default_records import DefaultRecordBatch

from streaming.join_state import iter_samples, record_rest
from streaming.sample_writer import _frame, record_batch


def _read(batch: bytes) -> list[tuple[int, bytes, bytes]]:
    b = DefaultRecordBatch(bytearray(batch))
    assert b.validate_crc()
    return [(r.offset, r.key, r.value) for r in b]


def test_frames_read_back_as_the_samples() -> None:
    rng = random.Random(3)
    for _ in range(20):
        runs: list[tuple[bytes, list[bytes]]] = []
        want: list[tuple[bytes, bytes]] = []
        for _ in range(rng.randrange(1, 5)):
            tail = rng.choice((b"", b"\x60" + bytes(range(128, 134)), b"xyz"))
            rests = []
            for _ in range(rng.randrange(1, 120)):
                key = b"u%d" % rng.randrange(10**6)
                value = rng.randbytes(rng.choice((0, 5, 70, 300, 20_000)))
                full = record_rest(key, value + tail)  # a rest counts its run's tail in the value's length
                rests.append(full[:len(full) - len(tail)])
                want.append((key, value + tail))
            runs.append((tail, rests))
        assert [kv for tail, rests in runs for kv in iter_samples({tail: rests})] == want
        max_bytes = rng.choice((512 * 1024, 3000, 100))
        got = []
        for records, n in _frame(runs, max_bytes):
            batch = _read(record_batch(records, n, 1_700_000_000_000))
            assert [offset for offset, _, _ in batch] == list(range(n))  # offset deltas 0..n-1 (one and two bytes)
            assert n == 1 or len(records) <= max_bytes  # a batch over the limit holds one record
            got += [(k, v) for _, k, v in batch]
        assert got == want
