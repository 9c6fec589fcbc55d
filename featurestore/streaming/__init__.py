"""Streaming updates of the online store: the batch path's window aggregations, computed from Kafka.

A :class:`~featurestore.definitions.WindowedFeatureView` with a ``stream``
source is computed twice from one definition: the offline store sums tiles
of the batch source as of each label time, and the streaming updater adds
each event from the stream topic to the same tiles online. Both sum the same
tiles, so the value served equals the value trained on.

* :class:`EventDecoder` -- a Kafka value (protobuf ``cascade.v1.Event`` or
  JSON) -> the source's logical columns (``fields``, event time, ``where``).
* :class:`StreamingUpdater` -- the consumer loop: decode, apply, then commit.
* :class:`TileWriter` -- the atomic, idempotent tile update (see
  :mod:`featurestore.streaming.apply` for the exactly-once design).
* :func:`cli_main` -- ``cascade features stream``.
"""

from featurestore.streaming.apply import GUARDED_ADD_EVENTS, ApplyCounts, StreamEvent, TileWriter
from featurestore.streaming.cli import cli_main
from featurestore.streaming.decoder import DecodeError, EventDecoder, RecordParser, to_event_time
from featurestore.streaming.updater import StreamingUpdater, StreamStats

__all__ = ["GUARDED_ADD_EVENTS", "ApplyCounts", "DecodeError", "EventDecoder", "RecordParser", "StreamEvent",
           "StreamStats", "StreamingUpdater", "TileWriter", "cli_main", "to_event_time"]
