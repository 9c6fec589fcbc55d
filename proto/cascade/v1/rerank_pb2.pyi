from proto.cascade.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RerankCandidate(_message.Message):
    __slots__ = ("item_id", "score", "category", "author", "group_id", "published_at_ms", "channels", "kind", "requested_position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    category: str
    author: str
    group_id: str
    published_at_ms: int
    channels: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChannelScore]
    kind: _common_pb2.ItemKind
    requested_position: int
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., category: _Optional[str] = ..., author: _Optional[str] = ..., group_id: _Optional[str] = ..., published_at_ms: _Optional[int] = ..., channels: _Optional[_Iterable[_Union[_common_pb2.ChannelScore, _Mapping]]] = ..., kind: _Optional[_Union[_common_pb2.ItemKind, str]] = ..., requested_position: _Optional[int] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("user_id", "count", "candidates", "injections", "context", "request_id", "disabled_rules")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INJECTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISABLED_RULES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    count: int
    candidates: _containers.RepeatedCompositeFieldContainer[RerankCandidate]
    injections: _containers.RepeatedCompositeFieldContainer[RerankCandidate]
    context: _common_pb2.RequestContext
    request_id: str
    disabled_rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., count: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[RerankCandidate, _Mapping]]] = ..., injections: _Optional[_Iterable[_Union[RerankCandidate, _Mapping]]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., request_id: _Optional[str] = ..., disabled_rules: _Optional[_Iterable[str]] = ...) -> None: ...

class RerankedItem(_message.Message):
    __slots__ = ("item_id", "position", "final_score", "original_score", "reasons", "kind", "channels")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    final_score: float
    original_score: float
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.RerankReason]
    kind: _common_pb2.ItemKind
    channels: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChannelScore]
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., final_score: _Optional[float] = ..., original_score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.RerankReason, _Mapping]]] = ..., kind: _Optional[_Union[_common_pb2.ItemKind, str]] = ..., channels: _Optional[_Iterable[_Union[_common_pb2.ChannelScore, _Mapping]]] = ...) -> None: ...

class DroppedItem(_message.Message):
    __slots__ = ("item_id", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reason: _common_pb2.RerankReason
    def __init__(self, item_id: _Optional[str] = ..., reason: _Optional[_Union[_common_pb2.RerankReason, _Mapping]] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("items", "dropped", "policy_version", "degraded", "degraded_reasons")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RerankedItem]
    dropped: _containers.RepeatedCompositeFieldContainer[DroppedItem]
    policy_version: str
    degraded: bool
    degraded_reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.DegradedReason]
    def __init__(self, items: _Optional[_Iterable[_Union[RerankedItem, _Mapping]]] = ..., dropped: _Optional[_Iterable[_Union[DroppedItem, _Mapping]]] = ..., policy_version: _Optional[str] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[_common_pb2.DegradedReason, _Mapping]]] = ...) -> None: ...
