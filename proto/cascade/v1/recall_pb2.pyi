from proto.cascade.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_STATUS_UNSPECIFIED: _ClassVar[ChannelStatus]
    CHANNEL_STATUS_OK: _ClassVar[ChannelStatus]
    CHANNEL_STATUS_TIMEOUT: _ClassVar[ChannelStatus]
    CHANNEL_STATUS_ERROR: _ClassVar[ChannelStatus]
    CHANNEL_STATUS_SKIPPED: _ClassVar[ChannelStatus]
CHANNEL_STATUS_UNSPECIFIED: ChannelStatus
CHANNEL_STATUS_OK: ChannelStatus
CHANNEL_STATUS_TIMEOUT: ChannelStatus
CHANNEL_STATUS_ERROR: ChannelStatus
CHANNEL_STATUS_SKIPPED: ChannelStatus

class RecallRequest(_message.Message):
    __slots__ = ("user_id", "count", "channel_quotas", "exclude_item_ids", "context", "request_id")
    class ChannelQuotasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_QUOTAS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    count: int
    channel_quotas: _containers.ScalarMap[str, int]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _common_pb2.RequestContext
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., count: _Optional[int] = ..., channel_quotas: _Optional[_Mapping[str, int]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecallCandidate(_message.Message):
    __slots__ = ("item_id", "channels", "merged_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MERGED_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    channels: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChannelScore]
    merged_score: float
    def __init__(self, item_id: _Optional[str] = ..., channels: _Optional[_Iterable[_Union[_common_pb2.ChannelScore, _Mapping]]] = ..., merged_score: _Optional[float] = ...) -> None: ...

class ChannelStats(_message.Message):
    __slots__ = ("channel", "status", "quota", "returned_count", "latency_ms", "message")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    RETURNED_COUNT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    channel: str
    status: ChannelStatus
    quota: int
    returned_count: int
    latency_ms: float
    message: str
    def __init__(self, channel: _Optional[str] = ..., status: _Optional[_Union[ChannelStatus, str]] = ..., quota: _Optional[int] = ..., returned_count: _Optional[int] = ..., latency_ms: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class RecallResponse(_message.Message):
    __slots__ = ("candidates", "channel_stats", "degraded", "degraded_reasons", "index_version")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_STATS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[RecallCandidate]
    channel_stats: _containers.RepeatedCompositeFieldContainer[ChannelStats]
    degraded: bool
    degraded_reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.DegradedReason]
    index_version: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[RecallCandidate, _Mapping]]] = ..., channel_stats: _Optional[_Iterable[_Union[ChannelStats, _Mapping]]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[_common_pb2.DegradedReason, _Mapping]]] = ..., index_version: _Optional[str] = ...) -> None: ...
