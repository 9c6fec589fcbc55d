"""Contract tests for the cascade.v1 gRPC API in proto/cascade/v1.

* the committed generated modules match a fresh ``python -m proto.generate``;
* every generated module imports (including cross-file imports);
* every service exists with exactly the expected unary methods and types;
* every message, field, oneof, enum, enum value, service and rpc carries a
  leading ``//`` comment (checked from protoc's source info);
* enums follow the ``<ENUM_NAME>_UNSPECIFIED = 0`` convention;
* the stubs work end to end over a real in-process gRPC server.
"""

from __future__ import annotations

import importlib
import re
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from proto import generate

PACKAGE = "cascade.v1"

PROTO_FILES = {
    "common",
    "feed",
    "recall",
    "ranking",
    "rerank",
    "features",
    "events",
    "records",
}

# service -> method -> (request type, response type); all unary-unary.
SERVICES: dict[str, dict[str, tuple[str, str]]] = {
    "FeedService": {"GetFeed": ("GetFeedRequest", "GetFeedResponse")},
    "RecallService": {"Recall": ("RecallRequest", "RecallResponse")},
    "RankingService": {"Rank": ("RankRequest", "RankResponse")},
    "ModelAdminService": {
        "ListVersions": ("ListVersionsRequest", "ListVersionsResponse"),
        "GetLiveVersion": ("GetLiveVersionRequest", "GetLiveVersionResponse"),
        "PinVersion": ("PinVersionRequest", "PinVersionResponse"),
        "Rollback": ("RollbackRequest", "RollbackResponse"),
        "SetTrafficSplit": ("SetTrafficSplitRequest", "SetTrafficSplitResponse"),
    },
    "RerankService": {"Rerank": ("RerankRequest", "RerankResponse")},
    "FeatureService": {
        "GetOnlineFeatures": ("GetOnlineFeaturesRequest", "GetOnlineFeaturesResponse"),
    },
    "EventService": {"LogEvents": ("LogEventsRequest", "LogEventsResponse")},
}

# Service -> module defining it (for the generated *_pb2_grpc helpers).
SERVICE_MODULES = {
    "FeedService": "feed",
    "RecallService": "recall",
    "RankingService": "ranking",
    "ModelAdminService": "ranking",
    "RerankService": "rerank",
    "FeatureService": "features",
    "EventService": "events",
}

# Messages other components rely on besides the request/response types.
SHARED_MESSAGES = {
    "RequestContext",
    "ChannelScore",
    "ModelVersion",
    "FeatureSetRef",
    "FeatureVectorRef",
    "DegradedReason",
    "RerankReason",
    "ExperimentAssignment",
    "FeedItem",
    "RecallCandidate",
    "ChannelStats",
    "ModelVersionInfo",
    "TrafficSplit",
    "RerankCandidate",
    "RerankedItem",
    "DroppedItem",
    "EntityKey",
    "FeatureValue",
    "FeatureRow",
    "Event",
    "Impression",
    "LabeledSample",
}

_FILE = descriptor_pb2.FileDescriptorProto
_MSG = descriptor_pb2.DescriptorProto
_ENUM = descriptor_pb2.EnumDescriptorProto
_SVC = descriptor_pb2.ServiceDescriptorProto


def _module(name: str):
    return importlib.import_module(f"proto.cascade.v1.{name}")


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("fds") / "cascade_v1.binpb"
    generate.build_descriptor_set(out, include_source_info=True)
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(Path(out).read_bytes())
    return fds


def test_generated_code_is_current():
    stale = generate.stale_files()
    assert stale == [], (
        "generated proto code is stale; run `python -m proto.generate` "
        f"(with the pinned grpcio-tools) and commit: {stale}"
    )


def test_proto_sources_are_the_expected_files():
    found = {Path(p).stem for p in generate.proto_sources()}
    assert found == PROTO_FILES


@pytest.mark.parametrize("name", sorted(PROTO_FILES))
def test_generated_modules_import(name):
    pb2 = _module(f"{name}_pb2")
    _module(f"{name}_pb2_grpc")
    assert pb2.DESCRIPTOR.package == PACKAGE
    assert pb2.DESCRIPTOR.name == f"proto/cascade/v1/{name}.proto"


def test_services_and_methods_in_descriptor_pool():
    for name in PROTO_FILES:
        _module(f"{name}_pb2")
    pool = descriptor_pool.Default()
    for service, methods in SERVICES.items():
        svc = pool.FindServiceByName(f"{PACKAGE}.{service}")
        assert {m.name for m in svc.methods} == set(methods), service
        for method, (req, resp) in methods.items():
            m = svc.methods_by_name[method]
            assert m.input_type.full_name == f"{PACKAGE}.{req}", (service, method)
            assert m.output_type.full_name == f"{PACKAGE}.{resp}", (service, method)
    for message in SHARED_MESSAGES:
        pool.FindMessageTypeByName(f"{PACKAGE}.{message}")


def test_methods_are_unary(descriptor_set):
    for f in descriptor_set.file:
        for svc in f.service:
            for m in svc.method:
                assert not m.client_streaming and not m.server_streaming, (svc.name, m.name)


def test_grpc_helpers_exist():
    for service, module in SERVICE_MODULES.items():
        grpc_mod = _module(f"{module}_pb2_grpc")
        assert hasattr(grpc_mod, f"{service}Stub"), service
        assert hasattr(grpc_mod, f"{service}Servicer"), service
        assert hasattr(grpc_mod, f"add_{service}Servicer_to_server"), service


