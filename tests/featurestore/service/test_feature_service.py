"""The gRPC FeatureService end to end on loopback over the real embedded valkey, and its response encoder."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cascade.config import GrpcConfig
from featurestore.client import FeatureClient, OnlineFeatures
from featurestore.definitions import Feature, ValueType
from featurestore.online import FeatureStatus, OnlineStore
from featurestore.service import (
    SERVICE_NAME,
    FeatureServer,
    FeatureServicer,
    encode_response,
    feature_set_field,
)
from proto.cascade.v1 import common_pb2, features_pb2_grpc
from proto.cascade.v1 import features_pb2 as pb
from stack.clients import redis_client

S = pb.FeatureStatus
PROFILE = ["profile:age", "profile:score", "profile:city", "profile:vip", "profile:emb", "profile:tags"]
CLICKS = ["clicks:click_count_6h", "clicks:dwell_mean_6h"]


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def keys(*values: Any) -> list[pb.EntityKey]:
    return [pb.EntityKey(values=list(v) if isinstance(v, tuple) else [str(v)]) for v in values]


def request(entity_type: str, entity_keys: list[pb.EntityKey], refs: list[str] | None = None,
            feature_set: str | None = None, version: int = 0) -> pb.GetOnlineFeaturesRequest:
    req = pb.GetOnlineFeaturesRequest(entity_type=entity_type, entity_keys=entity_keys)
    if refs is not None:
        req.features.refs.extend(refs)
    if feature_set is not None:
        req.feature_set.CopyFrom(common_pb2.FeatureSetRef(name=feature_set, version=version))
    return req


def value(v: pb.FeatureValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    got = getattr(v, which)
    return list(got.values) if which.endswith("list_value") else got


def table(resp: pb.GetOnlineFeaturesResponse) -> list[dict[str, tuple[str, Any, int]]]:
    """Rows as {ref: (status name, value, event_timestamp_ms)}."""
    return [
        {name: (S.Name(v.status).removeprefix("FEATURE_STATUS_"), value(v), v.event_timestamp_ms)
         for name, v in zip(resp.feature_names, row.values)}
        for row in resp.rows
    ]


def test_values_statuses_and_request_features(seeded, run_service):
    context_ts = datetime(2024, 6, 1, 13, 45, tzinfo=UTC)

    async def scenario(stub, _):
        md = (("x-cascade-context-country", "US"), ("x-cascade-context-event_ts", str(ms(context_ts))))
        return await stub.GetOnlineFeatures(request("user", keys(1, 2, 3, 4), [*PROFILE, *CLICKS, "context:*"]),
                                            metadata=md, timeout=5)

    resp = run_service(scenario)
    assert list(resp.feature_names) == [*PROFILE, *CLICKS, "context:hour", "context:is_us"]
    assert [list(r.entity_key.values) for r in resp.rows] == [["1"], ["2"], ["3"], ["4"]]
    u1, u2, u3, u4 = table(resp)
    fresh, stale, recent = ms(seeded.fresh), ms(seeded.stale), ms(seeded.recent)

    # user 1: everything stored and fresh
    assert u1["profile:age"] == ("PRESENT", 30, fresh)
    assert u1["profile:score"] == ("PRESENT", 0.9, fresh)
    assert u1["profile:city"] == ("PRESENT", "Paris", fresh)
    assert u1["profile:vip"] == ("PRESENT", True, fresh)
    assert u1["profile:emb"] == ("PRESENT", [1.0, 2.0, 3.0], fresh)
    assert u1["profile:tags"] == ("PRESENT", ["a", "é"], fresh)
    assert u1["clicks:click_count_6h"][:2] == ("PRESENT", 2)
    assert u1["clicks:dwell_mean_6h"][:2] == ("PRESENT", 4.0)
    tile_start = u1["clicks:click_count_6h"][2]
    assert tile_start % 3_600_000 == 0 and 0 <= ms(seeded.now) - tile_start < 3_600_000  # newest tile's start

    # user 2: row older than the 1-day TTL -> declared default (DEFAULTED) or no value (OUTSIDE_MAX_AGE), stale row time
    assert u2["profile:age"] == ("OUTSIDE_MAX_AGE", None, stale)
    assert u2["profile:score"] == ("DEFAULTED", 0.5, stale)
    assert u2["profile:city"] == ("DEFAULTED", "unknown", stale)
    assert u2["profile:tags"] == ("DEFAULTED", [], stale)
    assert u2["profile:emb"] == ("OUTSIDE_MAX_AGE", None, stale)
    # ...and a window without events: the count's default 0, the mean null
    assert u2["clicks:click_count_6h"] == ("DEFAULTED", 0, 0)
    assert u2["clicks:dwell_mean_6h"] == ("NULL_VALUE", None, 0)

    # user 3: no row anywhere -> defaults flagged, never errors
    assert u3["profile:age"] == ("NOT_FOUND", None, 0)
    assert u3["profile:score"] == ("DEFAULTED", 0.5, 0)
    assert u3["profile:city"] == ("DEFAULTED", "unknown", 0)
    assert u3["profile:vip"] == ("NOT_FOUND", None, 0)
    assert u3["clicks:click_count_6h"] == ("DEFAULTED", 0, 0)
    assert u3["clicks:dwell_mean_6h"] == ("NOT_FOUND", None, 0)

    # user 4: a stored NULL is NULL_VALUE, not the default
    assert all(u4[ref] == ("NULL_VALUE", None, recent) for ref in PROFILE)

    # request features from the request context (metadata), the same for every row
    for row in (u1, u2, u3, u4):
        assert row["context:hour"][:2] == ("PRESENT", 13)
        assert row["context:is_us"][:2] == ("PRESENT", True)


def test_request_time_defaults_to_the_receive_time(seeded, run_service):
    async def scenario(stub, _):
        return await stub.GetOnlineFeatures(request("user", keys(1), ["context:hour", "profile:age"]),
                                            metadata=(("x-cascade-context-country", "FR"),), timeout=5)

    before = time.time()
    (row,) = table(run_service(scenario))
    status, hour, ts = row["context:hour"]
    assert status == "PRESENT" and before * 1000 - 5 <= ts <= time.time() * 1000 + 5
    assert hour == datetime.fromtimestamp(ts / 1000, UTC).hour
    assert row["profile:age"][:2] == ("PRESENT", 30)


def test_feature_set_selector_reports_the_registry_version(seeded, run_service):
    async def scenario(stub, _):
        by_set = await stub.GetOnlineFeatures(request("user", keys(1, 3), feature_set="ranker"), timeout=5)
        pinned = await stub.GetOnlineFeatures(request("item", keys(5), feature_set="ranker", version=1), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.GetOnlineFeatures(request("user", keys(1), feature_set="ranker", version=7), timeout=5)
        return by_set, pinned, wrong.value

    by_set, pinned, wrong = run_service(scenario)
    # the set's features keyed by `user`, in the set's order (request and item features are not keyed by user)
    assert list(by_set.feature_names) == ["profile:age", "profile:score", *CLICKS]
    assert (by_set.feature_set.name, by_set.feature_set.version) == ("ranker", 1)
    u1, u3 = table(by_set)
    assert u1["profile:age"][:2] == ("PRESENT", 30) and u3["profile:score"][:2] == ("DEFAULTED", 0.5)
    assert list(pinned.feature_names) == ["item_stats:ctr"] and table(pinned)[0]["item_stats:ctr"][:2] == ("PRESENT", 0.25)
    assert wrong.code() == grpc.StatusCode.NOT_FOUND and "version 7" in wrong.details() and "1" in wrong.details()


def test_composite_entity_type_reads_component_views(seeded, run_service):
    async def scenario(stub, _):
        return await stub.GetOnlineFeatures(
            request("user_item", keys(("1", "5"), ("3", "6")), ["affinity:strength", "profile:age", "item_stats:*"]), timeout=5)

    a, b = table(run_service(scenario))
    assert a["affinity:strength"][:2] == ("PRESENT", 0.7) and a["profile:age"][:2] == ("PRESENT", 30)
    assert a["item_stats:recent"][:2] == ("PRESENT", [1, -2, 2**40]) and a["item_stats:weights"][:2] == ("PRESENT", [0.5, 1.5])
    assert b["affinity:strength"][:2] == ("DEFAULTED", 0.0) and b["item_stats:ctr"][:2] == ("NOT_FOUND", None)
    assert b["item_stats:weights"][:2] == ("DEFAULTED", [])


ERRORS = [
    # (request, metadata, code, fragments of the message)
    (request("user", keys(1), ["profile:nope"]), (), "NOT_FOUND", ["profile:nope", "has no feature 'nope'", "age"]),
    (request("user", keys(1), ["nope:x"]), (), "NOT_FOUND", ["no feature view named 'nope'"]),
    (request("user", keys(1), feature_set="nope"), (), "NOT_FOUND", ["no feature set named 'nope'"]),
    (request("usr", keys(1), ["profile:age"]), (), "NOT_FOUND", ["unknown entity type 'usr'", "user"]),
    (request("user", keys(1), ["profile_age"]), (), "INVALID_ARGUMENT", ["'profile_age' must look like 'view:feature'"]),
    (request("user", keys(1), ["profile:age", "profile:age"]), (), "INVALID_ARGUMENT", ["requested twice"]),
    (request("user", [], ["profile:age"]), (), "INVALID_ARGUMENT", ["'entity_keys'", "must not be empty"]),
    (request("user", keys(*range(1001)), ["profile:age"]), (), "INVALID_ARGUMENT", ["'entity_keys'", "1001 items, at most 1000"]),
    (request("user", keys(1), [f"profile:f{i}" for i in range(501)]), (), "INVALID_ARGUMENT", ["'features.refs'", "at most 500"]),
    (request("", keys(1), ["profile:age"]), (), "INVALID_ARGUMENT", ["'entity_type'"]),
    (request("user", keys(1)), (), "INVALID_ARGUMENT", ["feature_set"]),
    (request("user", keys(("1", "2")), ["profile:age"]), (), "INVALID_ARGUMENT", ["entity_keys[0].values", "1 join key(s) (user_id)"]),
    (request("user", keys(1, ""), ["profile:age"]), (), "INVALID_ARGUMENT", ["entity_keys[1].values[0]", "must not be empty"]),
    (request("user", keys("x" * 129), ["profile:age"]), (), "INVALID_ARGUMENT", ["129 bytes, at most 128"]),
    (request("user", keys(1), ["item_stats:ctr"]), (), "INVALID_ARGUMENT", ["keyed by 'item'", "not by entity type 'user'"]),
    (request("user", keys(1), ["context:hour"]), (), "INVALID_ARGUMENT", ["needs request-context input(s) 'country'"]),
    (request("user", keys(1), ["context:hour"]), (("x-cascade-context-country", "US"), ("x-cascade-context-event_ts", "soon")),
     "INVALID_ARGUMENT", ["cannot compute its features", "soon"]),
]


def test_errors_map_to_status_codes_with_clear_messages(seeded, run_service):
    async def scenario(stub, _):
        got = []
        for req, md, _, _ in ERRORS:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetOnlineFeatures(req, metadata=md, timeout=5)
            got.append((info.value.code().name, info.value.details()))
        return got

    for (req, _, code, fragments), (got_code, details) in zip(ERRORS, run_service(scenario)):
        assert got_code == code, (req.entity_type, list(req.features.refs)[:3], details)
        for fragment in fragments:
            assert fragment in details, (fragment, details)


def test_health_and_reflection(run_service):
    async def scenario(_, channel):
        health = health_pb2_grpc.HealthStub(channel)
        statuses = [(await health.Check(health_pb2.HealthCheckRequest(service=s), timeout=5)).status for s in (SERVICE_NAME, "")]
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        reqs = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)]
        answers = [r async for r in refl.ServerReflectionInfo(iter(reqs), timeout=5)]
        return statuses, answers

    statuses, (listed, described) = run_service(scenario)
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert SERVICE_NAME in {s.name for s in listed.list_services_response.service}
    assert described.file_descriptor_response.file_descriptor_proto


def test_unavailable_when_the_online_store_is_down(service_repo, config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    client = FeatureClient(OnlineStore(redis_client(f"redis://127.0.0.1:{dead_port}", config.redis), "x"), service_repo)

    async def main():
        server = FeatureServer(FeatureServicer(client), GrpcConfig(host="127.0.0.1"))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await features_pb2_grpc.FeatureServiceStub(ch).GetOnlineFeatures(request("user", keys(1), ["profile:age"]), timeout=5)
                return info.value
        finally:
            await server.stop(0)

    err = asyncio.run(main())
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "online store cannot be reached" in err.details()


# ----------------------------------------------------------------------------- the encoder


def reference_response(result: OnlineFeatures, key_msgs: list[pb.EntityKey],
                       feature_set: tuple[str, int] | None = None) -> pb.GetOnlineFeaturesResponse:
    """The response built value by value with the protobuf runtime, from the result's semantic values."""
    resp = pb.GetOnlineFeaturesResponse(feature_names=result.refs)
    if feature_set:
        resp.feature_set.CopyFrom(common_pb2.FeatureSetRef(name=feature_set[0], version=feature_set[1]))
    values = {ref: result.values(ref) for ref in result.refs}
    for i in range(len(result)):
        row = resp.rows.add()
        row.entity_key.CopyFrom(key_msgs[i])
        for j, (ref, f) in enumerate(zip(result.refs, result.features)):
            st, d = int(result.status[i, j]), f.default
            ts = int(result.event_ts_ms(j)[i])
            v = values[ref][i]
            if st == FeatureStatus.PRESENT:
                pst, val, t = S.FEATURE_STATUS_PRESENT, v, ts
            elif st == FeatureStatus.NULL_VALUE:
                pst, val, t = S.FEATURE_STATUS_NULL_VALUE, None, ts
            elif st == FeatureStatus.NOT_FOUND:
                pst, val, t = (S.FEATURE_STATUS_DEFAULTED, d, 0) if d is not None else (S.FEATURE_STATUS_NOT_FOUND, None, 0)
            elif st == FeatureStatus.OUTSIDE_MAX_AGE:
                pst, val, t = (S.FEATURE_STATUS_DEFAULTED, d, ts) if d is not None else (S.FEATURE_STATUS_OUTSIDE_MAX_AGE, None, ts)
            else:
                pst, val, t = (S.FEATURE_STATUS_DEFAULTED, d, 0) if d is not None else (S.FEATURE_STATUS_NULL_VALUE, None, 0)
            fv = row.values.add(status=pst, event_timestamp_ms=t)
            if val is None:
                continue
            if f.dtype is ValueType.FLOAT64:
                fv.double_value = val
            elif f.dtype is ValueType.INT64:
                fv.int64_value = val
            elif f.dtype is ValueType.STRING:
                fv.string_value = val
            elif f.dtype is ValueType.BOOL:
                fv.bool_value = val
            elif f.dtype is ValueType.FLOAT_LIST:
                fv.float_list_value.SetInParent()
                fv.float_list_value.values.extend(val)
            elif f.dtype is ValueType.INT64_LIST:
                fv.int64_list_value.SetInParent()
                fv.int64_list_value.values.extend(val)
            else:
                fv.string_list_value.SetInParent()
                fv.string_list_value.values.extend(val)
    return resp


