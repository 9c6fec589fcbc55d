"""Impression logging: the feed -> Impression mapping, and the logger against the real broker."""

from __future__ import annotations

import socket
import time

from prometheus_client import REGISTRY

from cascade.config import Config
from events.impression_log import ImpressionLogger, impressions_from_feed, ranking_model_version
from events_helpers import consume
from proto.cascade.v1 import common_pb2, feed_pb2, records_pb2


def feed_response(request_id: str = "req-1", n: int = 3) -> feed_pb2.GetFeedResponse:
    """A response with every field set: organic scored items, an unscored ad, two model versions."""
    items = []
    for i in range(n):
        item = feed_pb2.FeedItem(item_id=f"item-{request_id}-{i}", score=10.0 - i, position=i,
                                 recall_channels=[common_pb2.ChannelScore(channel="item2item", score=0.5 + i, rank=i),
                                                  common_pb2.ChannelScore(channel="popular", score=3.0, rank=7)],
                                 reasons=[common_pb2.RerankReason(rule="author_diversity", explanation="moved")],
                                 kind=common_pb2.ITEM_KIND_ORGANIC, ranking_score=0.1 * (i + 1))
        items.append(item)
    items.append(feed_pb2.FeedItem(item_id=f"ad-{request_id}", score=1.5, position=n, kind=common_pb2.ITEM_KIND_AD))
    return feed_pb2.GetFeedResponse(
        request_id=request_id, items=items, degraded=True,
        degraded_reasons=[common_pb2.DegradedReason(stage=common_pb2.STAGE_RECALL, code=common_pb2.DEGRADATION_CODE_TIMEOUT)],
        model_versions=[common_pb2.ModelVersion(model_name="recall_two_tower", version="v0", kind=common_pb2.MODEL_KIND_UNSPECIFIED),
                        common_pb2.ModelVersion(model_name="ctr_main", version="20250101T000000Z-ab12", kind=common_pb2.MODEL_KIND_DEEPFM)],
        experiment=common_pb2.ExperimentAssignment(experiment="ranking_ab", bucket="treatment", overridden=True),
        served_feature_id="sf-" + request_id, served_at_ms=1_717_171_717_123,
    )


