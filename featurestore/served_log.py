"""The served-feature log: every feature vector ranking scored with, as it was served.

Ranking logs the :class:`~featurestore.client.OnlineFeatures` it scored a
request with (one record per request, one row per candidate) and returns the
record's id as ``RankResponse.served_feature_id``; impressions and labeled
samples point at a row of it (``FeatureVectorRef``). Training can then use
exactly what the model saw, and :mod:`featurestore.skew` can replay each
vector through the offline point-in-time join to find training/serving skew.

Record format (``cascade.served_features.v1``)
----------------------------------------------
One UTF-8 JSON object per Kafka record on the ``features`` topic, keyed by
``served_feature_id``; columnar, so a 500-candidate request is one record::

    {
      "format": "cascade.served_features.v1",
      "served_feature_id": "9f1c...",          # unique; RankResponse.served_feature_id
      "request_id": "9f1c..." | null,
      "event_ts_ms": 1717171717123,            # serving time: the `now` of the online read (epoch ms, UTC)
      "feature_set": "deepfm_movielens" | null,
      "feature_set_version": 3 | null,         # registry version of the set (null when unknown)
      "entity_keys": {"user_id": [7, 7], "item_id": [11, 12]},   # one column per join key, one entry per row
      "refs": ["user_profile:age", ...],       # column order
      "values": {"user_profile:age": [31, 31], ...},             # per ref, one JSON value per row; null = none
      "status": {"user_profile:age": [1, 1], ...},               # per ref, featurestore.online.FeatureStatus ints
      "request_context": {"event_ts": "2024-06-01T12:00:00+00:00", ...}  # JSON-able inputs of request features
    }

Values are what the model was given as semantic values: the stored value, the
feature's default where the status is NOT_FOUND / OUTSIDE_MAX_AGE /
DEFAULTED, null where there is none (NULL_VALUE, or a missing value without
default). Row ``i`` of a record is identified by ``(served_feature_id, i)``.

Tabular form (:func:`served_table`, Parquet via :func:`served_log_to_parquet`):
one row per served vector, columns ``served_feature_id``, ``row`` (int32),
``event_ts`` (timestamp[ms, UTC]), ``request_id``, ``feature_set``,
``feature_set_version`` (int32), the join keys, one column per feature named
``<view>__<feature>`` (the offline store's training-set names, typed as the
definitions declare when a repository is given), ``_status`` (a struct of
uint8 statuses with one field per ``view:feature`` ref) and ``_context`` (the
request context as a JSON string).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter

from featurestore.definitions import ValueType
from featurestore.online.codec import to_micros
from featurestore.repository import column_name

_log = logging.getLogger("cascade.features.served_log")

FORMAT = "cascade.served_features.v1"
DEFAULT_TOPIC = "features"

SERVED_LOG_RECORDS = Counter(
    "cascade_features_served_log_records_total",
    "Served feature vectors handed to the served-feature log, by outcome (sent, dropped: queue full, failed: Kafka error).",
    ["outcome"],
)

ARROW_TYPES: dict[ValueType, pa.DataType] = {
    ValueType.FLOAT64: pa.float64(),
    ValueType.INT64: pa.int64(),
    ValueType.STRING: pa.string(),
    ValueType.BOOL: pa.bool_(),
    ValueType.FLOAT_LIST: pa.list_(pa.float64()),
    ValueType.INT64_LIST: pa.list_(pa.int64()),
    ValueType.STRING_LIST: pa.list_(pa.string()),
}

META_COLUMNS = ("served_feature_id", "row", "event_ts", "request_id", "feature_set", "feature_set_version")
STATUS_COLUMN = "_status"
CONTEXT_COLUMN = "_context"


# ----------------------------------------------------------------------------- records


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _key_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def served_record(features: Any, *, served_feature_id: str, request_id: str | None = None,
                  feature_set: str | None = None, feature_set_version: int | None = None,
                  entity_keys: Mapping[str, Sequence[Any]] | None = None,
                  request_context: Mapping[str, Any] | None = None, served_at: datetime | None = None) -> dict[str, Any]:
    """The log record (a JSON-able dict) of one served result; see the module docstring.

    `features`: an :class:`~featurestore.client.OnlineFeatures` (which knows its
    keys, serving time, feature set and request context), or any
    ``OnlineResult`` with `entity_keys` and `served_at` given.
    """
    keys = entity_keys if entity_keys is not None else getattr(features, "key_columns", None)
    if keys is None:
        raise ValueError("entity_keys ({join_key: values}) are needed to log a plain OnlineResult")
    at = served_at or getattr(features, "served_at", None)
    if at is None:
        raise ValueError("served_at is needed to log a plain OnlineResult")
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    refs = list(features.refs)
    status = features.status
    return {
        "format": FORMAT,
        "served_feature_id": served_feature_id,
        "request_id": request_id,
        "event_ts_ms": to_micros(at) // 1000,
        "feature_set": feature_set if feature_set is not None else getattr(features, "feature_set", None),
        "feature_set_version": feature_set_version if feature_set_version is not None else getattr(features, "feature_set_version", None),
        "entity_keys": {name: [_key_value(v) for v in col] for name, col in keys.items()},
        "refs": refs,
        "values": {ref: features.values(ref) for ref in refs},  # plain Python already (encode_record checks)
        "status": {ref: status[:, j].tolist() for j, ref in enumerate(refs)},
        "request_context": _jsonable(request_context if request_context is not None else getattr(features, "request_context", {})),
    }


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The record's JSON bytes, with orjson: a 1,000-row record (20 features) took ~11 ms through
    `_jsonable` and ``json.dumps``, 0.2 ms now. Values are plain Python as `OnlineResult.values` gives
    them; anything else is converted on the way. NaN is written as null (orjson's JSON is strict)."""
    try:
        return orjson.dumps(record)
    except TypeError:
        return orjson.dumps(_jsonable(record))