def _assert_same(a: pb.GetOnlineFeaturesResponse, b: pb.GetOnlineFeaturesResponse) -> None:
    """Message equality, with NaN doubles equal to NaN (protobuf's == says NaN != NaN)."""
    assert list(a.feature_names) == list(b.feature_names) and a.feature_set == b.feature_set and len(a.rows) == len(b.rows)
    for i, (ra, rb) in enumerate(zip(a.rows, b.rows)):
        assert ra.entity_key == rb.entity_key
        for j, (va, vb) in enumerate(zip(ra.values, rb.values)):
            if va.WhichOneof("value") == "double_value" and math.isnan(va.double_value):
                assert vb.WhichOneof("value") == "double_value" and math.isnan(vb.double_value)
                va, vb = pb.FeatureValue(status=va.status, event_timestamp_ms=va.event_timestamp_ms), \
                    pb.FeatureValue(status=vb.status, event_timestamp_ms=vb.event_timestamp_ms)
            assert va == vb, (i, a.feature_names[j], va, vb)


def test_encoder_equals_the_protobuf_runtime_on_served_results(seeded):
    result = seeded.client.get_online_features(
        "user_item", [(1, 5), (2, 6), (3, 5), (4, 7)],
        [*PROFILE, *CLICKS, "context:*", "item_stats:*", "affinity:strength"], {"country": "US"})
    key_msgs = keys(*[(str(u), str(i)) for u, i in result.entity_keys])
    data = encode_response(result, [k.SerializeToString() for k in key_msgs], feature_set=feature_set_field("ranker", 3))
    _assert_same(pb.GetOnlineFeaturesResponse.FromString(data), reference_response(result, key_msgs, ("ranker", 3)))