def _undocumented(f: descriptor_pb2.FileDescriptorProto) -> list[str]:
    comments = {
        tuple(loc.path): loc.leading_comments for loc in f.source_code_info.location
    }
    missing: list[str] = []

    def need(path: list[int], what: str) -> None:
        if not comments.get(tuple(path), "").strip():
            missing.append(f"{f.name}: {what}")

    def walk_enum(e: descriptor_pb2.EnumDescriptorProto, path: list[int], scope: str) -> None:
        full = scope + e.name
        need(path, f"enum {full}")
        for i, v in enumerate(e.value):
            need(path + [_ENUM.VALUE_FIELD_NUMBER, i], f"enum value {full}.{v.name}")

    def walk_message(m: descriptor_pb2.DescriptorProto, path: list[int], scope: str) -> None:
        if m.options.map_entry:  # synthesized for map<K, V>; documented by its field
            return
        full = scope + m.name
        need(path, f"message {full}")
        for i, fld in enumerate(m.field):
            need(path + [_MSG.FIELD_FIELD_NUMBER, i], f"field {full}.{fld.name}")
        synthetic = {
            fld.oneof_index for fld in m.field if fld.proto3_optional and fld.HasField("oneof_index")
        }
        for i, oneof in enumerate(m.oneof_decl):
            if i not in synthetic:  # proto3 `optional` creates an undeclared oneof
                need(path + [_MSG.ONEOF_DECL_FIELD_NUMBER, i], f"oneof {full}.{oneof.name}")
        for i, nested in enumerate(m.nested_type):
            walk_message(nested, path + [_MSG.NESTED_TYPE_FIELD_NUMBER, i], full + ".")
        for i, e in enumerate(m.enum_type):
            walk_enum(e, path + [_MSG.ENUM_TYPE_FIELD_NUMBER, i], full + ".")

    for i, m in enumerate(f.message_type):
        walk_message(m, [_FILE.MESSAGE_TYPE_FIELD_NUMBER, i], "")
    for i, e in enumerate(f.enum_type):
        walk_enum(e, [_FILE.ENUM_TYPE_FIELD_NUMBER, i], "")
    for i, svc in enumerate(f.service):
        need([_FILE.SERVICE_FIELD_NUMBER, i], f"service {svc.name}")
        for j, m in enumerate(svc.method):
            need([_FILE.SERVICE_FIELD_NUMBER, i, _SVC.METHOD_FIELD_NUMBER, j], f"rpc {svc.name}.{m.name}")
    return missing


def test_every_element_is_documented(descriptor_set):
    files = [f for f in descriptor_set.file if f.package == PACKAGE]
    assert {Path(f.name).stem for f in files} == PROTO_FILES
    assert all(f.source_code_info.location for f in files), "source info missing"
    missing = [item for f in files for item in _undocumented(f)]
    assert missing == [], "elements without a leading // comment:\n" + "\n".join(missing)


def test_documentation_check_detects_missing_comments():
    f = descriptor_pb2.FileDescriptorProto(name="x.proto", package=PACKAGE)
    f.message_type.add(name="Bare").field.add(name="f", number=1)
    assert _undocumented(f) == ["x.proto: message Bare", "x.proto: field Bare.f"]


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def test_enums_follow_unspecified_zero_convention(descriptor_set):
    enums: list[descriptor_pb2.EnumDescriptorProto] = []

    def collect(m: descriptor_pb2.DescriptorProto) -> None:
        enums.extend(m.enum_type)
        for nested in m.nested_type:
            collect(nested)

    for f in descriptor_set.file:
        enums.extend(f.enum_type)
        for m in f.message_type:
            collect(m)
    assert enums
    for e in enums:
        prefix = _upper_snake(e.name) + "_"
        assert e.value[0].number == 0 and e.value[0].name == prefix + "UNSPECIFIED", e.name
        assert all(v.name.startswith(prefix) for v in e.value), e.name


def test_feed_round_trip_over_grpc():
    common_pb2 = _module("common_pb2")
    feed_pb2 = _module("feed_pb2")
    feed_pb2_grpc = _module("feed_pb2_grpc")

    class Feed(feed_pb2_grpc.FeedServiceServicer):
        def GetFeed(self, request, context):
            items = [
                feed_pb2.FeedItem(
                    item_id=f"i{n}",
                    score=1.0 - n / 10,
                    position=n,
                    kind=common_pb2.ITEM_KIND_ORGANIC,
                    recall_channels=[common_pb2.ChannelScore(channel="popular", score=0.5, rank=n)],
                )
                for n in range(request.count)
            ]
            return feed_pb2.GetFeedResponse(
                request_id=request.request_id if request.HasField("request_id") else "generated",
                items=items,
                degraded=True,
                degraded_reasons=[
                    common_pb2.DegradedReason(
                        stage=common_pb2.STAGE_RANKING,
                        code=common_pb2.DEGRADATION_CODE_TIMEOUT,
                        fallback="recall_score",
                    )
                ],
                experiment=common_pb2.ExperimentAssignment(bucket="default"),
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    feed_pb2_grpc.add_FeedServiceServicer_to_server(Feed(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = feed_pb2_grpc.FeedServiceStub(channel)
            request = feed_pb2.GetFeedRequest(
                user_id="u1",
                count=3,
                context=common_pb2.RequestContext(platform=common_pb2.PLATFORM_IOS, country="US"),
                request_id="req-1",
            )
            response = stub.GetFeed(request, timeout=10)
    finally:
        server.stop(grace=None)
    assert response.request_id == "req-1"
    assert [item.position for item in response.items] == [0, 1, 2]
    assert not response.items[0].HasField("ranking_score")
    assert response.degraded_reasons[0].stage == common_pb2.STAGE_RANKING
    assert feed_pb2.GetFeedResponse.FromString(response.SerializeToString()) == response
