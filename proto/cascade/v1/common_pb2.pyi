from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Platform(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLATFORM_UNSPECIFIED: _ClassVar[Platform]
    PLATFORM_IOS: _ClassVar[Platform]
    PLATFORM_ANDROID: _ClassVar[Platform]
    PLATFORM_WEB: _ClassVar[Platform]
    PLATFORM_OTHER: _ClassVar[Platform]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_DEEPFM: _ClassVar[ModelKind]
    MODEL_KIND_DIN: _ClassVar[ModelKind]
    MODEL_KIND_FTRL: _ClassVar[ModelKind]
    MODEL_KIND_HEURISTIC: _ClassVar[ModelKind]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_RECALL: _ClassVar[Stage]
    STAGE_FEATURES: _ClassVar[Stage]
    STAGE_RANKING: _ClassVar[Stage]
    STAGE_RERANK: _ClassVar[Stage]
    STAGE_LOGGING: _ClassVar[Stage]

class DegradationCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADATION_CODE_UNSPECIFIED: _ClassVar[DegradationCode]
    DEGRADATION_CODE_TIMEOUT: _ClassVar[DegradationCode]
    DEGRADATION_CODE_UNAVAILABLE: _ClassVar[DegradationCode]
    DEGRADATION_CODE_CIRCUIT_OPEN: _ClassVar[DegradationCode]
    DEGRADATION_CODE_ERROR: _ClassVar[DegradationCode]
    DEGRADATION_CODE_FEATURES_MISSING: _ClassVar[DegradationCode]
    DEGRADATION_CODE_MODEL_UNAVAILABLE: _ClassVar[DegradationCode]
    DEGRADATION_CODE_LOAD_SHED: _ClassVar[DegradationCode]
    DEGRADATION_CODE_INSUFFICIENT_RESULTS: _ClassVar[DegradationCode]

class ItemKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_KIND_UNSPECIFIED: _ClassVar[ItemKind]
    ITEM_KIND_ORGANIC: _ClassVar[ItemKind]
    ITEM_KIND_AD: _ClassVar[ItemKind]
    ITEM_KIND_BOOSTED: _ClassVar[ItemKind]
PLATFORM_UNSPECIFIED: Platform
PLATFORM_IOS: Platform
PLATFORM_ANDROID: Platform
PLATFORM_WEB: Platform
PLATFORM_OTHER: Platform
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_DEEPFM: ModelKind
MODEL_KIND_DIN: ModelKind
MODEL_KIND_FTRL: ModelKind
MODEL_KIND_HEURISTIC: ModelKind
STAGE_UNSPECIFIED: Stage
STAGE_RECALL: Stage
STAGE_FEATURES: Stage
STAGE_RANKING: Stage
STAGE_RERANK: Stage
STAGE_LOGGING: Stage
DEGRADATION_CODE_UNSPECIFIED: DegradationCode
DEGRADATION_CODE_TIMEOUT: DegradationCode
DEGRADATION_CODE_UNAVAILABLE: DegradationCode
DEGRADATION_CODE_CIRCUIT_OPEN: DegradationCode
DEGRADATION_CODE_ERROR: DegradationCode
DEGRADATION_CODE_FEATURES_MISSING: DegradationCode
DEGRADATION_CODE_MODEL_UNAVAILABLE: DegradationCode
DEGRADATION_CODE_LOAD_SHED: DegradationCode
DEGRADATION_CODE_INSUFFICIENT_RESULTS: DegradationCode
ITEM_KIND_UNSPECIFIED: ItemKind
ITEM_KIND_ORGANIC: ItemKind
ITEM_KIND_AD: ItemKind
ITEM_KIND_BOOSTED: ItemKind

class RequestContext(_message.Message):
    __slots__ = ("timestamp_ms", "platform", "device_id", "app_version", "locale", "country", "surface", "page_index", "session_id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    timestamp_ms: int
    platform: Platform
    device_id: str
    app_version: str
    locale: str
    country: str
    surface: str
    page_index: int
    session_id: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, timestamp_ms: _Optional[int] = ..., platform: _Optional[_Union[Platform, str]] = ..., device_id: _Optional[str] = ..., app_version: _Optional[str] = ..., locale: _Optional[str] = ..., country: _Optional[str] = ..., surface: _Optional[str] = ..., page_index: _Optional[int] = ..., session_id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ChannelScore(_message.Message):
    __slots__ = ("channel", "score", "rank")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    channel: str
    score: float
    rank: int
    def __init__(self, channel: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model_name", "version", "kind")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    kind: ModelKind
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ...) -> None: ...

class FeatureSetRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class FeatureVectorRef(_message.Message):
    __slots__ = ("served_feature_id", "item_id", "feature_set")
    SERVED_FEATURE_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SET_FIELD_NUMBER: _ClassVar[int]
    served_feature_id: str
    item_id: str
    feature_set: FeatureSetRef
    def __init__(self, served_feature_id: _Optional[str] = ..., item_id: _Optional[str] = ..., feature_set: _Optional[_Union[FeatureSetRef, _Mapping]] = ...) -> None: ...

class DegradedReason(_message.Message):
    __slots__ = ("stage", "code", "component", "fallback", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    code: DegradationCode
    component: str
    fallback: str
    message: str
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., code: _Optional[_Union[DegradationCode, str]] = ..., component: _Optional[str] = ..., fallback: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RerankReason(_message.Message):
    __slots__ = ("rule", "explanation")
    RULE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    rule: str
    explanation: str
    def __init__(self, rule: _Optional[str] = ..., explanation: _Optional[str] = ...) -> None: ...

class ExperimentAssignment(_message.Message):
    __slots__ = ("experiment", "bucket", "overridden")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    experiment: str
    bucket: str
    overridden: bool
    def __init__(self, experiment: _Optional[str] = ..., bucket: _Optional[str] = ..., overridden: _Optional[bool] = ...) -> None: ...