def synthetic_result(n: int, seed: int = 0) -> OnlineFeatures:
    """Every value type, default and status, with extreme values, in OnlineResult's column conventions."""
    rng = np.random.default_rng(seed)
    feats = [
        Feature("f", ValueType.FLOAT64), Feature("fd", ValueType.FLOAT64, default=1.5),
        Feature("i", ValueType.INT64), Feature("id", ValueType.INT64, default=-3),
        Feature("b", ValueType.BOOL), Feature("s", ValueType.STRING, default=""),
        Feature("e", ValueType.FLOAT_LIST, dim=3), Feature("fl", ValueType.FLOAT_LIST, default=[]),
        Feature("il", ValueType.INT64_LIST), Feature("sl", ValueType.STRING_LIST, default=["x"]),
    ]
    status = rng.integers(1, 6, size=(n, len(feats))).astype(np.uint8)
    status[0, :] = FeatureStatus.PRESENT
    ints = np.array([0, 1, -1, 127, 128, 2**62, -(2**63), 2**63 - 1], dtype=np.int64)
    columns: list[Any] = []
    for j, f in enumerate(feats):
        present = status[:, j] == FeatureStatus.PRESENT
        defaulted = np.isin(status[:, j], (3, 4, 5)) & (f.default is not None)
        if f.dtype is ValueType.FLOAT64:
            col = rng.normal(size=n) * 1e6
            col[1 % n] = np.nan if present[1 % n] else col[1 % n]
            col[~present] = np.nan
            if f.default is not None:
                col[defaulted] = f.default
        elif f.dtype is ValueType.INT64:
            col = ints[rng.integers(0, len(ints), n)]
            col[~present] = 0
            if f.default is not None:
                col[defaulted] = f.default
        elif f.dtype is ValueType.BOOL:
            col = rng.random(n) < 0.5
            col[~present] = False
        elif f.dtype is ValueType.FLOAT_LIST and f.dim:
            col = rng.normal(size=(n, 3))
            col[~present] = np.nan
        else:
            col = []
            for r in range(n):
                if present[r]:
                    k = int(rng.integers(0, 6))
                    if f.dtype is ValueType.STRING:
                        col.append("é" * k + "|" + "x" * int(rng.integers(0, 200)))
                    elif f.dtype is ValueType.FLOAT_LIST:
                        col.append(np.asarray(rng.normal(size=k).astype(np.float32), dtype=np.float64))
                    elif f.dtype is ValueType.INT64_LIST:
                        col.append(ints[rng.integers(0, len(ints), k)])
                    else:
                        col.append(["", "ü" * k, "z"][: k % 4])
                elif defaulted[r]:
                    col.append(f.default)
                else:
                    col.append(None)
        columns.append(col)
    ts = rng.integers(0, 2**41, n).astype(np.int64) * 1000
    ts[rng.random(n) < 0.2] = np.iinfo(np.int64).min
    refs = [f"v:{f.name}" for f in feats]
    return OnlineFeatures(
        list(range(n)), refs, feats, columns, status, {"v": ts.view("datetime64[us]")},
        key_columns={"k": list(range(n))}, entity_type="k", served_at=datetime.now(UTC), feature_set=None,
        feature_set_version=None, request_context={}, views=["v"] * len(feats),
    )


