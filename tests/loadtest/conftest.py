"""A controllable FeedService on loopback: the system-under-test's stand-in for load generator tests.

It is a real grpc.aio server (serving.GrpcServer, so the same interceptors as
production) on its own event loop in a background thread; the load generator
runs in spawned worker processes, so the two never share a GIL.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from cascade.config import Config
from proto.cascade.v1 import common_pb2, feed_pb2, feed_pb2_grpc
from serving import GrpcServer


@dataclass
class Behaviour:
    delay_s: float = 0.0
    items: int = 5
    fail_every: int = 0
    """Every k-th call (by arrival order) fails with UNAVAILABLE; 0 never."""
    degraded_every: int = 0
    """Every k-th successful call is marked degraded; 0 never."""
    concurrency: int = 0
    """At most this many calls do their delay at once (a server with finite capacity); 0 unlimited."""


class StubFeedServicer(feed_pb2_grpc.FeedServiceServicer):
    def __init__(self) -> None:
        self.configure(Behaviour())

    def configure(self, behaviour: Behaviour) -> None:
        self.b = behaviour
        self.calls = 0
        self.served = 0
        self._gate = asyncio.Semaphore(behaviour.concurrency) if behaviour.concurrency else None

    async def GetFeed(self, request: feed_pb2.GetFeedRequest, context: grpc.aio.ServicerContext) -> feed_pb2.GetFeedResponse:
        self.calls += 1
        b = self.b
        if b.fail_every and self.calls % b.fail_every == 0:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stub: every k-th call fails")
        if self._gate is not None:
            async with self._gate:
                await asyncio.sleep(b.delay_s)
        elif b.delay_s:
            await asyncio.sleep(b.delay_s)
        self.served += 1
        degraded = bool(b.degraded_every) and self.served % b.degraded_every == 0
        reasons = [common_pb2.DegradedReason(stage=common_pb2.STAGE_RANKING,
                                             code=common_pb2.DEGRADATION_CODE_TIMEOUT)] if degraded else []
        n = min(b.items, request.count)
        return feed_pb2.GetFeedResponse(
            request_id="stub",
            items=[feed_pb2.FeedItem(item_id=f"i{j}", score=float(n - j), position=j) for j in range(n)],
            degraded=degraded, degraded_reasons=reasons,
        )


class StubFeedServer:
    def __init__(self, config: Config) -> None:
        self.servicer = StubFeedServicer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stub-feed", daemon=True)
        self.thread.start()
        self.server = GrpcServer("stub-feed", config.grpc)
        self.server.add_service(feed_pb2_grpc.add_FeedServiceServicer_to_server, self.servicer, "cascade.v1.FeedService")
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result()
        self.address = self.server.address

    def behave(self, **kw: object) -> StubFeedServicer:
        """Set the behaviour for the next run; returns the servicer (its ``calls`` counter restarts)."""
        behaviour = Behaviour(**kw)  # type: ignore[arg-type]
        self.loop.call_soon_threadsafe(self.servicer.configure, behaviour)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result()  # applied before we return
        return self.servicer

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="module")
def feed_server(config: Config) -> Iterator[StubFeedServer]:
    server = StubFeedServer(config)
    yield server
    server.close()
