"""Writing samples to Kafka and reading back what is there: the two halves of the joiner's output protocol.

:class:`SampleWriter` sends without client-side retries: a failed send (or a
timed-out flush) raises :class:`SampleWriteError` from :meth:`flush`, and the
joiner answers it by recovering from its checkpoint -- which reads the output
tail to learn what really landed. A retry inside the client could append a
record twice; a recovery cannot.

:class:`OutputTail` reads the samples topic: its end offsets (recorded in each
checkpoint) and, at recovery, every sample written since.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Mapping
from typing import Any

from crc32c import crc32c
from kafka import TopicPartition
from kafka.errors import KafkaError

from stack.clients import kafka_consumer, kafka_producer
from streaming.join_state import ZIGZAG, iter_samples, record_rest


class SampleWriteError(RuntimeError):
    """Some sample may not have reached Kafka; the joiner must recover from its checkpoint."""


def topic_partitions(consumer: Any, topic: str, timeout_s: float) -> list[int]:
    """The partition numbers of `topic` (waiting up to `timeout_s` for a topic created a moment ago)."""
    deadline = time.monotonic() + timeout_s
    parts = consumer.partitions_for_topic(topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.1)
        parts = consumer.partitions_for_topic(topic)
    if not parts:
        raise ValueError(f"topic {topic!r} does not exist (or has no partitions)")
    return sorted(parts)


class SampleWriter:
    """Sends serialized samples (keyed by user id) to one topic; :meth:`flush` waits for every ack or raises."""

    def __init__(self, bootstrap: str, kafka_config: Any, topic: str, *, linger_ms: int = 20,
                 batch_bytes: int = 512 * 1024, flush_timeout_s: float | None = None) -> None:
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s or max(5.0, kafka_config.request_timeout_ms / 1000 * 2)
        self.producer = kafka_producer(bootstrap, kafka_config, retries=0, linger_ms=linger_ms,
                                       batch_size=batch_bytes, max_in_flight_requests_per_connection=5)
        self._error: BaseException | None = None
        self.sent = 0

    def _failed(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def write(self, value: bytes, key: bytes, partition: int | None = None) -> None:
        try:
            fut = self.producer.send(self.topic, value=value, key=key, partition=partition)
        except KafkaError as exc:
            self._failed(exc)
            return
        self.sent += 1
        if fut.is_done:
            if fut.failed():
                self._failed(fut.exception)
        else:
            fut.add_errback(self._failed)

    def write_runs(self, runs: dict[bytes, list[bytes]], partition: int | None = None) -> None:
        """Samples as :meth:`streaming.join_state.JoinState.take_output` hands them over ({tail: [record rest]})."""
        for key, value in iter_samples(runs):
            self.write(value, key, partition)

    def flush(self) -> None:
        """Block until every sample sent so far is acknowledged; SampleWriteError if any was not."""
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            self._failed(exc)
        if self._error is not None:
            exc, self._error = self._error, None
            raise SampleWriteError(f"writing samples to {self.topic!r} failed: {type(exc).__name__}: {exc}") from exc

    def poll(self) -> None:
        """Nothing to do: the producer's own thread sends after `linger_ms`."""

    def reset(self) -> None:
        """Before a recovery reads the output: let every send in flight finish (landed or failed), forget the error.

        Nothing may still be on its way once the recovery has read what landed,
        or it would land unseen and be written a second time.
        """
        try:
            self.producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:  # e.g. a timeout: something may still be in flight
            raise SampleWriteError(f"samples still in flight to {self.topic!r}: {exc}") from exc
        self._error = None

    def close(self) -> None:
        try:
            self.producer.close(timeout=self.flush_timeout_s)
        except Exception:  # noqa: BLE001 - closing is best effort
            pass


def _zigzag_varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINT = ZIGZAG  # lengths and offset deltas below 16 KiB: one lookup
_BATCH_TAIL = struct.Struct(">hiqqqhii")  # attributes .. record count: the part the CRC covers, before the records
_BATCH_HEAD = struct.Struct(">qiibI")  # base offset, length, partition leader epoch, magic, crc


def _varint(n: int) -> bytes:
    return _VARINT[n] if n < 16384 else _zigzag_varint(n)


def encode_record_batch(records: list[bytes], timestamp_ms: int) -> bytes:
    """Kafka record batch (magic 2, uncompressed, no producer id) of records made by :func:`encode_record`."""
    return record_batch(b"".join(records), len(records), timestamp_ms)


def record_batch(records: bytes, n: int, timestamp_ms: int) -> bytes:
    """Kafka record batch (magic 2, uncompressed, no producer id) of `n` records, framed and concatenated."""
    body = _BATCH_TAIL.pack(0, n - 1, timestamp_ms, timestamp_ms, -1, -1, -1, n) + records
    return _BATCH_HEAD.pack(0, len(body) + 9, 0, 2, crc32c(body)) + body