def dead_bootstrap() -> str:
    """host:port where nothing listens (a port just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# ----------------------------------------------------------------------------- mapping (pure)


def test_impressions_from_feed_maps_every_field() -> None:
    response = feed_response()
    out = impressions_from_feed(response, user_id="u42", surface="related_items")
    assert len(out) == len(response.items)
    ranking = response.model_versions[1]
    for imp, item in zip(out, response.items):
        assert imp.request_id == response.request_id
        assert imp.user_id == "u42"
        assert imp.item_id == item.item_id
        assert imp.position == item.position
        assert imp.score == item.score
        assert imp.HasField("ranking_score") == item.HasField("ranking_score")
        assert imp.ranking_score == item.ranking_score
        assert imp.model_version == ranking
        assert imp.experiment == response.experiment
        assert imp.served_feature_id == response.served_feature_id
        assert imp.timestamp_ms == response.served_at_ms
        assert list(imp.recall_channels) == list(item.recall_channels)
        assert imp.kind == item.kind
        assert imp.surface == "related_items"
        assert imp.degraded is True
    # Every field of the record schema is filled for a scored organic item (a new field would fail here).
    scored = out[1]  # position 1: position 0 would be proto3's default, indistinguishable from unset
    assert {f.name for f, _ in scored.ListFields()} == {f.name for f in records_pb2.Impression.DESCRIPTOR.fields}
    assert not out[-1].HasField("ranking_score")  # the ad was not scored by ranking


def test_impressions_from_feed_defaults() -> None:
    response = feed_response(n=1)
    out = impressions_from_feed(response, user_id="u1", surface="")
    assert {imp.surface for imp in out} == {"home_feed"}  # common.proto: empty surface means home_feed
    override = common_pb2.ModelVersion(model_name="ftrl", version="7", kind=common_pb2.MODEL_KIND_FTRL)
    assert impressions_from_feed(response, user_id="u1", surface="x", model_version=override)[0].model_version == override
    assert impressions_from_feed(feed_pb2.GetFeedResponse(request_id="empty"), user_id="u1", surface="x") == []


def test_ranking_model_version_prefers_learned_then_heuristic() -> None:
    V = common_pb2.ModelVersion
    heuristic = V(model_name="popularity", version="1", kind=common_pb2.MODEL_KIND_HEURISTIC)
    din = V(model_name="ctr_din", version="3", kind=common_pb2.MODEL_KIND_DIN)
    other = V(model_name="recall_tt", version="9")
    assert ranking_model_version([other, heuristic, din]) == din
    assert ranking_model_version([other, heuristic]) == heuristic  # ranking degraded to the fallback scorer
    assert ranking_model_version([other]) == other
    assert ranking_model_version([]) is None


# ----------------------------------------------------------------------------- the logger on Kafka


def test_logger_writes_every_field_to_kafka(config: Config, bootstrap: str, new_topic) -> None:
    topic = new_topic("impressions")
    logger = ImpressionLogger(config, bootstrap, topic=topic)
    logger.start()
    sent = [imp for r in range(3) for imp in impressions_from_feed(feed_response(f"req-{r}"), user_id=f"user-{r}", surface="home_feed")]
    assert logger.log(sent[:4]) == 4
    assert logger.log(sent[4:]) == len(sent) - 4
    stats = logger.close()
    assert stats == {"accepted": len(sent), "sent": len(sent), "dropped": 0, "failed": 0, "buffered": 0, "unflushed": 0}

    records = consume(bootstrap, config, topic, len(sent))
    assert len(records) == len(sent)
    got = {}
    for key, value in records:
        imp = records_pb2.Impression.FromString(value)
        assert key == imp.user_id.encode()  # keyed by user_id: a user's records share a partition
        got[(imp.request_id, imp.item_id)] = imp
    assert got == {(imp.request_id, imp.item_id): imp for imp in sent}


def test_full_buffer_drops_and_counts_without_blocking(config: Config, bootstrap: str, new_topic) -> None:
    topic = new_topic("impressions")
    logger = ImpressionLogger(config, bootstrap, topic=topic, capacity=3)  # not started: nothing drains yet
    imps = impressions_from_feed(feed_response(n=4), user_id="u", surface="s")  # 5 impressions
    dropped_before = metric("cascade_impressions_dropped_total")
    assert logger.log(imps) == 3
    assert logger.log(imps[:2]) == 0
    assert logger.stats() == {"accepted": 3, "sent": 0, "dropped": 4, "failed": 0, "buffered": 3, "unflushed": 0}
    assert metric("cascade_impressions_dropped_total") - dropped_before == 4

    logger.start()
    stats = logger.close()
    assert stats == {"accepted": 3, "sent": 3, "dropped": 4, "failed": 0, "buffered": 0, "unflushed": 0}
    assert sorted(records_pb2.Impression.FromString(v).item_id for _, v in consume(bootstrap, config, topic, 3)) \
        == sorted(imp.item_id for imp in imps[:3])
    assert logger.log(imps[:1]) == 0  # closed: counted as dropped, never buffered
    assert logger.stats()["dropped"] == 4  # ...but the final stats were fixed at close


def test_close_flushes_everything_buffered(config: Config, bootstrap: str, new_topic) -> None:
    topic = new_topic("impressions")
    logger = ImpressionLogger(config, bootstrap, topic=topic)
    logger.start()
    n = 0
    for r in range(100):
        n += logger.log(impressions_from_feed(feed_response(f"r{r}", n=9), user_id=f"u{r % 7}", surface="home_feed"))
    stats = logger.close()  # at once: most of it is still in the buffer or the producer
    assert n == 1000
    assert stats["sent"] == n and stats["accepted"] == n and stats["unflushed"] == 0
    records = consume(bootstrap, config, topic, n)
    assert len(records) == n
    assert len({records_pb2.Impression.FromString(v).item_id for _, v in records}) == n


def test_close_reports_what_kafka_never_got(config: Config) -> None:
    fast = config.model_copy(update={"events": config.events.model_copy(
        update={"impression_max_block_ms": 200, "impression_retry_backoff_s": 0.05})})
    logger = ImpressionLogger(fast, dead_bootstrap(), capacity=100)
    logger.start()
    assert logger.log(impressions_from_feed(feed_response(n=9), user_id="u", surface="s")) == 10
    unflushed_before = metric("cascade_impressions_total", {"outcome": "unflushed"})
    stats = logger.close(timeout_s=0.5)
    assert stats == {"accepted": 10, "sent": 0, "dropped": 0, "failed": 0, "buffered": 0, "unflushed": 10}
    assert metric("cascade_impressions_total", {"outcome": "unflushed"}) - unflushed_before == 10


def test_a_record_kafka_refuses_is_counted_failed(config: Config, bootstrap: str, new_topic) -> None:
    topic = new_topic("impressions")
    # The producer refuses records over max_request_size (MessageSizeTooLargeError): a failure no retry fixes.
    logger = ImpressionLogger(config, bootstrap, topic=topic, max_request_size=2048)
    logger.start()
    imps = impressions_from_feed(feed_response(n=3), user_id="u", surface="s")
    imps[1].served_feature_id = "x" * 4096
    failed_before = metric("cascade_impressions_total", {"outcome": "failed"})
    assert logger.log(imps) == 4
    stats = logger.close()
    assert stats == {"accepted": 4, "sent": 3, "dropped": 0, "failed": 1, "buffered": 0, "unflushed": 0}
    assert metric("cascade_impressions_total", {"outcome": "failed"}) - failed_before == 1
    got = sorted(records_pb2.Impression.FromString(v).item_id for _, v in consume(bootstrap, config, topic, 3))
    assert got == sorted(imp.item_id for i, imp in enumerate(imps) if i != 1)


def test_broker_crash_leaves_every_impression_accounted_for(config: Config, tmp_path, unique_prefix: str) -> None:
    import os
    import signal

    from events_helpers import create_topic
    from stack.kafka_broker import EmbeddedKafka

    broker = EmbeddedKafka(tmp_path).start()  # a private broker this test may kill
    try:
        topic = create_topic(broker.bootstrap_servers, config, f"{unique_prefix}-private")
        logger = ImpressionLogger(config, broker.bootstrap_servers, topic=topic)
        logger.start()
        first = impressions_from_feed(feed_response("before", n=9), user_id="u", surface="s")
        logger.log(first)
        deadline = time.monotonic() + 20
        while logger.stats()["sent"] < len(first) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(broker.pid, signal.SIGKILL)
        logger.log(impressions_from_feed(feed_response("after", n=9), user_id="u", surface="s"))
        stats = logger.close(timeout_s=1.0)
    finally:
        broker.stop()
    assert stats["accepted"] == 20 and stats["sent"] == 10 and stats["buffered"] == 0
    assert stats["failed"] + stats["unflushed"] == 10  # never silently lost: every one is a number
