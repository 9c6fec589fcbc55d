"""Online feature store: typed rows and window state in Redis, read in bulk, written idempotently.

Layout, chosen by measurement
-----------------------------
Three layouts were compared on the embedded valkey-server 8.1 (2-core machine,
client and server sharing it), 10,000 entities x 20 FLOAT64 features, reads of
1,000 random entities decoded into 20 numpy columns, all three through redis-py
(`bench/online_features.py: compare_layouts`, re-run by every full bench; two
runs, the second with other jobs on the machine)::

                                               read p50     read p99     idempotent write
    (a) hash per entity, field per feature     13.5-14.7 ms  195-282 ms   44-51k rows/s
        (Feast's layout; raw 8-byte values, no protobuf: kinder than Feast)
    (b) string per (view, entity), packed row,  1.08-1.10 ms 1.37-1.55 ms  351-365k rows/s
        one MGET
    (c) hash per entity, packed field per view  5.7 ms       184-276 ms   237-277k rows/s

(a) and (c) need one command per entity (pipelined HMGET / HGET: 1,000 replies
to parse, and (a) 21,000 values), and their p99 is Python's garbage collector
walking those reply objects. (b) is one MGET returning 1,000 bulk strings that
decode with one `np.frombuffer`. **Chosen: (b).**

Writes stay idempotent with a server-side compare: the row's event_ts is its
first 8 bytes (big-endian), and a Lua script (`scripts.SET_IF_NEWER`) MGETs the
stored rows, keeps those whose stored event_ts is newer (or equal and
identical), and MSETs the rest, 1,000 rows per EVALSHA, every call of a batch
pipelined. Measured for (b), overwriting 10,000 rows (same two runs):

    Lua, 1,000 rows per call           225-256k rows/s   (chosen: atomic per call)
    Lua, one call per row              128-137k rows/s
    client MGET + compare + MSET       275-298k rows/s   (not atomic: a newer row written
                                                          between read and MSET is lost)
    raw MSET, no compare (ceiling)     563-614k rows/s

The client-side compare is ~20% faster but can overwrite a concurrent newer row
(materialization racing the streaming path or a second materializer), so the
atomic script wins. The store also sends its pipelines itself (hiredis-packed,
four commands per socket write, replies read at the end): the server starts on
the first calls while the rest are packed, which took the script path from
~340k to ~510k rows/s for 50k-row batches.

Keys (`layout`): ``{project}:{view}:{storage version}:{entity}``, the entity's
join-key values encoded deterministically (composite keys joined by ``|``,
escaped). No hash tags, so in a Redis Cluster keys spread over all slots; the
store groups multi-key commands per slot (one MGET per slot, one script call per
slot group), all in one cluster pipeline.

Codec (`codec`): a fixed per-view schema, encoded once per row at write
(vectorized from Arrow), decoded in bulk: 1,000 rows x 20 features in about
0.05 ms. Explicit NULLs are kept in a null bitmap (served as None, status
NULL_VALUE), never replaced by the default; a missing entity gets the
feature's default (NOT_FOUND); a row older than the view's ttl at `now` gets the
default too (OUTSIDE_MAX_AGE) — TTL is enforced on read.

Windowed views (`TileCodec`, `scripts.ADD_EVENTS` / `PUT_STATE`). Each window
hops by its own hop (`featurestore.definitions.default_hop`: 1d by 1 h, 7d by
6 h, 30d by 1 d), so per entity a view keeps, per hop, a ring of (longest
window with that hop / hop + 1) fixed-width 32-byte slots ``[tile_start,
count, per summed column: sum, non-null count]`` -- 25 + 29 + 31 slots, 2,720
bytes, for item_popularity's 1d/7d/30d, where one-hour tiles for everything
needed 721 slots and ~23 KB -- and per last-N column one list of the n most
recent (ts, value) entries (not tiled: the n most recent values inside a window
are the in-window members of the n most recent overall; a read filters them to
the window, ``hop_start(now) - window + hop <= ts <= now``). An entity's rings
lie back to back in one Redis string (``:n``; one key rather than one per hop:
an MGET of 1,000 keys of 2,720 bytes took 3.9 ms where 3,000 keys of 800-990
bytes took 5.5 ms, interleaved, same server), its lists in ``:l<i>``, its
stream offsets and batch/stream boundary in the ``:s`` hash; one hash tag keeps
them in one cluster slot. A read MGETs the strings of 1,000 entities, decodes
all rings with one ``np.frombuffer`` and sums every window of a ring with one
matrix product (which slot holds which tile as of `now` is the same for every
entity) -- no Python loop per entity, except building last-N lists. Streaming
(`add_events`, `featurestore.streaming.TileWriter`) sends many entities per
script call; per event the script reads and rewrites only the event's slot in
each ring (GETRANGE/SETRANGE, resetting a slot that holds an older tile) and
inserts into the lists, with the exactly-once offsets and the batch-through
check in the same atomic step. Batch writes (`write_tiles`) rebuild an
entity's rings and lists whole, leaving the tiles the stream owns
(`featurestore.materialize`, "Batch and stream").

Measured (quick runs on this 2-core machine, shared: other processes used
60-75% of its CPU during every run, so these are upper bounds on cost):

    1,000 items of item_popularity (6 features), every slot live    read p50 6.4 ms, p99 19 ms
      raw MGET of the same 1,000 keys, no decode (the floor)             p50 4.3 ms, p99 13 ms
      the old 721-slot rings (same machine, A/B, 5,000 items)            p50 130-220 ms
    TileWriter.apply, batches of 2,000 events (bench/stream_features.py):
      item_popularity (Zipf items)                                       94-99k events/s
      user_activity (+ last-20 list; uniform over 100k users, ~1 event
        per user per batch)                                              24-27k events/s
      both views from the same records (the updater on one topic)        18.8k records/s
                                                                         (37.6k view events/s)
      the old whole-ring script (A/B, 5,000 entities)                    1.7k-5.5k events/s
    server + client CPU per event: item_popularity 6 + 2 us, user_activity 22-24 + 4-5 us.

Measured end to end (`bench/online_features.py`, `bench/materialize.py`, full
runs): a 1,000-entity x 20-feature read p50 1.37-1.58 ms, p99 1.83-2.23 ms
(raw MGET of the same number of keys, no decoding: p50 1.07-1.19, p99
1.51-1.76 ms), 0.75-0.85 of the raw MGET's values/s; 1.0 ms / 1.2 ms on a quiet
machine (quick run). Of the client's ~0.4 ms: key building ~0.2 ms, decode and
result ~0.2 ms. Materialization 274-355k entity rows/s (Feast: 100k rows in
19 s, 5k rows/s), memory flat (peak RSS +50-70 MB for 0.2M or 1M rows).

Reads (`OnlineStore.read`)
--------------------------
One request is: per view, the distinct entities (`layout.EntityKeys.unique`: ranking's one user
beside 1,000 items is fetched and decoded once, its values repeated per row), their MGETs packed
straight from the entity ids into RESP bytes (`layout._MgetPacker`: no key string per entity;
1,000 ids in ~0.1 ms where key strings plus hiredis' `pack_command` took ~0.23 ms), written on one
pooled redis-py connection, and the replies parsed off that connection's socket by a
`hiredis.Reader` (the "lean" path, `features.online_lean_reads`), then decoded column-wise. Any
connection trouble on the lean path (reset, timeout, protocol error) disconnects that connection
and redoes the read through redis-py's connection API (its own retry, its errors), and so does a
RESP3 push message between replies (redis-py 8 speaks RESP3 by default; pushes come with client
tracking or maintenance notices); a Redis Cluster or client-side-caching client always takes
redis-py's path. Window state that an entity
does not have is not decoded (absent items used to be summed as 2.7 MB of zero rings), and a
stored list (genres) is decoded once per read however many rows hold it. Replies are streamed: a
view is decoded while Redis still answers the next one.

Measured (`bench/online_features.py`, full run, 3,000 requests of 1,000 entities x 20 features,
100k entities, no other work on the machine, 2026-11-28 12:28): read p50 1.54 / p99 2.30 ms
against raw MGET 1.14 / 1.67 ms, 0.738 of the raw MGET's values/s -- the same as before these
changes (1.57 / 2.19 ms, 0.739, at 09:46). The same store with ``lean_reads=False`` (key strings,
hiredis ``pack_command``, redis-py's reply path) in the same run: p50 1.60 / p99 2.42 ms, 1.04x the
lean path's mean time. So the client's ~0.4 ms over the raw MGET is not redis-py: packing 1,000
ids costs ~0.2 ms in a live read either way (micro-benchmarks of the packer promised 3x), decoding
and the result ~0.15 ms. Tried and dropped for windowed views: parsing fixed-size values in place
(numpy checks of every value's header instead of a bytes object per value): 1.2 ms less for a
1,000-item ring reply alone, but the same 5.1-5.3 ms per windowed read as hiredis in an interleaved
A/B -- there the client's ~2.3 ms over the raw MGET is the window arithmetic (~1.5 ms for 85 slots
x 1,000 items), not the transport.

Rows of fixed size are read in place (`featurestore.online.replies`, `OnlineStore(fixed_rows=True)`,
the default on the lean path): a view without variable-length features gets an MGET reply that is
fully regular when every key has a row, so its framing is checked with strided numpy compares and
`RowCodec.decode` reads the rows through a structured view of the receive buffer -- no bytes object
per row, no join, every value copied out. A missing row, a row of another size, an error or a RESP3
push sends that reply (and the rest of the request) to hiredis from where it starts. Distinct plain
int ids are checked as a sorted int64 array that packing reuses (one pass over the objects fewer
than a set(): unique + pack of 1,000 ids ~10-25 us less). Measured on the shared 2-core machine
(other work used 50-100% of a core in every run, so p99s there say nothing): reply parse + decode
of 1,000 x 171-byte rows 57 -> 37 us on replayed bytes; in whole reads interleaved in one run, fixed
rows vs hiredis rows 0.93-1.05x wall (``fixed_rows_speedup_mean``, bench online_features quick, 9
runs, median 1.01: within the noise; ~1-2% expected from the CPU saved), client CPU 1-8% less; the
lean path vs redis-py's path 1.06-1.23x where the same bench before these changes gave 1.00-1.05x;
ratio to the raw MGET 0.68-0.71 (before: 0.67-0.69, runs alternated 13:26-13:28). Small: the
client's time over the raw MGET is mostly packing 1,000
ids (~0.13-0.2 ms) and decode/result (~0.06-0.1 ms), which reading in place does not touch.

Pipelined reads (``features.online_pipeline_keys``, off by default): MGETs of that many keys, each
sent as soon as it is packed, so the server starts on the first while the client packs the rest and
the first replies are read while it answers the others. It only pays with an idle core to overlap
on: under the contention above, 250-key MGETs were 0.85-0.90x the one-MGET read
(``pipelined_speedup_mean``, same runs); a quiet-machine run of the bench decides. Tried and not
kept: a per-family dict of packed key bytes (no faster than formatting the ids: 1,000 lookups in a
100k-entry dict cost as much); numpy packers (digits by division, then one boolean compress: 180 vs
140 us; or grouped by digit count, rows un-permuted after: 114 + 10 vs 130 us). The garbage
collector is not behind the tail: 3,000 timed reads ran 4 generation-0 collections and no older one
(``gc.callbacks``), so ``gc.freeze()`` would not move p99.

Candidate items every ranking request shares are cached above the store, decoded, by
`featurestore.shared_cache` (a refresh-ahead snapshot, at most ``features.online_cache_ttl_ms``
old). An earlier cache of stored row bytes here saved only the transfer (rank p50 -0.8 ms with
empty windows) and expired in bursts; it was removed when the decoded cache replaced it.
"""

from featurestore.online.codec import RowCodec, TileCodec
from featurestore.online.layout import encode_entity, key_prefix, view_version
from featurestore.online.store import FeatureStatus, OnlineResult, OnlineStore, ReadPlan

__all__ = ["FeatureStatus", "OnlineResult", "OnlineStore", "ReadPlan", "RowCodec", "TileCodec",
           "encode_entity", "key_prefix", "view_version"]