def decode_record(data: bytes | str) -> dict[str, Any] | None:
    """A record from its bytes; None for anything that is not a served-feature record (other producers)."""
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # the standard library's JSON also takes NaN/Infinity literals (older producers wrote them)
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    return record


# ----------------------------------------------------------------------------- the logger


class ServedFeatureLogger:
    """Writes served vectors to Kafka without ever blocking the serving path.

    :meth:`log` only puts the result on a bounded queue (a full queue drops the
    record and counts it, rather than slowing ranking down); a daemon thread
    builds the JSON record and hands it to the producer, whose own batching
    (``linger_ms``) groups records into few requests. ``flush`` waits for both.
    Outcomes are counted in ``stats`` and the
    ``cascade_features_served_log_records_total`` metric.
    """

    def __init__(self, producer: Any, topic: str = DEFAULT_TOPIC, *, max_pending: int = 10_000,
                 owns_producer: bool = False) -> None:
        self.producer = producer
        self.topic = topic
        self._owns = owns_producer
        self._queue: queue.Queue[tuple[Any, dict[str, Any]] | None] = queue.Queue(max_pending)
        self._lock = threading.Lock()
        self._stats = {"queued": 0, "sent": 0, "dropped": 0, "failed": 0}
        self._in_flight = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="served-feature-log", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, bootstrap: str, config: Any = None, *, topic: str | None = None, max_pending: int = 10_000,
                    **producer_overrides: Any) -> ServedFeatureLogger:
        """A logger with its own producer (``stack.clients.kafka_producer``) on the configured ``features`` topic."""
        from stack.clients import kafka_producer

        if config is None:
            from cascade.config import get_config

            config = get_config()
        topic = topic or DEFAULT_TOPIC
        if topic not in config.kafka.topics:
            _log.warning("topic %r is not among the configured topics %s", topic, sorted(config.kafka.topics))
        options = {"linger_ms": 20, **producer_overrides}
        return cls(kafka_producer(bootstrap, config.kafka, **options), topic, max_pending=max_pending, owns_producer=True)

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def log(self, features: Any, *, served_feature_id: str | None = None, request_id: str | None = None,
            **record_fields: Any) -> str | None:
        """Queue one served result; returns its ``served_feature_id`` (given, else request_id, else a new uuid) or None if dropped.

        `record_fields` are passed to :func:`served_record` (``feature_set``,
        ``entity_keys``, ``request_context``, ...). Never blocks.
        """
        sid = served_feature_id or request_id or uuid.uuid4().hex
        return sid if self._put((features, {"served_feature_id": sid, "request_id": request_id, **record_fields})) else None

    def log_record(self, record: Mapping[str, Any]) -> bool:
        """Queue a ready record (from :func:`served_record`); False if dropped."""
        return self._put((None, dict(record)))

    def _put(self, item: tuple[Any, dict[str, Any]]) -> bool:
        if self._closed:
            raise RuntimeError("served-feature logger is closed")
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._count("dropped")
            return False
        self._count("queued")
        return True

    def _count(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self._stats[outcome] += n
        if outcome != "queued":
            SERVED_LOG_RECORDS.labels(outcome).inc(n)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._send(*item)
            except Exception:  # noqa: BLE001 - never let one bad record kill the logger
                _log.exception("could not log a served feature vector")
                self._count("failed")
            finally:
                self._queue.task_done()

    def _send(self, features: Any, fields: dict[str, Any]) -> None:
        record = fields if features is None else served_record(features, **fields)
        key = str(record["served_feature_id"]).encode()
        with self._lock:
            self._in_flight += 1
        future = self.producer.send(self.topic, key=key, value=encode_record(record))
        future.add_callback(self._on_sent)
        future.add_errback(self._on_error)

    def _on_sent(self, _metadata: Any) -> None:
        with self._lock:
            self._in_flight -= 1
            self._stats["sent"] += 1
        SERVED_LOG_RECORDS.labels("sent").inc()

    def _on_error(self, exc: BaseException) -> None:
        _log.warning("served-feature record not written to Kafka: %s", exc)
        with self._lock:
            self._in_flight -= 1
        self._count("failed")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued record was sent (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.002)
        if self._queue.unfinished_tasks:
            return False
        self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    return True
            time.sleep(0.002)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, stop the thread, and close the producer when this logger created it."""
        if self._closed:
            return
        self.flush(timeout_s)
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._owns:
            self.producer.close(timeout=timeout_s)

    def __enter__(self) -> ServedFeatureLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- reading


def read_served_log_kafka(bootstrap: str, kafka_config: Any = None, topic: str = DEFAULT_TOPIC, *,
                          since: datetime | None = None, max_records: int | None = None,
                          timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Every served-feature record on `topic` (from `since`, else the beginning) up to the end offsets at call time.

    Reads without a consumer group (nothing is committed); records of other
    formats on the topic are skipped. Stops at `max_records` or `timeout_s`.

    "Up to the end offsets" means until each partition's position has passed
    the end offset read at the start; records fetched with the batch that
    crosses it are kept. (The embedded Tansu broker reports a partition's end
    offset as the last record *batch*'s base offset + 1, so filtering records
    by offset < end would drop all but the first record of a batch.)
    """
    from kafka import TopicPartition

    from stack.clients import kafka_consumer

    if kafka_config is None:
        from cascade.config import get_config

        kafka_config = get_config().kafka
    consumer = kafka_consumer(bootstrap, kafka_config, None)
    try:
        deadline = time.monotonic() + timeout_s
        parts = consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.1)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise LookupError(f"Kafka topic {topic!r} not found at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        if since is not None:
            starts = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
            for tp in tps:
                found = starts.get(tp)
                consumer.seek(tp, found.offset if found is not None else end[tp])
        else:
            consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        pending = {tp for tp in tps if consumer.position(tp) < end[tp]}
        while pending and time.monotonic() < deadline:
            for tp, messages in consumer.poll(timeout_ms=200).items():
                for m in messages:  # not filtered by `end`: see the note on end offsets above
                    record = decode_record(m.value)
                    if record is not None:
                        out.append(record)
                        if max_records is not None and len(out) >= max_records:
                            return out
            pending = {tp for tp in pending if consumer.position(tp) < end[tp]}
        if pending:
            _log.warning("stopped reading %s after %.0fs with partitions %s unfinished", topic, timeout_s, sorted(tp.partition for tp in pending))
        return out
    finally:
        consumer.close()


def _array(values: list[Any], typ: pa.DataType | None) -> pa.Array:
    if typ is not None:
        try:
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            _log.warning("served values do not fit type %s; keeping them as JSON strings", typ)
            return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array([None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values], type=pa.string())


def served_table(records: Iterable[Mapping[str, Any]], repo: Any = None) -> pa.Table:
    """Records flattened to one row per served vector (the tabular form in the module docstring).

    With `repo`, feature columns get the declared Arrow types; refs the
    repository does not know are typed by inference.
    """
    meta: dict[str, list[Any]] = {c: [] for c in META_COLUMNS}
    keys: dict[str, list[Any]] = {}
    values: dict[str, list[Any]] = {}
    status: dict[str, list[Any]] = {}
    context: list[str | None] = []
    n = 0
    for rec in records:
        refs = rec.get("refs") or list(rec.get("values", {}))
        key_cols = rec.get("entity_keys") or {}
        vals = rec.get("values") or {}
        rows = len(next(iter(key_cols.values()))) if key_cols else (len(next(iter(vals.values()))) if vals else 0)
        if not rows:
            continue
        ts = rec.get("event_ts_ms")
        meta["served_feature_id"].extend([rec.get("served_feature_id")] * rows)
        meta["row"].extend(range(rows))
        meta["event_ts"].extend([ts] * rows)
        meta["request_id"].extend([rec.get("request_id")] * rows)
        meta["feature_set"].extend([rec.get("feature_set")] * rows)
        meta["feature_set_version"].extend([rec.get("feature_set_version")] * rows)
        ctx = rec.get("request_context")
        context.extend([json.dumps(ctx, separators=(",", ":")) if ctx else None] * rows)
        for table, source in ((keys, key_cols), (values, vals), (status, rec.get("status") or {})):
            for name in source:
                if name not in table:
                    table[name] = [None] * n
            for name, col in table.items():
                got = source.get(name)
                col.extend(got if got is not None else [None] * rows)
        for name in refs:
            if name not in values:
                values[name] = [None] * (n + rows)
        n += rows
    columns: dict[str, pa.Array] = {
        "served_feature_id": pa.array(meta["served_feature_id"], type=pa.string()),
        "row": pa.array(meta["row"], type=pa.int32()),
        "event_ts": pa.array(meta["event_ts"], type=pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "request_id": pa.array(meta["request_id"], type=pa.string()),
        "feature_set": pa.array(meta["feature_set"], type=pa.string()),
        "feature_set_version": pa.array(meta["feature_set_version"], type=pa.int32()),
    }
    for name, col in keys.items():
        if name in columns:
            raise ValueError(f"join key {name!r} clashes with a served-log column")
        columns[name] = _array(col, None)
    for ref, col in values.items():
        typ = None
        if repo is not None:
            try:
                typ = ARROW_TYPES[repo.feature(ref).dtype]
            except (KeyError, ValueError):
                typ = None
        view, _, feat = ref.partition(":")
        name = column_name(view, feat)
        if name in columns:
            raise ValueError(f"feature column {name!r} ({ref}) clashes with another served-log column")
        columns[name] = _array(col, typ)
    if status:
        fields = [pa.array(col, type=pa.uint8()) for col in status.values()]
        columns[STATUS_COLUMN] = pa.StructArray.from_arrays(fields, names=list(status))
    else:
        columns[STATUS_COLUMN] = pa.array([{}] * n, type=pa.struct([])) if n else pa.array([], type=pa.struct([]))
    columns[CONTEXT_COLUMN] = pa.array(context, type=pa.string())
    return pa.table(columns)


def served_log_to_parquet(records: Iterable[Mapping[str, Any]] | pa.Table, path: str | Path, repo: Any = None) -> pa.Table:
    """Write the served log as Parquet (records are flattened with :func:`served_table`); returns the table."""
    table = records if isinstance(records, pa.Table) else served_table(records, repo)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not table.schema.field(STATUS_COLUMN).type.num_fields:  # Parquet cannot store an empty struct
        table = table.drop_columns([STATUS_COLUMN])
    pq.write_table(table, path)
    return table


def read_served_log(path: str | Path) -> pa.Table:
    """A served log written by :func:`served_log_to_parquet` (a file, or a directory of them)."""
    return pq.read_table(path)


def iter_rows(table: pa.Table) -> Iterator[dict[str, Any]]:
    """The served table's rows as dicts (convenience for inspection)."""
    yield from table.to_pylist()


__all__ = [
    "ARROW_TYPES",
    "DEFAULT_TOPIC",
    "FORMAT",
    "ServedFeatureLogger",
    "decode_record",
    "encode_record",
    "read_served_log",
    "read_served_log_kafka",
    "served_log_to_parquet",
    "served_record",
    "served_table",
]
