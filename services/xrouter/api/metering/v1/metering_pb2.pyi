import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from xrouter.api.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATE_UNSPECIFIED: _ClassVar[RequestState]
    REQUEST_STATE_NEW: _ClassVar[RequestState]
    REQUEST_STATE_IN_FLIGHT: _ClassVar[RequestState]
    REQUEST_STATE_SETTLED: _ClassVar[RequestState]
    REQUEST_STATE_ABANDONED: _ClassVar[RequestState]

class TimeBucket(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIME_BUCKET_UNSPECIFIED: _ClassVar[TimeBucket]
    TIME_BUCKET_HOUR: _ClassVar[TimeBucket]
    TIME_BUCKET_DAY: _ClassVar[TimeBucket]
    TIME_BUCKET_MONTH: _ClassVar[TimeBucket]

class BudgetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_PERIOD_UNSPECIFIED: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_DAY: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_MONTH: _ClassVar[BudgetPeriod]

class FeedbackSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_SOURCE_UNSPECIFIED: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_USER: _ClassVar[FeedbackSource]
    FEEDBACK_SOURCE_REFERENCE: _ClassVar[FeedbackSource]
REQUEST_STATE_UNSPECIFIED: RequestState
REQUEST_STATE_NEW: RequestState
REQUEST_STATE_IN_FLIGHT: RequestState
REQUEST_STATE_SETTLED: RequestState
REQUEST_STATE_ABANDONED: RequestState
TIME_BUCKET_UNSPECIFIED: TimeBucket
TIME_BUCKET_HOUR: TimeBucket
TIME_BUCKET_DAY: TimeBucket
TIME_BUCKET_MONTH: TimeBucket
BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod
BUDGET_PERIOD_DAY: BudgetPeriod
BUDGET_PERIOD_MONTH: BudgetPeriod
FEEDBACK_SOURCE_UNSPECIFIED: FeedbackSource
FEEDBACK_SOURCE_USER: FeedbackSource
FEEDBACK_SOURCE_REFERENCE: FeedbackSource

class AuthorizeRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "estimate_micro_usd", "models", "generated_request_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    estimate_micro_usd: int
    models: _containers.RepeatedScalarFieldContainer[str]
    generated_request_id: bool
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., estimate_micro_usd: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., generated_request_id: _Optional[bool] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("reservation_id", "remaining_micro_usd", "soft_limit_exceeded", "warnings", "expires_at", "state", "response_json")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    SOFT_LIMIT_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    remaining_micro_usd: int
    soft_limit_exceeded: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    state: RequestState
    response_json: str
    def __init__(self, reservation_id: _Optional[str] = ..., remaining_micro_usd: _Optional[int] = ..., soft_limit_exceeded: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[RequestState, str]] = ..., response_json: _Optional[str] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("request_id", "call_index", "tenant", "model", "input_tokens", "output_tokens", "cost_micro_usd", "latency_ms", "status", "policy_version", "trace_id", "role")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_INDEX_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    call_index: int
    tenant: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    latency_ms: float
    status: _common_pb2.CallStatus
    policy_version: str
    trace_id: str
    role: str
    def __init__(self, request_id: _Optional[str] = ..., call_index: _Optional[int] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_micro_usd: _Optional[int] = ..., latency_ms: _Optional[float] = ..., status: _Optional[_Union[_common_pb2.CallStatus, str]] = ..., policy_version: _Optional[str] = ..., trace_id: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("duplicate", "spooled")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SPOOLED_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    spooled: bool
    def __init__(self, duplicate: _Optional[bool] = ..., spooled: _Optional[bool] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "strategy", "outcome", "total_cost_micro_usd", "calls", "policy_version", "trace_id", "cost_lambda", "dataset", "prompt_id", "messages", "response_json", "returned_call_index", "exploration", "call_records")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    COST_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    RETURNED_CALL_INDEX_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    CALL_RECORDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    strategy: str
    outcome: str
    total_cost_micro_usd: int
    calls: int
    policy_version: str
    trace_id: str
    cost_lambda: float
    dataset: str
    prompt_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    response_json: str
    returned_call_index: int
    exploration: Exploration
    call_records: _containers.RepeatedCompositeFieldContainer[RecordRequest]
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., strategy: _Optional[str] = ..., outcome: _Optional[str] = ..., total_cost_micro_usd: _Optional[int] = ..., calls: _Optional[int] = ..., policy_version: _Optional[str] = ..., trace_id: _Optional[str] = ..., cost_lambda: _Optional[float] = ..., dataset: _Optional[str] = ..., prompt_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., response_json: _Optional[str] = ..., returned_call_index: _Optional[int] = ..., exploration: _Optional[_Union[Exploration, _Mapping]] = ..., call_records: _Optional[_Iterable[_Union[RecordRequest, _Mapping]]] = ...) -> None: ...

class Exploration(_message.Message):
    __slots__ = ("epsilon", "first_call_probability", "explored")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    FIRST_CALL_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    first_call_probability: float
    explored: bool
    def __init__(self, epsilon: _Optional[float] = ..., first_call_probability: _Optional[float] = ..., explored: _Optional[bool] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ("spooled", "recorded_calls")
    SPOOLED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_CALLS_FIELD_NUMBER: _ClassVar[int]
    spooled: bool
    recorded_calls: int
    def __init__(self, spooled: _Optional[bool] = ..., recorded_calls: _Optional[int] = ...) -> None: ...

class SettleManyRequest(_message.Message):
    __slots__ = ("settles",)
    SETTLES_FIELD_NUMBER: _ClassVar[int]
    settles: _containers.RepeatedCompositeFieldContainer[SettleRequest]
    def __init__(self, settles: _Optional[_Iterable[_Union[SettleRequest, _Mapping]]] = ...) -> None: ...

class SettleManyResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[SettleOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[SettleOutcome, _Mapping]]] = ...) -> None: ...

