from proto.cascade.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExperimentOverrides(_message.Message):
    __slots__ = ("bucket", "ranking_model_version", "recall_quotas", "disabled_rerank_rules")
    class RecallQuotasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    RANKING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECALL_QUOTAS_FIELD_NUMBER: _ClassVar[int]
    DISABLED_RERANK_RULES_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    ranking_model_version: str
    recall_quotas: _containers.ScalarMap[str, int]
    disabled_rerank_rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, bucket: _Optional[str] = ..., ranking_model_version: _Optional[str] = ..., recall_quotas: _Optional[_Mapping[str, int]] = ..., disabled_rerank_rules: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFeedRequest(_message.Message):
    __slots__ = ("user_id", "count", "context", "request_id", "exclude_item_ids", "experiment_overrides")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    count: int
    context: _common_pb2.RequestContext
    request_id: str
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    experiment_overrides: ExperimentOverrides
    def __init__(self, user_id: _Optional[str] = ..., count: _Optional[int] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., request_id: _Optional[str] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., experiment_overrides: _Optional[_Union[ExperimentOverrides, _Mapping]] = ...) -> None: ...

class FeedItem(_message.Message):
    __slots__ = ("item_id", "score", "position", "recall_channels", "reasons", "kind", "ranking_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RECALL_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RANKING_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    position: int
    recall_channels: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChannelScore]
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.RerankReason]
    kind: _common_pb2.ItemKind
    ranking_score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., position: _Optional[int] = ..., recall_channels: _Optional[_Iterable[_Union[_common_pb2.ChannelScore, _Mapping]]] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.RerankReason, _Mapping]]] = ..., kind: _Optional[_Union[_common_pb2.ItemKind, str]] = ..., ranking_score: _Optional[float] = ...) -> None: ...

class GetFeedResponse(_message.Message):
    __slots__ = ("request_id", "items", "degraded", "degraded_reasons", "model_versions", "experiment", "served_feature_id", "served_at_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FEATURE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[FeedItem]
    degraded: bool
    degraded_reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.DegradedReason]
    model_versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ModelVersion]
    experiment: _common_pb2.ExperimentAssignment
    served_feature_id: str
    served_at_ms: int
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[FeedItem, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[_common_pb2.DegradedReason, _Mapping]]] = ..., model_versions: _Optional[_Iterable[_Union[_common_pb2.ModelVersion, _Mapping]]] = ..., experiment: _Optional[_Union[_common_pb2.ExperimentAssignment, _Mapping]] = ..., served_feature_id: _Optional[str] = ..., served_at_ms: _Optional[int] = ...) -> None: ...