_PREFIX = [b"\x00\x00" + _VARINT[i] for i in range(1 << 14)]  # attributes, timestamp delta, offset delta i


def _frame(pieces: list[tuple[bytes, list[bytes]]], max_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Records of batches from runs of record rests sharing a tail: (concatenated records, count) per batch of
    at most `max_bytes` (a record larger than that alone). A record is its length, attributes, timestamp delta,
    offset delta, the rest, the tail and a header count of 0."""
    V, P = _VARINT, _PREFIX
    parts: list[bytes] = []
    n = size = 0
    for tail, rests in pieces:
        end = tail + b"\x00"
        for rest in rests:
            k = len(rest) + len(end) + (3 if n < 64 else 4)  # the record after its length
            if size + k > max_bytes and n:
                yield b"".join(parts), n
                parts, n, size = [], 0, 0
                k = len(rest) + len(end) + 3
            parts += (V[k] if k < 16384 else _varint(k), P[n], rest, end)
            n += 1
            size += k + 3
    if n:
        yield b"".join(parts), n


def encode_record(index: int, key: bytes, value: bytes) -> bytes:
    """One record of a batch: attributes 0, timestamp delta 0, offset delta `index`, no headers (what
    :meth:`BatchSampleWriter._ship` makes of a record rest, see :func:`streaming.join_state.record_rest`)."""
    body = b"".join((b"\x00\x00", _varint(index), record_rest(key, value), b"\x00"))
    return _varint(len(body)) + body


class BatchSampleWriter:
    """The same contract as :class:`SampleWriter`, ~10x cheaper per sample: it encodes Kafka record batches itself.

    Why: kafka-python's ``KafkaProducer.send`` costs ~14 us of Python per
    record (partitioner, accumulator, a future per record, the per-record
    batch builder), more than consuming one (~6 us); the joiner writes a
    record for almost every record it reads. Here samples are buffered as
    they come and encoded a batch at a time, a record one bytes join (~0.3
    us), and a full batch (``batch_records`` or ``batch_bytes`` per
    partition) goes out as one ProduceRequest through kafka-python's own
    network client (connections, metadata, protocol versions), acks=1, no
    retries (a failure surfaces from :meth:`flush`, see the module docstring).
    Needs kafka-python >= 3.0 (``kafka.net.compat.KafkaNetClient``);
    :func:`make_writer` falls back to :class:`SampleWriter` otherwise.
    """

    def __init__(self, bootstrap: str, kafka_config: Any, topic: str, *, linger_ms: int = 50, batch_records: int = 2000,
                 batch_bytes: int = 512 * 1024, flush_timeout_s: float | None = None) -> None:
        from kafka.net.compat import KafkaNetClient
        from kafka.protocol.producer import ProduceRequest

        self._Request = ProduceRequest
        self.topic = topic
        if not 0 < batch_records <= 8192:
            raise ValueError("batch_records must be in 1..8192")
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.linger_s = linger_ms / 1000
        self._since: dict[int, float] = {}  # partition -> when its oldest buffered record was written
        self.timeout_ms = kafka_config.request_timeout_ms
        self.flush_timeout_s = flush_timeout_s or max(5.0, self.timeout_ms / 1000 * 2)
        self.client = KafkaNetClient(bootstrap_servers=bootstrap, client_id=f"{kafka_config.client_id}-samples",
                                     request_timeout_ms=self.timeout_ms)
        self.client.check_version(timeout_ms=self.timeout_ms)
        self.client.cluster.add_topic(topic)
        deadline = time.monotonic() + self.timeout_ms / 1000
        parts = self.client.cluster.partitions_for_topic(topic)
        while not parts:
            if time.monotonic() > deadline:
                raise ValueError(f"topic {topic!r} does not exist (or has no partitions)")
            self.client.poll(future=self.client.cluster.request_update(), timeout_ms=500)
            parts = self.client.cluster.partitions_for_topic(topic)
        self.partitions = sorted(parts)
        self._runs: dict[int, list[tuple[bytes, list[bytes]]]] = {p: [] for p in self.partitions}  # (tail, rests)
        self._count: dict[int, int] = dict.fromkeys(self.partitions, 0)
        self._inflight: list[Any] = []
        self._error: BaseException | None = None
        self.sent = 0

    def write(self, value: bytes, key: bytes, partition: int | None = None) -> None:
        self.write_runs({b"": [record_rest(key, value)]}, partition)

    def write_runs(self, runs: dict[bytes, list[bytes]], partition: int | None = None) -> None:
        """Samples as :meth:`streaming.join_state.JoinState.take_output` hands them over ({tail: [record rest]}) to
        `partition` (None: by the key's hash, as Kafka's default partitioner).

        Buffered as they are; framed into records and batches in :meth:`_ship`.
        """
        if partition is None:
            from kafka.partitioner.default import murmur2

            parts, n = self.partitions, len(self.partitions)
            for key, value in iter_samples(runs):
                self.write(value, key, parts[(murmur2(key) & 0x7FFFFFFF) % n])
            return
        buffered = self._runs[partition]
        if not buffered:
            self._since[partition] = time.monotonic()
        n = self._count[partition]
        for tail, rests in runs.items():
            if rests:
                buffered.append((tail, rests))
                n += len(rests)
        self.sent += n - self._count[partition]
        self._count[partition] = n
        if n >= self.batch_records:
            self._ship(partition, full_only=True)

    def poll(self) -> None:
        """Send the batches that lingered long enough; collect finished requests (the joiner calls it per poll)."""
        if self._since:
            old = time.monotonic() - self.linger_s
            for partition, since in list(self._since.items()):
                if since <= old:
                    self._ship(partition)
        if self._inflight:
            self.client.poll(timeout_ms=0)
            self._reap()

    def _ship(self, partition: int, full_only: bool = False) -> None:
        """Frame the partition's buffered samples into record batches (at most `batch_records` records and about
        `batch_bytes` each) and send each as a ProduceRequest; `full_only` leaves fewer than `batch_records` last
        ones buffered (for the linger)."""
        runs, count, limit = self._runs[partition], self._count[partition], self.batch_records
        while count >= limit or (count and not full_only):
            take, pieces = min(count, limit), []
            need = take
            while need:  # the first `take` records, run by run
                tail, rests = runs[0]
                if len(rests) <= need:
                    pieces.append((tail, rests))
                    del runs[0]
                    need -= len(rests)
                else:
                    pieces.append((tail, rests[:need]))
                    runs[0] = (tail, rests[need:])
                    need = 0
            count -= take
            for body, n in _frame(pieces, self.batch_bytes):
                self._send(partition, body, n)
        self._count[partition] = count
        if not count:
            self._since.pop(partition, None)

    def _send(self, partition: int, records: bytes, n: int) -> None:
        """One ProduceRequest: a batch of the `n` framed `records`."""
        R = self._Request
        request = R(transactional_id=None, acks=1, timeout_ms=self.timeout_ms, min_version=3, max_version=9,
                    topic_data=[R.TopicProduceData(name=self.topic, partition_data=[
                        R.TopicProduceData.PartitionProduceData(
                            index=partition, records=record_batch(records, n, int(time.time() * 1000)))])])
        client = self.client
        node = client.cluster.leader_for_partition(TopicPartition(self.topic, partition))
        if node is None or node == -1:
            self._failed(KafkaError(f"no leader for {self.topic}:{partition}"))
            return
        deadline = time.monotonic() + self.timeout_ms / 1000
        while not client.ready(node):  # connecting, or max in-flight requests reached
            if time.monotonic() > deadline:
                self._failed(KafkaError(f"broker {node} not ready for {self.topic}:{partition}"))
                return
            client.poll(timeout_ms=10)
        self._inflight.append(client.send(node, request))
        client.poll(timeout_ms=0)
        self._reap()

    def _reap(self) -> None:
        """Check completed requests (keeps the in-flight list short)."""
        keep = []
        for fut in self._inflight:
            if not fut.is_done:
                keep.append(fut)
            else:
                self._check(fut)
        self._inflight = keep

    def _check(self, fut: Any) -> None:
        if fut.failed():
            self._failed(fut.exception)
            return
        for topic in fut.value.responses:
            for p in topic.partition_responses:
                if p.error_code:
                    from kafka.errors import for_code

                    self._failed(for_code(p.error_code)(f"{topic.name}:{p.index}"))

    def _failed(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc

    def flush(self) -> None:
        for p in self.partitions:
            self._ship(p)
        deadline = time.monotonic() + self.flush_timeout_s
        for fut in self._inflight:
            left = deadline - time.monotonic()
            if left > 0 and not fut.is_done:
                self.client.poll(future=fut, timeout_ms=int(left * 1000))
            if not fut.is_done:
                self._failed(KafkaError(f"flush timed out after {self.flush_timeout_s}s"))
            else:
                self._check(fut)
        self._inflight = []
        if self._error is not None:
            exc, self._error = self._error, None
            raise SampleWriteError(f"writing samples to {self.topic!r} failed: {type(exc).__name__}: {exc}")

    def reset(self) -> None:
        """Before a recovery reads the output: wait for the requests in flight (landed or failed), drop what was
        not sent, forget the error, refresh metadata (a leader may have moved).

        Nothing may still be on its way once the recovery has read what landed,
        or it would land unseen and be written a second time: SampleWriteError
        if a request outlives the wait (the joiner retries the recovery later;
        requests time out after ``request_timeout_ms``).
        """
        deadline = time.monotonic() + self.flush_timeout_s
        for fut in self._inflight:
            left = deadline - time.monotonic()
            if left > 0 and not fut.is_done:
                try:
                    self.client.poll(future=fut, timeout_ms=int(left * 1000))
                except Exception:  # noqa: BLE001 - only waiting here
                    pass
        self._inflight = [fut for fut in self._inflight if not fut.is_done]
        if self._inflight:
            raise SampleWriteError(f"{len(self._inflight)} produce requests to {self.topic!r} still in flight")
        self._error = None
        self._inflight = []
        self._runs = {p: [] for p in self.partitions}
        self._count = dict.fromkeys(self.partitions, 0)
        self._since = {}
        try:
            self.client.poll(future=self.client.cluster.request_update(), timeout_ms=self.timeout_ms)
        except Exception:  # noqa: BLE001 - the next write reports what is still wrong
            pass

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def make_writer(bootstrap: str, kafka_config: Any, topic: str, kind: str = "batch",
                linger_ms: int = 50) -> SampleWriter | BatchSampleWriter:
    """`kind` "batch" (:class:`BatchSampleWriter`, falling back when kafka-python lacks its API) or "producer"."""
    if kind == "batch":
        try:
            return BatchSampleWriter(bootstrap, kafka_config, topic, linger_ms=linger_ms)
        except ImportError:
            pass
    elif kind != "producer":
        raise ValueError(f"unknown sample writer {kind!r} (batch, producer)")
    return SampleWriter(bootstrap, kafka_config, topic, linger_ms=linger_ms)


class OutputTail:
    """The samples topic as the joiner's recovery sees it: end offsets, and the records after given offsets."""

    def __init__(self, bootstrap: str, kafka_config: Any, topic: str, *, timeout_s: float | None = None) -> None:
        self.topic = topic
        self.timeout_s = timeout_s or kafka_config.request_timeout_ms / 1000
        self.consumer = kafka_consumer(bootstrap, kafka_config, None, max_poll_records=5000)
        self.all_partitions = topic_partitions(self.consumer, topic, self.timeout_s)
        self.only(self.all_partitions)

    def only(self, partitions: list[int]) -> None:
        """Restrict end offsets and reads to these partitions (the ones a partition-subset joiner writes)."""
        self.partitions = sorted(partitions)
        self.tps = [TopicPartition(self.topic, p) for p in self.partitions]

    def end_offsets(self) -> dict[int, int]:
        """ListOffsets(latest) per partition: a lower bound of the true end on Tansu (see `read`), which is all a
        checkpoint needs -- every sample written after it lies at or beyond."""
        ends = self.consumer.end_offsets(self.tps)
        return {tp.partition: int(ends[tp]) for tp in self.tps}

    def read(self, start: Mapping[int, int]) -> Iterator[bytes]:
        """Values of every record from `start` (partition -> offset; absent: the beginning) to the end.

        "The end" is the high watermark of the fetch responses, not ListOffsets: Tansu answers
        ListOffsets(latest) with the last batch's base offset + 1, short of the records after it.
        """
        begin = self.consumer.beginning_offsets(self.tps)
        todo = {tp: max(int(start.get(tp.partition, 0)), int(begin[tp])) for tp in self.tps}
        consumer = self.consumer
        consumer.assign(list(todo))
        for tp, first in todo.items():
            consumer.seek(tp, first)
        patience = max(30.0, self.timeout_s)
        deadline = time.monotonic() + patience
        try:
            while todo:
                polled = consumer.poll(timeout_ms=200)
                for records in polled.values():
                    for rec in records:
                        yield rec.value
                for tp in list(todo):
                    hw = consumer.highwater(tp)
                    if hw is not None and consumer.position(tp) >= hw:
                        del todo[tp]
                if polled:
                    deadline = time.monotonic() + patience
                elif time.monotonic() > deadline:
                    raise SampleWriteError(f"could not read {self.topic!r} to its end: stuck at "
                                           + ", ".join(f"{tp.partition}@{consumer.position(tp)}" for tp in todo))
        finally:
            consumer.assign([])

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001
            pass


__all__ = ["BatchSampleWriter", "OutputTail", "SampleWriteError", "SampleWriter", "encode_record", "encode_record_batch",
           "make_writer", "topic_partitions"]
