"""Materialization throughput: entity rows/s into the online store, against a raw MSET ceiling.

A row is one entity's 20 FLOAT64 features of one view. The offline side is an
in-memory stream of 10k-row Arrow batches (one pooled batch with fresh entity
ids each time, so the source costs nothing and memory stays flat); the timed
part is `featurestore.materialize.materialize` end to end: re-chunking to
`config.features.materialize_chunk_rows`, key building, packing, the
compare-and-write script, the watermark. The ceiling is pipelined MSET (1,000
pairs per command) of the same pre-encoded bytes into fresh keys on the same
server in the same run, streamed without waiting for replies: no encoding, no
comparison.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from hiredis import pack_command

from bench.online_features import N_FEATURES, bench_table, bench_view
from bench.stats import rate
from cascade.config import Config
from featurestore.materialize import materialize
from featurestore.online import OnlineStore
from stack import Stack
from stack.clients import redis_client

SOURCE_BATCH = 10_000


def _step(msg: str) -> None:
    try:
        from bench.harness import step

        step(msg)
    except Exception:  # noqa: BLE001 - outside the harness
        print(msg, flush=True)


class PooledOffline:
    """`latest_rows` streaming `rows` rows from one pooled batch with shifted entity ids."""

    def __init__(self, rows: int, ts: datetime) -> None:
        self.rows = rows
        self.pool = bench_table(SOURCE_BATCH, ts=ts).to_batches()[0]

    def latest_rows(self, view: Any, as_of: datetime, since: datetime | None) -> Iterator[pa.RecordBatch]:
        idx = self.pool.schema.get_field_index("user_id")
        for start in range(0, self.rows, SOURCE_BATCH):
            n = min(SOURCE_BATCH, self.rows - start)
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            yield self.pool.slice(0, n).set_column(idx, "user_id", ids)

    def tiles(self, view: Any, start: Any, end: Any, *, ring: bool = False) -> Iterator[pa.RecordBatch]:
        return iter(())


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(quick: bool, config: Config) -> dict[str, Any]:
    rows = 200_000 if quick else 1_000_000
    chunk = config.features.materialize_chunk_rows
    t_first = datetime(2025, 1, 1, tzinfo=timezone.utc)
    with Stack(config, kafka=False) as stack:
        client = redis_client(stack.redis_url, config.redis)
        project = f"benchm{random.randrange(1 << 30):x}"
        store = OnlineStore(client, project, config.features.online_batch_keys)
        view = bench_view()
        end = t_first + timedelta(days=1)

        # Warm up (script load, allocator) on a separate project, then measure.
        warm = OnlineStore(client, project + "w")
        materialize(PooledOffline(20_000, t_first), warm, [view], None, end, None, chunk_rows=chunk, progress=False)

        rss0 = _maxrss_mb()
        _step(f"materialize {rows:,} rows x {N_FEATURES} features, chunks of {chunk:,} (fresh keys)")
        t0 = time.perf_counter()
        first = materialize(PooledOffline(rows, t_first), store, [view], None, end, None, chunk_rows=chunk)
        first_s = time.perf_counter() - t0
        rss1 = _maxrss_mb()
        assert first.rows_written == rows

        _step("rerun over the same range (every row skipped)")
        t0 = time.perf_counter()
        again = materialize(PooledOffline(rows, t_first), store, [view], t_first, end, None, chunk_rows=chunk)
        again_s = time.perf_counter() - t0
        assert again.rows_written == 0

        _step("newer rows for every entity (every row replaced)")
        t_second = t_first + timedelta(hours=1)
        t0 = time.perf_counter()
        newer = materialize(PooledOffline(rows, t_second), store, [view], t_first, end + timedelta(hours=1), None,
                            chunk_rows=chunk)
        newer_s = time.perf_counter() - t0
        assert newer.rows_written == rows

        _step("raw pipelined MSET ceiling of the same bytes")
        raw_store = OnlineStore(client, project + "raw")
        src = PooledOffline(rows, t_first)
        encoded = [raw_store.encode_rows(view, b) for b in src.latest_rows(view, end, None)]
        conn = client.connection_pool.get_connection()
        t0 = time.perf_counter()
        sent = 0
        for keys, values in encoded:  # hiredis-packed, 4 commands per write, replies read once at the end
            cmds = [("MSET", *[x for kv in zip(keys[i: i + 1000], values[i: i + 1000]) for x in kv])
                    for i in range(0, len(keys), 1000)]
            for i in range(0, len(cmds), 4):
                conn.send_packed_command([b"".join(map(pack_command, cmds[i: i + 4]))])
            sent += len(cmds)
        for _ in range(sent):
            conn.read_response()
        raw_s = time.perf_counter() - t0
        client.connection_pool.release(conn)
        # Encode-only cost (client side of our path).
        t0 = time.perf_counter()
        for batch in src.latest_rows(view, end, None):
            raw_store.encode_rows(view, batch)
        encode_s = time.perf_counter() - t0
        del encoded
        client.flushdb()
        client.close()

    first_rate = rate(rows, first_s)
    raw_rate = rate(rows, raw_s)
    return {
        "rows": rows,
        "features_per_row": N_FEATURES,
        "chunk_rows": chunk,
        "materialize_rows_per_s": first_rate,
        "materialize_update_rows_per_s": rate(rows, newer_s),
        "materialize_rerun_skip_rows_per_s": rate(rows, again_s),
        "raw_mset_rows_per_s": raw_rate,
        "ratio_to_raw_mset": first_rate / raw_rate,
        "ratio_update_to_raw_mset": rate(rows, newer_s) / raw_rate,
        "encode_only_rows_per_s": rate(rows, encode_s),
        "materialize_s": first_s,
        "maxrss_growth_mb": rss1 - rss0,
        "feast_reference_rows_per_s": 100_000 / 19.0,
        "goal_rows_per_s": 200_000,
        "method": [
            "embedded valkey-server; client and server share the machine's cores",
            f"materialize() of {rows:,} entity rows x {N_FEATURES} FLOAT64 from an in-memory stream of "
            f"{SOURCE_BATCH:,}-row Arrow batches, chunks of {chunk:,} rows, tqdm on stderr",
            "each write: server-side Lua compare-and-write of 1,000 rows per EVALSHA, all of a chunk pipelined; "
            "the next chunk is encoded while the previous is written (one worker thread)",
            "fresh keys (insert), then rerun over the same range (all skipped), then newer rows for all (replace)",
            "ceiling: pipelined MSET of 1,000 pairs per command of the same pre-encoded bytes into fresh keys "
            "(hiredis-packed, 4 commands per socket write, all replies read at the end, one connection)",
            "maxrss_growth_mb: growth of the process's peak RSS during the first run (flat memory = near 0)",
        ],
    }


if __name__ == "__main__":
    import json

    from cascade.config import get_config

    print(json.dumps(run(True, get_config()), indent=1, default=str))
