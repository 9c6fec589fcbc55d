"""The dynamic batcher: merging, order, preferred sizes, delay, queue policy, deadlines, splitting."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from rank_service_helpers import Gate, LogisticModel, rows

from ranking.batcher import BatcherClosed, DeadlineExceeded, DynamicBatcher, ModelError, QueueFull

LIVENESS_S = 20.0  # generous bound so a broken batcher fails instead of hanging; never a speed claim


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, LIVENESS_S))


def test_merges_waiting_requests_and_returns_each_its_own_scores_in_order() -> None:
    model = LogisticModel()
    gate = Gate(model)

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        blocks = [rows(n, seed=i) for i, n in enumerate((3, 5, 2, 7))]
        gate.hold()
        first = asyncio.ensure_future(b.submit(blocks[0]))
        await gate.wait_started()  # the model is busy with the first request ...
        rest = [asyncio.ensure_future(b.submit(x)) for x in blocks[1:]]
        await asyncio.sleep(0.01)  # ... while three more queue up
        gate.release()
        results = await asyncio.gather(first, *rest)
        assert gate.calls == [3, 5 + 2 + 7]  # the three waiting requests went as one batch
        for block, got in zip(blocks, results):
            assert got.dtype == np.float32 and got.shape == (len(block),)
            np.testing.assert_allclose(got, model(block), rtol=1e-6)
        assert b.stats["batches"] == 2 and b.stats["requests"] == 4
        await b.close()

    run(main())


def test_mapping_blocks_are_merged_per_key() -> None:
    model = LogisticModel()
    gate = Gate(model)

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        gate.hold()
        first = asyncio.ensure_future(b.submit({"x": rows(2, seed=9)}))
        await gate.wait_started()
        blocks = [{"x": rows(n, seed=n)} for n in (4, 6)]
        rest = [asyncio.ensure_future(b.submit(x)) for x in blocks]
        await asyncio.sleep(0.01)
        gate.release()
        _, *results = await asyncio.gather(first, *rest)
        assert gate.calls == [2, 10]
        for block, got in zip(blocks, results):
            np.testing.assert_allclose(got, model(block), rtol=1e-6)
        await b.close()

    run(main())


def test_a_preferred_size_is_sent_without_waiting_for_the_delay() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        # An hour of queue delay: only the preferred-size rule can send these.
        b = DynamicBatcher(gate, max_batch_size=64, preferred_batch_sizes=(8, 32), max_queue_delay_us=3_600_000_000)
        await asyncio.gather(b.submit(rows(4, seed=1)), b.submit(rows(4, seed=2)))
        assert gate.calls == [8]
        await b.close()

    run(main())


def test_a_lone_request_is_sent_at_once_when_no_other_is_coming() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, preferred_batch_sizes=(32,), max_queue_delay_us=3_600_000_000,
                           arrivals=lambda: 0)
        out = await b.submit(rows(3))
        assert out.shape == (3,) and gate.calls == [3]
        await b.close()

    run(main())


def test_the_oldest_request_waits_at_most_the_queue_delay() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, preferred_batch_sizes=(62,), max_queue_delay_us=50_000)
        t0 = time.monotonic()
        await asyncio.gather(b.submit(rows(3, seed=1)), b.submit(rows(2, seed=2)))
        waited = time.monotonic() - t0
        assert gate.calls == [5]  # no preferred size was reached: the delay sent what was there, together
        assert waited >= 0.045  # it did wait for company (a lower bound: never flaky)
        await b.close()

    run(main())


def test_full_batches_go_without_delay_and_respect_the_max_size() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        on_the_way = {"n": 5}  # requests not yet submitted, as the service would report them
        b = DynamicBatcher(gate, max_batch_size=10, preferred_batch_sizes=(10,), max_queue_delay_us=3_600_000_000,
                           arrivals=lambda: on_the_way["n"])
        blocks = [rows(4, seed=i) for i in range(5)]

        async def one(x):
            on_the_way["n"] -= 1
            return await b.submit(x)

        await asyncio.gather(*(one(x) for x in blocks))
        # 4 + 4 fit and the next 4 would not: full, sent at once (twice); the last one goes
        # when nothing else is on its way. Never more than max_batch_size rows.
        assert gate.calls == [8, 8, 4]
        await b.close()

    run(main())


def test_more_than_max_queue_size_waiting_requests_are_refused_with_resource_exhausted() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0, max_queue_size=2)
        gate.hold()
        running = asyncio.ensure_future(b.submit(rows(1)))
        await gate.wait_started()  # running, not waiting
        waiting = [asyncio.ensure_future(b.submit(rows(1, seed=i))) for i in (1, 2)]
        await asyncio.sleep(0)
        assert b.queued_requests == 2
        with pytest.raises(QueueFull) as err:
            await b.submit(rows(1, seed=3))
        assert err.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.release()
        done = await asyncio.gather(running, *waiting)
        assert [len(x) for x in done] == [1, 1, 1]
        assert b.stats["queue_full"] == 1
        await b.close()

    run(main())


def test_a_request_whose_deadline_passes_while_queued_is_dropped_from_the_batch() -> None:
    model = LogisticModel()
    gate = Gate(model)

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        gate.hold()
        running = asyncio.ensure_future(b.submit(rows(2)))
        await gate.wait_started()
        doomed = asyncio.ensure_future(b.submit(rows(7, seed=1), deadline=time.monotonic() + 0.05))
        patient_rows = rows(3, seed=2)
        patient = asyncio.ensure_future(b.submit(patient_rows))
        with pytest.raises(DeadlineExceeded) as err:
            await doomed
        assert err.value.queued and err.value.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert b.queued_requests == 1
        gate.release()
        await running
        np.testing.assert_allclose(await patient, model(patient_rows), rtol=1e-6)
        assert gate.calls == [2, 3]  # the 7 rows were never scored
        await b.close()

    run(main())


def test_a_deadline_passing_while_the_batch_runs_is_answered_and_the_batcher_carries_on() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        gate.hold()
        slow = asyncio.ensure_future(b.submit(rows(2), deadline=time.monotonic() + 0.05))
        await gate.wait_started()
        with pytest.raises(DeadlineExceeded) as err:
            await slow
        assert not err.value.queued
        gate.release()
        assert (await b.submit(rows(4))).shape == (4,)
        await b.close()

    run(main())


def test_a_request_larger_than_max_batch_size_is_split_and_reassembled_in_order() -> None:
    model = LogisticModel()
    gate = Gate(model)

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=4, max_queue_delay_us=0, max_queue_size=1)
        big = rows(10, seed=5)
        got = await b.submit(big)
        assert gate.calls == [4, 4, 2]
        np.testing.assert_allclose(got, model(big), rtol=1e-6)
        assert b.queued_requests == 0  # a split request counts once against the queue size
        await b.close()

    run(main())


def test_with_batching_off_each_request_is_scored_alone() -> None:
    model = LogisticModel()
    gate = Gate(model)

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, preferred_batch_sizes=(8,), max_queue_delay_us=1_000_000, enabled=False)
        blocks = [rows(n, seed=n) for n in (3, 5, 2)]
        gate.hold()
        futs = [asyncio.ensure_future(b.submit(x)) for x in blocks]
        await asyncio.sleep(0.01)
        gate.release()
        results = await asyncio.gather(*futs)
        assert gate.calls == [3, 5, 2]
        for block, got in zip(blocks, results):
            np.testing.assert_allclose(got, model(block), rtol=1e-6)
        await b.close()

    run(main())


def test_a_model_failure_fails_its_batch_only() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        gate.fail_next = 1
        with pytest.raises(ModelError) as err:
            await b.submit(rows(3))
        assert isinstance(err.value.__cause__, RuntimeError)
        assert (await b.submit(rows(3))).shape == (3,)

        def wrong_shape(x):
            return np.zeros(len(x) + 1)

        b2 = DynamicBatcher(wrong_shape, max_batch_size=8)
        with pytest.raises(ModelError, match="returned 4 scores for 3 rows"):
            await b2.submit(rows(3))
        await b.close()
        await b2.close()

    run(main())


def test_close_drains_then_refuses() -> None:
    gate = Gate(LogisticModel())

    async def main() -> None:
        b = DynamicBatcher(gate, max_batch_size=64, max_queue_delay_us=0)
        gate.hold()
        futs = [asyncio.ensure_future(b.submit(rows(2, seed=i))) for i in range(3)]
        await gate.wait_started()
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.01)
        gate.release()
        await closing
        assert [len(x) for x in await asyncio.gather(*futs)] == [2, 2, 2]
        with pytest.raises(BatcherClosed):
            await b.submit(rows(1))

    run(main())