class SettleOutcome(_message.Message):
    __slots__ = ("settled", "refused")
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    settled: SettleResponse
    refused: SettleRefusal
    def __init__(self, settled: _Optional[_Union[SettleResponse, _Mapping]] = ..., refused: _Optional[_Union[SettleRefusal, _Mapping]] = ...) -> None: ...

class SettleRefusal(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant", "start", "end", "model", "bucket")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    model: str
    bucket: TimeBucket
    def __init__(self, tenant: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., bucket: _Optional[_Union[TimeBucket, str]] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model", "calls", "input_tokens", "output_tokens", "cost_micro_usd")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    def __init__(self, model: _Optional[str] = ..., calls: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_micro_usd: _Optional[int] = ...) -> None: ...

class UsageBucket(_message.Message):
    __slots__ = ("start", "usage")
    START_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    usage: ModelUsage
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., usage: _Optional[_Union[ModelUsage, _Mapping]] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("tenant", "models", "total_cost_micro_usd", "requests", "buckets")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    total_cost_micro_usd: int
    requests: int
    buckets: _containers.RepeatedCompositeFieldContainer[UsageBucket]
    def __init__(self, tenant: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., total_cost_micro_usd: _Optional[int] = ..., requests: _Optional[int] = ..., buckets: _Optional[_Iterable[_Union[UsageBucket, _Mapping]]] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("tenant", "period", "limit_micro_usd", "model", "soft_limit_micro_usd")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOFT_LIMIT_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    period: BudgetPeriod
    limit_micro_usd: int
    model: str
    soft_limit_micro_usd: int
    def __init__(self, tenant: _Optional[str] = ..., period: _Optional[_Union[BudgetPeriod, str]] = ..., limit_micro_usd: _Optional[int] = ..., model: _Optional[str] = ..., soft_limit_micro_usd: _Optional[int] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecordScoreRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "score", "reward")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    score: float
    reward: float
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., score: _Optional[float] = ..., reward: _Optional[float] = ...) -> None: ...

class RecordScoreResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "score", "source", "comment")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    score: float
    source: FeedbackSource
    comment: str
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[_Union[FeedbackSource, str]] = ..., comment: _Optional[str] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("duplicate", "score")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    score: float
    def __init__(self, duplicate: _Optional[bool] = ..., score: _Optional[float] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant", "label", "admin")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    label: str
    admin: bool
    def __init__(self, tenant: _Optional[str] = ..., label: _Optional[str] = ..., admin: _Optional[bool] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("key_id", "api_key")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    api_key: str
    def __init__(self, key_id: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuthenticateRequest(_message.Message):
    __slots__ = ("key_sha256",)
    KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    key_sha256: str
    def __init__(self, key_sha256: _Optional[str] = ...) -> None: ...

class AuthenticateResponse(_message.Message):
    __slots__ = ("tenant", "admin", "key_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    admin: bool
    key_id: str
    def __init__(self, tenant: _Optional[str] = ..., admin: _Optional[bool] = ..., key_id: _Optional[str] = ...) -> None: ...
