"""The feature vector of each labeled sample: the served-feature log first, the online store as a fallback.

A :class:`~proto.cascade.v1.records_pb2.LabeledSample` points at the row ranking
scored it with (``features.served_feature_id`` + ``item_id``, a record of
:mod:`featurestore.served_log` on the ``features`` topic). Training on exactly
that vector is what keeps training and serving from skewing, so:

1. :class:`ServedFeatureCache` tails the ``features`` topic (assigned
   partitions, no consumer group, nothing committed) and keeps the *raw* record
   bytes by ``served_feature_id`` under a byte budget (``served_cache_mb``),
   oldest evicted first (a record holds every candidate of a request; only the
   impressed rows are ever needed, so records are decoded on demand). It starts
   reading at the first sample's impression time minus
   ``streaming.served_lookback_s`` (Kafka's time index), and reads ahead when a
   sample is newer than what it has seen. Every record read leaves its
   (partition, offset) in a bounded index, so one evicted from memory is read
   back from Kafka when a sample asks for it: negatives come an attribution
   window (minutes) after their request, longer than the memory budget holds
   records at a high request rate (ranking logs every candidate).
2. :class:`FeatureResolver` gives a batch of samples their rows: the served
   row when the record is there and carries every feature the encoder reads;
   else, when a :class:`~featurestore.client.FeatureClient` was given, the
   online store's values now (one read per user and impression time, with the
   impression time as the request's ``event_ts``); else the sample is skipped
   and counted (proto: "training then refetches features or skips the sample").
3. :class:`ServedRows` presents those rows as the ``OnlineFeatures`` surface
   the encoder reads (``key_columns``, ``column``, ``valid``), so
   ``encoder.encode_online`` turns them into the arrays ranking would compute
   for the same values. A served value is None exactly where the serving
   read was not valid (:func:`featurestore.served_log.served_record`), which
   is what ``valid`` reports.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from featurestore.served_log import DEFAULT_TOPIC as FEATURES_TOPIC
from featurestore.served_log import decode_record, served_record

_log = logging.getLogger("cascade.streaming.features")

SERVED = "served_log"
ONLINE = "online"
_TIME_SLACK_MS = 30_000


class ServedRows:
    """Rows of served-feature records seen as an ``OnlineFeatures`` (what ``FeatureEncoder.encode_online`` reads)."""

    def __init__(self, rows: Sequence[tuple[Mapping[str, Any], int]], join_keys: Sequence[str],
                 feature_set: str | None = None) -> None:
        self._rows = list(rows)
        self.feature_set = feature_set
        self.key_columns = {k: [rec["entity_keys"][k][i] for rec, i in self._rows] for k in join_keys}
        self._values = [rec["values"] for rec, _ in self._rows]
        self._index = [i for _, i in self._rows]
        self._cols: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, ref: str) -> list[Any]:
        col = self._cols.get(ref)
        if col is None:
            try:
                col = [values[ref][i] for values, i in zip(self._values, self._index)]
            except KeyError:  # a record without this feature: None there
                col = [_value(rec, ref, i) for rec, i in self._rows]
            self._cols[ref] = col
        return col

    def valid(self, ref: str) -> np.ndarray:
        return np.fromiter((v is not None for v in self.column(ref)), dtype=bool, count=len(self._rows))


def _value(rec: Mapping[str, Any], ref: str, i: int) -> Any:
    col = rec["values"].get(ref)
    return None if col is None else col[i]


class _Record:
    """A decoded served record with its item -> row index."""

    __slots__ = ("data", "rows", "usable")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.usable: bool | None = None  # has every feature the resolver reads (decided on first use)
        items = (data.get("entity_keys") or {}).get("item_id") or []
        self.rows = {str(v): i for i, v in enumerate(items)}


def _decode(raw: bytes) -> _Record | None:
    data = decode_record(raw)
    return _Record(data) if data is not None else None


class ServedFeatureCache:
    """Served-feature records by id, read from the ``features`` topic; see the module docstring."""

    def __init__(self, consumer: Any, topic: str, *, max_bytes: int, lookback_ms: int, index_max: int = 200_000,
                 fetcher: Callable[[], Any] | None = None) -> None:
        self.consumer = consumer
        self.topic = topic
        self.max_bytes = int(max_bytes)
        self.lookback_ms = int(lookback_ms)
        self._raw: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._decoded: OrderedDict[str, tuple[_Record | None, int]] = OrderedDict()
        self._decoded_bytes = 0
        self._decoded_max = max(8 << 20, self.max_bytes // 8)  # decoded records cost ~5x their JSON
        self._index: OrderedDict[str, tuple[Any, int]] = OrderedDict()  # sfid -> (partition, offset), read or not
        self._index_max = int(index_max)
        self._make_fetcher = fetcher
        self._fetcher: Any = None
        self._tps: list[Any] = []
        self._last_ms: dict[Any, int] = {}  # newest record timestamp read, per partition
        self.started = False
        self.stats = {"records": 0, "evicted": 0, "refetched": 0}

    @classmethod
    def from_config(cls, bootstrap: str, config: Any) -> ServedFeatureCache:
        from stack.clients import kafka_consumer

        s = config.streaming

        def consumer() -> Any:
            return kafka_consumer(bootstrap, config.kafka, None, max_partition_fetch_bytes=8 * 1024 * 1024)

        return cls(consumer(), FEATURES_TOPIC, max_bytes=int(s.served_cache_mb) * 1024 * 1024,
                   lookback_ms=int(s.served_lookback_s * 1000), fetcher=consumer)

    def close(self) -> None:
        self.consumer.close()
        if self._fetcher is not None:
            self._fetcher.close()

    def _start(self, since_ms: int) -> None:
        from kafka import TopicPartition

        parts = self.consumer.partitions_for_topic(self.topic) or set()
        self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.started = True
        if not self._tps:
            _log.warning("served-feature topic %r has no partitions: every sample will need the online store", self.topic)
            return
        self.consumer.assign(self._tps)
        found = self.consumer.offsets_for_times({tp: max(0, since_ms) for tp in self._tps})
        end = self.consumer.end_offsets(self._tps)
        for tp in self._tps:
            hit = found.get(tp)
            self.consumer.seek(tp, hit.offset if hit is not None else end[tp])

    def read(self, timeout_ms: int = 0) -> int:
        """Read what is available now (at most one poll); returns the number of records taken."""
        if not self._tps:
            return 0
        got = 0
        for tp, messages in self.consumer.poll(timeout_ms=timeout_ms, max_records=2000).items():
            for m in messages:
                self._last_ms[tp] = max(self._last_ms.get(tp, 0), int(m.timestamp or 0))
                if m.key is None or m.value is None:
                    continue
                sfid = m.key.decode(errors="replace")
                self._index[sfid] = (tp, m.offset)
                if len(self._index) > self._index_max:
                    self._index.popitem(last=False)
                self._put(sfid, m.value)
                got += 1
        return got

    def fetch(self, sfids: Sequence[str], wait_s: float) -> dict[str, _Record | None]:
        """Read back records evicted from memory (their offsets are indexed) with a second consumer; returns them.

        Samples mostly come in impression order (negatives when their
        attribution window closes), so the records wanted together sit close
        together: one seek per partition, then a sequential read, keeps the
        neighbours (the next batch's) in memory too.
        """
        wanted: dict[Any, set[int]] = {}
        for sfid in sfids:
            loc = self._index.get(sfid)
            if loc is not None and sfid not in self._raw:
                wanted.setdefault(loc[0], set()).add(loc[1])
        got: dict[str, _Record | None] = {}
        if not wanted or self._make_fetcher is None:
            return got
        if self._fetcher is None:
            self._fetcher = self._make_fetcher()
        deadline = time.monotonic() + wait_s
        for tp, offsets in wanted.items():
            self._fetcher.assign([tp])
            self._fetcher.seek(tp, min(offsets))
            last = max(offsets)
            while offsets and time.monotonic() < deadline:
                for m in self._fetcher.poll(timeout_ms=100, max_records=500).get(tp, []):
                    if m.key is None or m.value is None:
                        continue
                    sfid = m.key.decode(errors="replace")
                    if m.offset in offsets:  # handed over directly: the memory budget may not hold them all
                        offsets.discard(m.offset)
                        got[sfid] = _decode(m.value)
                    else:
                        self._put(sfid, m.value)  # a neighbour: likely wanted by the next batches
                    if m.offset >= last:
                        offsets.clear()
        self.stats["refetched"] += len(got)
        return got

    def _put(self, sfid: str, raw: bytes) -> None:
        old = self._raw.pop(sfid, None)
        if old is not None:
            self._bytes -= len(old)
        self._raw[sfid] = raw
        self._bytes += len(raw)
        dropped_decoded = self._decoded.pop(sfid, None)
        if dropped_decoded is not None:
            self._decoded_bytes -= dropped_decoded[1]
        self.stats["records"] += 1
        while self._bytes > self.max_bytes and len(self._raw) > 1:
            _, dropped = self._raw.popitem(last=False)
            self._bytes -= len(dropped)
            self.stats["evicted"] += 1

    def catch_up(self, until_ms: int, wait_s: float) -> None:
        """Read every partition up to its end offset now, or past `until_ms` (plus slack) by record time; at most `wait_s`.

        A served record is written when the request is served, before its
        impression's time, so once a partition's records are newer than the
        newest impression wanted (with ``_TIME_SLACK_MS`` for producer clock
        skew), reading that partition further cannot find it.
        """
        if not self.started:
            self._start(until_ms - self.lookback_ms)
        if not self._tps:
            return
        end = self.consumer.end_offsets(self._tps)
        deadline = time.monotonic() + wait_s
        while True:
            pending = [tp for tp in self._tps if self.consumer.position(tp) < end[tp]
                       and self._last_ms.get(tp, 0) <= until_ms + _TIME_SLACK_MS]
            if not pending or time.monotonic() >= deadline:
                return
            self.read(timeout_ms=50)

    def get(self, sfid: str) -> _Record | None:
        hit = self._decoded.get(sfid)
        if hit is not None:
            self._decoded.move_to_end(sfid)
            return hit[0]
        raw = self._raw.get(sfid)
        if raw is None:
            return None
        rec = _decode(raw)
        self._decoded[sfid] = (rec, len(raw))
        self._decoded_bytes += len(raw)
        while self._decoded_bytes > self._decoded_max and len(self._decoded) > 1:
            _, (_, size) = self._decoded.popitem(last=False)
            self._decoded_bytes -= size
        return rec

    def known(self, sfid: str) -> bool:
        """Whether the record was seen on the topic (in memory or indexed for a read-back)."""
        return sfid in self._raw or sfid in self._index

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._raw)


class FeatureResolver:
    """Samples -> (:class:`ServedRows`, which samples got features, where from); see the module docstring."""

    def __init__(self, encoder: Any, *, cache: ServedFeatureCache | None = None, client: Any = None,
                 feature_set: Any = None, wait_s: float = 1.0) -> None:
        self.encoder = encoder
        self.cache = cache
        self.client = client
        self.feature_set = feature_set  # a name or ResolvedFeatureSet for the online fallback
        self.wait_s = wait_s
        self.join_keys = [f.source for f in encoder.fields if f.is_key]
        self.refs = sorted({f.source for f in encoder.fields if not f.is_key})

    def _usable(self, rec: _Record) -> bool:
        if rec.usable is None:
            values = rec.data.get("values") or {}
            keys = rec.data.get("entity_keys") or {}
            rec.usable = all(r in values for r in self.refs) and all(k in keys for k in self.join_keys)
        return rec.usable

    def resolve(self, samples: Sequence[Any]) -> tuple[ServedRows, np.ndarray, np.ndarray]:
        """(rows of the samples that got features, mask over `samples`, source per sample: 0 none, 1 served, 2 online)."""
        n = len(samples)
        source = np.zeros(n, dtype=np.int8)
        rows: list[tuple[Mapping[str, Any], int] | None] = [None] * n
        wanted = [i for i, s in enumerate(samples) if s.features.served_feature_id]
        if self.cache is not None and wanted:
            records: dict[str, _Record | None] = {}  # each record looked up (and decoded) once per batch
            for i in wanted:
                sfid = samples[i].features.served_feature_id
                if sfid not in records:
                    records[sfid] = self.cache.get(sfid)
            missing = [sfid for sfid, rec in records.items() if rec is None]
            if missing:
                ahead = [sfid for sfid in missing if not self.cache.known(sfid)]
                if ahead:  # not read yet: read on
                    self.cache.catch_up(max(int(samples[i].impression_timestamp_ms) for i in wanted), self.wait_s)
                for sfid in missing:
                    records[sfid] = self.cache.get(sfid)
                evicted = [sfid for sfid in missing if records[sfid] is None and self.cache.known(sfid)]
                if evicted:  # read before, no longer in memory: read back
                    records.update(self.cache.fetch(evicted, self.wait_s))
            for i in wanted:
                s = samples[i]
                rec = records[s.features.served_feature_id]
                if rec is None or not self._usable(rec):
                    continue
                row = rec.rows.get(s.features.item_id or s.item_id)
                if row is not None:
                    rows[i] = (rec.data, row)
                    source[i] = 1
        if self.client is not None:
            absent = [i for i in range(n) if rows[i] is None]
            if absent:
                self._online(samples, absent, rows, source)
        ok = source > 0
        picked = [r for r in rows if r is not None]
        return ServedRows(picked, self.join_keys, self.encoder.feature_set), ok, source

    def _online(self, samples: Sequence[Any], missing: list[int], rows: list[Any], source: np.ndarray) -> None:
        groups: dict[tuple[str, int], list[int]] = {}
        for i in missing:
            s = samples[i]
            groups.setdefault((s.user_id, int(s.impression_timestamp_ms)), []).append(i)
        for (user, ts), members in groups.items():
            items = [samples[i].item_id for i in members]
            try:
                feats = self.client.get_online_features(None, {"user_id": [user] * len(items), "item_id": items},
                                                        self.feature_set or self.encoder.feature_set, {"event_ts": ts})
                rec = served_record(feats, served_feature_id="online")
            except Exception as exc:  # noqa: BLE001 - the store may be down: these samples are skipped
                _log.warning("online features for user %s unavailable: %s", user, exc)
                continue
            for row, i in enumerate(members):
                rows[i] = (rec, row)
                source[i] = 2


def fit_table(encoder: Any, rows: ServedRows) -> Any:
    """The Arrow table ``FeatureEncoder.fit`` reads (its numeric and bag columns, typed) of served rows."""
    import pyarrow as pa

    from featurestore.definitions import ValueType
    from featurestore.served_log import ARROW_TYPES

    cols = {f.column: pa.array(rows.column(f.source), type=ARROW_TYPES[ValueType(f.dtype)])
            for f in encoder.fields if f.kind in ("num", "bag")}
    return pa.table(cols) if cols else pa.table({"_": pa.array([], pa.int8())})


__all__ = ["ONLINE", "SERVED", "FeatureResolver", "ServedFeatureCache", "ServedRows", "fit_table"]
