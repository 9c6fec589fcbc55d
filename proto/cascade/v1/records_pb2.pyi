from proto.cascade.v1 import common_pb2 as _common_pb2
from proto.cascade.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Impression(_message.Message):
    __slots__ = ("request_id", "user_id", "item_id", "position", "score", "ranking_score", "model_version", "experiment", "served_feature_id", "timestamp_ms", "recall_channels", "kind", "surface", "degraded")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANKING_SCORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FEATURE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    RECALL_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    item_id: str
    position: int
    score: float
    ranking_score: float
    model_version: _common_pb2.ModelVersion
    experiment: _common_pb2.ExperimentAssignment
    served_feature_id: str
    timestamp_ms: int
    recall_channels: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChannelScore]
    kind: _common_pb2.ItemKind
    surface: str
    degraded: bool
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., position: _Optional[int] = ..., score: _Optional[float] = ..., ranking_score: _Optional[float] = ..., model_version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., experiment: _Optional[_Union[_common_pb2.ExperimentAssignment, _Mapping]] = ..., served_feature_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., recall_channels: _Optional[_Iterable[_Union[_common_pb2.ChannelScore, _Mapping]]] = ..., kind: _Optional[_Union[_common_pb2.ItemKind, str]] = ..., surface: _Optional[str] = ..., degraded: _Optional[bool] = ...) -> None: ...

class LabeledSample(_message.Message):
    __slots__ = ("sample_id", "request_id", "user_id", "item_id", "label", "event_types", "impression_timestamp_ms", "click_timestamp_ms", "features", "position", "model_version", "joined_at_ms")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CLICK_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    request_id: str
    user_id: str
    item_id: str
    label: float
    event_types: _containers.RepeatedScalarFieldContainer[_events_pb2.EventType]
    impression_timestamp_ms: int
    click_timestamp_ms: int
    features: _common_pb2.FeatureVectorRef
    position: int
    model_version: _common_pb2.ModelVersion
    joined_at_ms: int
    def __init__(self, sample_id: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., label: _Optional[float] = ..., event_types: _Optional[_Iterable[_Union[_events_pb2.EventType, str]]] = ..., impression_timestamp_ms: _Optional[int] = ..., click_timestamp_ms: _Optional[int] = ..., features: _Optional[_Union[_common_pb2.FeatureVectorRef, _Mapping]] = ..., position: _Optional[int] = ..., model_version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., joined_at_ms: _Optional[int] = ...) -> None: ...
