from proto.cascade.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelVersionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_VERSION_STATUS_UNSPECIFIED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_REGISTERED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_LOADED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_LIVE: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_REJECTED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_FAILED: _ClassVar[ModelVersionStatus]
    MODEL_VERSION_STATUS_RETIRED: _ClassVar[ModelVersionStatus]
MODEL_VERSION_STATUS_UNSPECIFIED: ModelVersionStatus
MODEL_VERSION_STATUS_REGISTERED: ModelVersionStatus
MODEL_VERSION_STATUS_LOADED: ModelVersionStatus
MODEL_VERSION_STATUS_LIVE: ModelVersionStatus
MODEL_VERSION_STATUS_REJECTED: ModelVersionStatus
MODEL_VERSION_STATUS_FAILED: ModelVersionStatus
MODEL_VERSION_STATUS_RETIRED: ModelVersionStatus

class RankRequest(_message.Message):
    __slots__ = ("user_id", "item_ids", "context", "model_name", "model_version", "log_features", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOG_FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    context: _common_pb2.RequestContext
    model_name: str
    model_version: str
    log_features: bool
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., log_features: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("scores", "model_version", "degraded", "degraded_reasons", "served_feature_id", "experiment")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASONS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FEATURE_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: _common_pb2.ModelVersion
    degraded: bool
    degraded_reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.DegradedReason]
    served_feature_id: str
    experiment: _common_pb2.ExperimentAssignment
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., degraded: _Optional[bool] = ..., degraded_reasons: _Optional[_Iterable[_Union[_common_pb2.DegradedReason, _Mapping]]] = ..., served_feature_id: _Optional[str] = ..., experiment: _Optional[_Union[_common_pb2.ExperimentAssignment, _Mapping]] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("model", "status", "status_message", "created_at_ms", "live_since_ms", "feature_set", "metrics", "parent_version", "artifact_uri")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    LIVE_SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelVersion
    status: ModelVersionStatus
    status_message: str
    created_at_ms: int
    live_since_ms: int
    feature_set: _common_pb2.FeatureSetRef
    metrics: _containers.ScalarMap[str, float]
    parent_version: str
    artifact_uri: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelVersion, _Mapping]] = ..., status: _Optional[_Union[ModelVersionStatus, str]] = ..., status_message: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., live_since_ms: _Optional[int] = ..., feature_set: _Optional[_Union[_common_pb2.FeatureSetRef, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parent_version: _Optional[str] = ..., artifact_uri: _Optional[str] = ...) -> None: ...

class TrafficSplit(_message.Message):
    __slots__ = ("experiment", "control_version", "treatment_version", "treatment_fraction", "updated_at_ms")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TREATMENT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    control_version: str
    treatment_version: str
    treatment_fraction: float
    updated_at_ms: int
    def __init__(self, experiment: _Optional[str] = ..., control_version: _Optional[str] = ..., treatment_version: _Optional[str] = ..., treatment_fraction: _Optional[float] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model_name", "status_filter")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FILTER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    status_filter: _containers.RepeatedScalarFieldContainer[ModelVersionStatus]
    def __init__(self, model_name: _Optional[str] = ..., status_filter: _Optional[_Iterable[_Union[ModelVersionStatus, str]]] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class GetLiveVersionRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetLiveVersionResponse(_message.Message):
    __slots__ = ("live", "auto_promotion_suspended", "traffic_split")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    AUTO_PROMOTION_SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_SPLIT_FIELD_NUMBER: _ClassVar[int]
    live: ModelVersionInfo
    auto_promotion_suspended: bool
    traffic_split: TrafficSplit
    def __init__(self, live: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., auto_promotion_suspended: _Optional[bool] = ..., traffic_split: _Optional[_Union[TrafficSplit, _Mapping]] = ...) -> None: ...

class PinVersionRequest(_message.Message):
    __slots__ = ("model_name", "version", "suspend_auto_promotion", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_AUTO_PROMOTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    suspend_auto_promotion: bool
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., suspend_auto_promotion: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class PinVersionResponse(_message.Message):
    __slots__ = ("live", "previous")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    live: ModelVersionInfo
    previous: ModelVersionInfo
    def __init__(self, live: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., previous: _Optional[_Union[ModelVersionInfo, _Mapping]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model_name", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("live", "rolled_back_from")
    LIVE_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FROM_FIELD_NUMBER: _ClassVar[int]
    live: ModelVersionInfo
    rolled_back_from: ModelVersionInfo
    def __init__(self, live: _Optional[_Union[ModelVersionInfo, _Mapping]] = ..., rolled_back_from: _Optional[_Union[ModelVersionInfo, _Mapping]] = ...) -> None: ...

class SetTrafficSplitRequest(_message.Message):
    __slots__ = ("model_name", "split")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    split: TrafficSplit
    def __init__(self, model_name: _Optional[str] = ..., split: _Optional[_Union[TrafficSplit, _Mapping]] = ...) -> None: ...

class SetTrafficSplitResponse(_message.Message):
    __slots__ = ("split",)
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    split: TrafficSplit
    def __init__(self, split: _Optional[_Union[TrafficSplit, _Mapping]] = ...) -> None: ...