def test_encoder_equals_the_protobuf_runtime_on_every_type_and_status():
    result = synthetic_result(300)
    key_msgs = [pb.EntityKey(values=[str(i) * (1 + i % 150)]) for i in range(300)]  # keys of 1..150 bytes (2-byte lengths)
    data = encode_response(result, [k.SerializeToString() for k in key_msgs])
    _assert_same(pb.GetOnlineFeaturesResponse.FromString(data), reference_response(result, key_msgs))


def test_encoder_speed():
    """1,000 entities x 20 numeric features: bulk encoding vs building FeatureValue messages with the upb runtime."""
    n, k = 1000, 20
    feats = [Feature(f"f{j}", ValueType.FLOAT64 if j % 2 else ValueType.INT64) for j in range(k)]
    rng = np.random.default_rng(1)
    cols = [rng.normal(size=n) if f.dtype is ValueType.FLOAT64 else rng.integers(0, 10**6, n) for f in feats]
    ts_ms = 1_717_171_717_123
    ts = np.full(n, ts_ms * 1000, dtype=np.int64).view("datetime64[us]")
    refs = [f"v:{f.name}" for f in feats]
    result = OnlineFeatures(list(range(n)), refs, feats, cols,
                            np.full((n, k), FeatureStatus.PRESENT, dtype=np.uint8), {"v": ts},
                            key_columns={"k": list(range(n))}, entity_type="k", served_at=datetime.now(UTC),
                            feature_set=None, feature_set_version=None, request_context={}, views=["v"] * k)
    key_msgs = keys(*range(n))
    key_bytes = [m.SerializeToString() for m in key_msgs]

    def runtime() -> bytes:  # the straightforward implementation: one message per value
        columns = [c.tolist() for c in cols]
        rows = []
        for i in range(n):
            values = [pb.FeatureValue(double_value=columns[j][i], status=1, event_timestamp_ms=ts_ms) if f.dtype is ValueType.FLOAT64
                      else pb.FeatureValue(int64_value=columns[j][i], status=1, event_timestamp_ms=ts_ms)
                      for j, f in enumerate(feats)]
            rows.append(pb.FeatureRow(entity_key=key_msgs[i], values=values))
        return pb.GetOnlineFeaturesResponse(feature_names=refs, rows=rows).SerializeToString()

    def best(fn, repeat):
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    assert pb.GetOnlineFeaturesResponse.FromString(encode_response(result, key_bytes)) == pb.GetOnlineFeaturesResponse.FromString(runtime())
    bulk = best(lambda: encode_response(result, key_bytes), 10)
    slow = best(runtime, 3)
    print(f"\nencode {n}x{k} values: bulk {bulk * 1e3:.2f} ms, protobuf runtime {slow * 1e3:.2f} ms ({slow / bulk:.1f}x)")
    assert bulk * 2 < slow


