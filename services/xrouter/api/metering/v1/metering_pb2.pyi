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

class BudgetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_PERIOD_UNSPECIFIED: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_DAY: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_MONTH: _ClassVar[BudgetPeriod]
BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod
BUDGET_PERIOD_DAY: BudgetPeriod
BUDGET_PERIOD_MONTH: BudgetPeriod

class AuthorizeRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "estimate_micro_usd")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    estimate_micro_usd: int
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., estimate_micro_usd: _Optional[int] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("reservation_id", "remaining_micro_usd")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    remaining_micro_usd: int
    def __init__(self, reservation_id: _Optional[str] = ..., remaining_micro_usd: _Optional[int] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("request_id", "call_index", "tenant", "model", "input_tokens", "output_tokens", "cost_micro_usd", "latency_ms", "status", "policy_version", "trace_id")
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
    def __init__(self, request_id: _Optional[str] = ..., call_index: _Optional[int] = ..., tenant: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_micro_usd: _Optional[int] = ..., latency_ms: _Optional[float] = ..., status: _Optional[_Union[_common_pb2.CallStatus, str]] = ..., policy_version: _Optional[str] = ..., trace_id: _Optional[str] = ...) -> None: ...

class RecordResponse(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("request_id", "tenant", "strategy", "outcome", "total_cost_micro_usd", "calls")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant: str
    strategy: str
    outcome: str
    total_cost_micro_usd: int
    calls: int
    def __init__(self, request_id: _Optional[str] = ..., tenant: _Optional[str] = ..., strategy: _Optional[str] = ..., outcome: _Optional[str] = ..., total_cost_micro_usd: _Optional[int] = ..., calls: _Optional[int] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant", "start", "end")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, tenant: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

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

class GetUsageResponse(_message.Message):
    __slots__ = ("tenant", "models", "total_cost_micro_usd", "requests")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    total_cost_micro_usd: int
    requests: int
    def __init__(self, tenant: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., total_cost_micro_usd: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("tenant", "period", "limit_micro_usd")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    period: BudgetPeriod
    limit_micro_usd: int
    def __init__(self, tenant: _Optional[str] = ..., period: _Optional[_Union[BudgetPeriod, str]] = ..., limit_micro_usd: _Optional[int] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
