"""GrpcServer + ServingInterceptor end to end over loopback: health, reflection, errors, metrics, ids, shutdown, limits."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.request

import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import serving
from cascade.config import GrpcConfig

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _sv(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)


def test_health_serving_then_not_serving_when_stop_begins(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        async with grpc.aio.insecure_channel(server.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in (echo.SERVICE, ""):
                assert (await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)).status == SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=echo.SERVICE))
            assert (await watch.read()).status == SERVING
            stopping = asyncio.create_task(server.stop(grace=0.3))
            # The Watch stream is in flight, so it sees the flip before the server goes away.
            assert (await asyncio.wait_for(watch.read(), 2)).status == NOT_SERVING
            await stopping
            watch.cancel()

    asyncio.run(scenario())


def test_reflection_lists_every_service(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                requests = [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
                ]
                responses = [r async for r in stub.ServerReflectionInfo(iter(requests), timeout=2)]
        finally:
            await server.stop(0)
        names = {s.name for s in responses[0].list_services_response.service}
        assert names == {echo.SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        assert responses[1].file_descriptor_response.file_descriptor_proto  # grpcurl can describe it

    asyncio.run(scenario())


def test_error_mapping(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = echo.stub(ch)
                errors = {}
                for op in ("invalid", "boom", "abort", "exhausted"):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call(echo.cmd(op), timeout=2)
                    errors[op] = info.value
                # A streaming handler failing midway: the items already sent arrive, then INTERNAL.
                got = []
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for item in echo.count_stub(ch)(_sv("3!"), timeout=2):
                        got.append(item.value)
                errors["stream"] = info.value
                ok_stream = [i.value async for i in echo.count_stub(ch)(_sv("2"), timeout=2)]
        finally:
            await server.stop(0)
        return errors, got, ok_stream

    errors, got, ok_stream = asyncio.run(scenario())
    assert errors["invalid"].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query.user_id" in errors["invalid"].details() and "must not be empty" in errors["invalid"].details()
    assert errors["boom"].code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in errors["boom"].details()
    assert "secret internal detail" not in errors["boom"].details()  # no internals leak to callers
    assert errors["abort"].code() == grpc.StatusCode.NOT_FOUND  # abort() passes through unchanged
    assert errors["abort"].details() == "no such user"
    assert errors["exhausted"].code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert errors["stream"].code() == grpc.StatusCode.INTERNAL
    assert got == ["0", "1", "2"]
    assert ok_stream == ["0", "1"]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_endpoint_counts_calls_by_method_and_code(grpc_config, echo):
    port = serving.start_metrics_server(0)
    assert serving.start_metrics_server(0) == port  # one endpoint per process
    labels = {"service": echo.SERVICE, "method": "Echo"}
    before_ok = _sample("cascade_grpc_requests_total", **labels, code="OK")
    before_invalid = _sample("cascade_grpc_requests_total", **labels, code="INVALID_ARGUMENT")
    before_hist = _sample("cascade_grpc_request_seconds_count", **labels)

    async def scenario():
        server = await echo.start(grpc_config)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = echo.stub(ch)
                for _ in range(3):
                    await call(_sv("hi"), timeout=2)
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(echo.cmd("invalid"), timeout=2)
                # Health checks are not instrumented (probe noise).
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }

    def http_value(name, **lab):
        return samples.get((name, tuple(sorted(lab.items()))), 0.0)

    assert http_value("cascade_grpc_requests_total", **labels, code="OK") == before_ok + 3
    assert http_value("cascade_grpc_requests_total", **labels, code="INVALID_ARGUMENT") == before_invalid + 1
    assert http_value("cascade_grpc_request_seconds_count", **labels) == before_hist + 4
    assert http_value("cascade_grpc_in_flight", **labels) == 0
    assert 'le="0.0005"' in text  # sub-millisecond buckets exist
    assert not any(lab and dict(lab).get("service") == "grpc.health.v1.Health" for (_, lab) in samples)


def test_request_id_generated_or_preserved(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                call = echo.stub(ch)
                generated = call(echo.cmd("info"), timeout=2)
                gen_body = json.loads((await generated).value)
                gen_md = await generated.initial_metadata()

                supplied = call(echo.cmd("info"), timeout=2, metadata=(("x-request-id", "req-42.abc"),))
                sup_body = json.loads((await supplied).value)
                sup_md = await supplied.initial_metadata()

                junk = call(echo.cmd("info"), timeout=2, metadata=(("x-request-id", "x" * 500),))
                junk_body = json.loads((await junk).value)

                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(echo.cmd("boom"), timeout=2, metadata=(("x-request-id", "err-1"),))
        finally:
            await server.stop(0)
        return gen_body, gen_md, sup_body, sup_md, junk_body, info.value

    gen_body, gen_md, sup_body, sup_md, junk_body, err = asyncio.run(scenario())
    assert re.fullmatch(r"[0-9a-f]{32}", gen_md["x-request-id"])
    assert gen_body["request_id"] == gen_md["x-request-id"]  # the handler saw the same id
    assert sup_md["x-request-id"] == "req-42.abc" and sup_body["request_id"] == "req-42.abc"
    assert re.fullmatch(r"[0-9a-f]{32}", junk_body["request_id"])  # oversized ids are replaced
    assert dict(err.initial_metadata())["x-request-id"] == "err-1"  # errors carry it too
    assert "err-1" in err.details()


def test_deadline_and_request_id_propagate_downstream(grpc_config, echo):
    async def scenario():
        downstream = await echo.start(grpc_config, name="down")
        up_servicer = echo.Servicer(downstream=downstream.address, config=grpc_config)
        upstream = await echo.start(grpc_config, up_servicer, name="up")
        try:
            async with grpc.aio.insecure_channel(upstream.address) as ch:
                call = echo.stub(ch)
                with_deadline = json.loads((await call(echo.cmd("chain"), timeout=1.0,
                                                       metadata=(("x-request-id", "chain-1"),))).value)
                with_budget = json.loads((await call(echo.cmd("chain", budget=0.2), timeout=1.0)).value)
                no_deadline = json.loads((await call(echo.cmd("chain"))).value)
        finally:
            await up_servicer.close()
            await upstream.stop(0)
            await downstream.stop(0)
        return with_deadline, with_budget, no_deadline

    with_deadline, with_budget, no_deadline = asyncio.run(scenario())
    up = with_deadline["upstream_remaining"]
    down = with_deadline["downstream"]
    assert 0.5 < up <= 1.02  # grpc-timeout rounding can add a few ms
    assert 0 < down["grpc_time_remaining"] <= up  # downstream budget never exceeds upstream's
    assert 0 < down["time_remaining"] <= up
    assert down["request_id"] == "chain-1" == with_deadline["upstream_request_id"]
    assert with_budget["downstream"]["grpc_time_remaining"] <= 0.2 + 0.01  # stage budget caps it
    # Without any deadline upstream, the downstream call still gets config.default_deadline_s.
    assert no_deadline["upstream_remaining"] is None
    assert 0 < no_deadline["downstream"]["grpc_time_remaining"] <= grpc_config.default_deadline_s + 0.02


def test_failed_downstream_call_maps_to_internal_naming_the_downstream_code(grpc_config, echo):
    async def scenario():
        # Nothing listens on port 1: the downstream call fails with UNAVAILABLE.
        servicer = echo.Servicer(downstream="127.0.0.1:1", config=grpc_config)
        server = await echo.start(grpc_config, servicer)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await echo.stub(ch)(echo.cmd("chain"), timeout=2)
        finally:
            await servicer.close()
            await server.stop(0)
        return info.value

    err = asyncio.run(scenario())
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "downstream call failed with UNAVAILABLE" in err.details()


def test_graceful_shutdown_drains_in_flight_and_refuses_new_calls(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        async with grpc.aio.insecure_channel(server.address) as ch:
            call = echo.stub(ch)
            await call(_sv("warm"), timeout=2)
            slow = asyncio.ensure_future(call(echo.cmd("sleep", s=0.5), timeout=5))
            await asyncio.sleep(0.1)  # the slow call is in the handler now
            started = time.monotonic()
            stopping = asyncio.create_task(server.stop(grace=2))
            await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as during:
                await call(_sv("late"), timeout=1)
            assert (await slow).value == "slept"
            await stopping
            elapsed = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as after:
                await call(_sv("later"), timeout=1)
            await server.wait()  # returns once terminated
        return during.value, after.value, elapsed

    during, after, elapsed = asyncio.run(scenario())
    assert during.code() == grpc.StatusCode.UNAVAILABLE
    assert after.code() == grpc.StatusCode.UNAVAILABLE
    assert elapsed < 1.5  # stop returns as soon as the drain is done, not after the full grace


def test_second_stop_with_zero_grace_cuts_the_drain(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        async with grpc.aio.insecure_channel(server.address) as ch:
            slow = asyncio.ensure_future(echo.stub(ch)(echo.cmd("sleep", s=10), timeout=20))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            first = asyncio.create_task(server.stop(grace=10))
            await asyncio.sleep(0.05)
            await server.stop(grace=0)
            await first
            with pytest.raises(grpc.aio.AioRpcError):
                await slow
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 2


def test_sigterm_stops_the_server(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        uninstall = serving.install_signal_handlers(server)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(server.wait(), 5)
        finally:
            uninstall()

    asyncio.run(scenario())


def test_oversized_message_is_rejected(grpc_config, echo):
    big_client = GrpcConfig(max_message_bytes=4 * 1024 * 1024)

    async def scenario():
        server = await echo.start(grpc_config)  # 64 KiB limit
        try:
            async with serving.make_channel(server.address, big_client) as ch:
                assert (await echo.stub(ch)(_sv("a" * 1000), timeout=2)).value == "a" * 1000
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await echo.stub(ch)(_sv("a" * (100 * 1024)), timeout=2)
        finally:
            await server.stop(0)
        return info.value

    assert asyncio.run(scenario()).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_concurrency_limit_rejects_excess_calls(echo):
    config = GrpcConfig(max_concurrent_rpcs=1)

    async def scenario():
        server = await echo.start(config)
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                slow = asyncio.ensure_future(echo.stub(ch)(echo.cmd("sleep", s=0.3), timeout=2))
                await asyncio.sleep(0.1)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await echo.stub(ch)(_sv("second"), timeout=2)
                await slow
        finally:
            await server.stop(0)
        return info.value

    assert asyncio.run(scenario()).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_port_zero_binds_a_free_port_and_add_after_start_fails(grpc_config, echo):
    async def scenario():
        server = await echo.start(grpc_config)
        try:
            assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
            with pytest.raises(RuntimeError):
                server.add_service(echo.register, echo.Servicer(), "cascade.test.Other")
            clash = serving.GrpcServer("clash", grpc_config, port=server.port)
            with pytest.raises(OSError):
                await clash.start()
        finally:
            await server.stop(0)

    asyncio.run(scenario())
