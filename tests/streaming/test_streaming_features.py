"""Events on Kafka change the online features read back through the feature client: `cascade streaming features`."""

from __future__ import annotations

import time

from cascade.config import Config, TopicConfig
from featurestore.client import FeatureClient
from featurestore.online import OnlineStore
from featurestore.repository import load_repo
from proto.cascade.v1.events_pb2 import Event
from stack.clients import ensure_topics, kafka_producer
from streaming.features import events_views
from streaming.features import main as features_main

USER_REFS = ["syn_user_activity:click_count_1d", "syn_user_activity:item_id_last50_30d"]
ITEM_REFS = ["syn_item_popularity:click_count_1d"]


def test_events_update_online_features(stack, config: Config, redis, unique_prefix: str) -> None:  # noqa: ANN001
    bs = stack.kafka_bootstrap
    topic = f"{unique_prefix}-events"
    ensure_topics(bs, config.kafka.model_copy(update={"topics": {topic: TopicConfig(partitions=2)}}))
    repo = load_repo(config.features.definitions)
    views = {v.name for v in events_views(repo, "events", topic)}
    assert {"syn_user_activity", "syn_item_popularity"} <= views  # recent clicks, item click counters
    client = FeatureClient(OnlineStore(redis, unique_prefix), repo)
    before = client.get_online_features("user", [101], USER_REFS).to_rows()[0]
    assert before == {USER_REFS[0]: 0, USER_REFS[1]: []}

    now = int(time.time() * 1000)
    events = [Event(event_id=f"e{i}", type=1, user_id="101", item_id=str(item), request_id=f"r{i}",
                    timestamp_ms=now - 60_000 + i * 1000, received_at_ms=now) for i, item in enumerate((7, 8, 9))]
    events.append(Event(event_id="e3", type=1, user_id="202", item_id="7", request_id="r3", timestamp_ms=now - 5_000))
    events.append(Event(event_id="e4", type=8, user_id="101", item_id="5", request_id="r4", timestamp_ms=now - 1_000))  # a view
    producer = kafka_producer(bs, config.kafka)
    try:
        for e in events:
            producer.send(topic, key=e.user_id.encode(), value=e.SerializeToString()).get(timeout=30)
    finally:
        producer.close()

    args = ["--events-topic", topic, "--project", unique_prefix, "--until-idle", "--assign",
            "--redis-url", stack.redis_url, "--bootstrap", bs, "--log-interval", "60"]
    assert features_main(args + ["--group", f"{unique_prefix}-a"]) == 0
    user = client.get_online_features("user", [101, 202], USER_REFS).to_rows()
    assert user[0] == {USER_REFS[0]: 3, USER_REFS[1]: [9, 8, 7]}  # the view is not a click; most recent first
    assert user[1] == {USER_REFS[0]: 1, USER_REFS[1]: [7]}
    items = client.get_online_features("item", [7, 8, 5], ITEM_REFS).values(ITEM_REFS[0])
    assert items == [2, 1, 0]

    # Another group re-reads the topic from the beginning: the feature store's guard counts each record once.
    assert features_main(args + ["--group", f"{unique_prefix}-b"]) == 0
    assert client.get_online_features("user", [101], USER_REFS).to_rows()[0] == {USER_REFS[0]: 3, USER_REFS[1]: [9, 8, 7]}
    assert client.get_online_features("item", [7], ITEM_REFS).values(ITEM_REFS[0]) == [2]
