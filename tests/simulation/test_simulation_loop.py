"""The closed loop over real gRPC: paired arms, clicks logged as events, CTR tracked."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from proto.cascade.v1 import common_pb2, events_pb2, events_pb2_grpc, feed_pb2, feed_pb2_grpc
from simulation.ctr import CtrTracker
from simulation.loop import Arm, ClosedLoop, user_id_in_bucket
from simulation.users import SimulatedUsers, UserModelSpec

N_CAT = 4
CATS = {f"i{j}": np.eye(N_CAT)[j % N_CAT] for j in range(40)}


class _Feed(feed_pb2_grpc.FeedServiceServicer):
    """Shows 'good' users category-0 items first and everyone else a fixed mix."""

    async def GetFeed(self, request, context):
        start = 0 if request.user_id.startswith("good") else 1
        items = [feed_pb2.FeedItem(item_id=f"i{(start + 4 * p) % 40}", position=p, score=1.0) for p in range(request.count)]
        return feed_pb2.GetFeedResponse(request_id=f"r-{request.user_id}-{request.context.timestamp_ms}", items=items,
                                        model_versions=[common_pb2.ModelVersion(model_name="m", version="v1")])


class _Events(events_pb2_grpc.EventServiceServicer):
    def __init__(self) -> None:
        self.events: list[events_pb2.Event] = []

    async def LogEvents(self, request, context):
        self.events.extend(request.events)
        return events_pb2.LogEventsResponse(accepted_count=len(request.events))


def test_user_ids_land_in_the_wanted_bucket() -> None:
    assign = lambda uid: "treatment" if hash(uid) % 2 else "control"  # noqa: E731
    for k in range(20):
        assert assign(user_id_in_bucket(k, "treatment", assign)) == "treatment"
        assert assign(user_id_in_bucket(k, "control", assign)) == "control"
    assert user_id_in_bucket(3, "control", assign) == user_id_in_bucket(3, "control", assign)


def test_loop_pairs_arms_logs_clicks_and_tracks_ctr() -> None:
    async def main() -> tuple[ClosedLoop, _Events]:
        server = grpc.aio.server()
        feed_pb2_grpc.add_FeedServiceServicer_to_server(_Feed(), server)
        events = _Events()
        events_pb2_grpc.add_EventServiceServicer_to_server(events, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                users = SimulatedUsers(UserModelSpec(n_users=5, n_categories=N_CAT, base_ctr=0.3, seed=1))
                arms = [Arm("good", tuple(f"good{k}" for k in range(5))), Arm("plain", tuple(f"plain{k}" for k in range(5)))]
                loop = ClosedLoop(feed_pb2_grpc.FeedServiceStub(ch), events_pb2_grpc.EventServiceStub(ch), users, CATS,
                                  arms, tracker=CtrTracker(bucket_s=1.0), count=5, rate=40.0, seed=2)
                await loop.run(1.5)
                return loop, events
        finally:
            await server.stop(0)

    loop, events = asyncio.run(main())
    stats = loop.stats
    assert stats.failed == 0 and stats.requests % 2 == 0 and stats.requests >= 20
    assert stats.impressions == 5 * stats.requests
    assert stats.clicks == len(events.events) > 0
    assert all(e.type == events_pb2.EVENT_TYPE_CLICK and e.request_id.startswith("r-") for e in events.events)
    tracked = sum(loop.tracker.total(a).clicks for a in ("good", "plain"))
    assert tracked == stats.clicks
    assert loop.tracker.total("good").impressions == loop.tracker.total("plain").impressions
    assert stats.versions == {"good": "m/v1", "plain": "m/v1"}
