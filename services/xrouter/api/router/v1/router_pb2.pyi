from xrouter.api.common.v1 import common_pb2 as _common_pb2
from xrouter.api.reward.v1 import reward_pb2 as _reward_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_DIRECT: _ClassVar[Strategy]
    STRATEGY_SELECT: _ClassVar[Strategy]
    STRATEGY_SYNTHESIZE: _ClassVar[Strategy]
    STRATEGY_FALLBACK: _ClassVar[Strategy]

class Thumbs(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THUMBS_UNSPECIFIED: _ClassVar[Thumbs]
    THUMBS_UP: _ClassVar[Thumbs]
    THUMBS_DOWN: _ClassVar[Thumbs]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_DIRECT: Strategy
STRATEGY_SELECT: Strategy
STRATEGY_SYNTHESIZE: Strategy
STRATEGY_FALLBACK: Strategy
THUMBS_UNSPECIFIED: Thumbs
THUMBS_UP: Thumbs
THUMBS_DOWN: Thumbs

class RouteRequest(_message.Message):
    __slots__ = ("messages", "allowed_models", "cost_lambda", "max_cost_usd", "max_turns", "max_tokens", "tenant", "policy", "reference", "request_id", "temperature", "top_p", "stop", "seed", "user", "tools_json", "tool_choice_json", "response_format_json")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    COST_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_USD_FIELD_NUMBER: _ClassVar[int]
    MAX_TURNS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TOOLS_JSON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_JSON_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_JSON_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    cost_lambda: float
    max_cost_usd: float
    max_turns: int
    max_tokens: int
    tenant: str
    policy: str
    reference: _reward_pb2.Reference
    request_id: str
    temperature: float
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    user: str
    tools_json: str
    tool_choice_json: str
    response_format_json: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., cost_lambda: _Optional[float] = ..., max_cost_usd: _Optional[float] = ..., max_turns: _Optional[int] = ..., max_tokens: _Optional[int] = ..., tenant: _Optional[str] = ..., policy: _Optional[str] = ..., reference: _Optional[_Union[_reward_pb2.Reference, _Mapping]] = ..., request_id: _Optional[str] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., user: _Optional[str] = ..., tools_json: _Optional[str] = ..., tool_choice_json: _Optional[str] = ..., response_format_json: _Optional[str] = ...) -> None: ...

class ModelCall(_message.Message):
    __slots__ = ("index", "turn", "model", "system_prompt", "temperature", "input_tokens", "output_tokens", "tokens_estimated", "cost_micro_usd", "cost_usd", "latency_ms", "status", "error", "response", "finish_reason", "tool_calls_json", "role")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_JSON_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    index: int
    turn: int
    model: str
    system_prompt: str
    temperature: float
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_micro_usd: int
    cost_usd: float
    latency_ms: float
    status: _common_pb2.CallStatus
    error: str
    response: str
    finish_reason: str
    tool_calls_json: str
    role: str
    def __init__(self, index: _Optional[int] = ..., turn: _Optional[int] = ..., model: _Optional[str] = ..., system_prompt: _Optional[str] = ..., temperature: _Optional[float] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., tokens_estimated: _Optional[bool] = ..., cost_micro_usd: _Optional[int] = ..., cost_usd: _Optional[float] = ..., latency_ms: _Optional[float] = ..., status: _Optional[_Union[_common_pb2.CallStatus, str]] = ..., error: _Optional[str] = ..., response: _Optional[str] = ..., finish_reason: _Optional[str] = ..., tool_calls_json: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("answer", "calls", "total_cost_usd", "total_cost_micro_usd", "strategy", "turns_used", "turn_limit_reached", "policy_kind", "policy_version", "request_id", "trace_id", "score", "reward", "selected_call", "replayed")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_USD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COST_MICRO_USD_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TURNS_USED_FIELD_NUMBER: _ClassVar[int]
    TURN_LIMIT_REACHED_FIELD_NUMBER: _ClassVar[int]
    POLICY_KIND_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SELECTED_CALL_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    answer: str
    calls: _containers.RepeatedCompositeFieldContainer[ModelCall]
    total_cost_usd: float
    total_cost_micro_usd: int
    strategy: Strategy
    turns_used: int
    turn_limit_reached: bool
    policy_kind: str
    policy_version: str
    request_id: str
    trace_id: str
    score: float
    reward: float
    selected_call: int
    replayed: bool
    def __init__(self, answer: _Optional[str] = ..., calls: _Optional[_Iterable[_Union[ModelCall, _Mapping]]] = ..., total_cost_usd: _Optional[float] = ..., total_cost_micro_usd: _Optional[int] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., turns_used: _Optional[int] = ..., turn_limit_reached: _Optional[bool] = ..., policy_kind: _Optional[str] = ..., policy_version: _Optional[str] = ..., request_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., score: _Optional[float] = ..., reward: _Optional[float] = ..., selected_call: _Optional[int] = ..., replayed: _Optional[bool] = ...) -> None: ...

class RouteEvent(_message.Message):
    __slots__ = ("decision", "call_started", "call_finished", "answer_chunk", "done")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CALL_STARTED_FIELD_NUMBER: _ClassVar[int]
    CALL_FINISHED_FIELD_NUMBER: _ClassVar[int]
    ANSWER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    call_started: ModelCall
    call_finished: ModelCall
    answer_chunk: str
    done: RouteResponse
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., call_started: _Optional[_Union[ModelCall, _Mapping]] = ..., call_finished: _Optional[_Union[ModelCall, _Mapping]] = ..., answer_chunk: _Optional[str] = ..., done: _Optional[_Union[RouteResponse, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("turn", "action", "models", "selected_call")
    TURN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_CALL_FIELD_NUMBER: _ClassVar[int]
    turn: int
    action: str
    models: _containers.RepeatedScalarFieldContainer[str]
    selected_call: int
    def __init__(self, turn: _Optional[int] = ..., action: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., selected_call: _Optional[int] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("kind", "version", "source")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    version: str
    source: str
    def __init__(self, kind: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class LoadPolicyRequest(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "score", "thumbs", "comment", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THUMBS_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    thumbs: Thumbs
    comment: str
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., thumbs: _Optional[_Union[Thumbs, str]] = ..., comment: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("request_id", "score", "duplicate")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    duplicate: bool
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., duplicate: _Optional[bool] = ...) -> None: ...