# ----------------------------------------------------------------------------- building and running the server


def test_build_refuses_definitions_the_registry_does_not_have_live(feature_config, stack, tmp_path):
    from featurestore.registry import RegistryError
    from featurestore.service import build_feature_server

    empty = tmp_path / "empty-registry"
    with pytest.raises(RegistryError, match="no feature definitions applied"):
        build_feature_server(feature_config, stack.redis_url, registry=empty)
    server = build_feature_server(feature_config, stack.redis_url, registry=empty, check_registry=False)
    assert server.servicer.client.feature_set_versions == {}
    server.servicer.close()


def test_serve_entry_point(seeded, feature_config, stack):
    """`cascade features serve` as a process: answers on the port it prints, stops cleanly on SIGTERM."""
    import os
    import re
    import select
    import signal
    import subprocess
    import sys

    from cascade.config import REPO_ROOT

    defs = feature_config.features.definitions

    env = {**os.environ, "REDIS_URL": stack.redis_url, "CASCADE__FEATURES__PROJECT": feature_config.features.project,
           "CASCADE__PATHS__VAR_DIR": str(feature_config.paths.var_dir), "CASCADE__PORTS__METRICS": "0"}
    code = "import sys; from featurestore.service import serve; sys.exit(serve(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--definitions", str(defs), "--port", "0"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        match = re.search(r"FeatureService on ([\d.]+):(\d+)", line)
        assert match, (line, proc.poll())
        with grpc.insecure_channel(f"{match[1]}:{match[2]}") as channel:
            reply = features_pb2_grpc.FeatureServiceStub(channel).GetOnlineFeatures(
                request("user", keys(1), feature_set="ranker"), timeout=10)
        assert (reply.feature_set.name, reply.feature_set.version) == ("ranker", 1)
        assert value(reply.rows[0].values[0]) == 30
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
