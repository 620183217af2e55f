from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckReferenceRequest(_message.Message):
    __slots__ = ("reference",)
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    reference: Reference
    def __init__(self, reference: _Optional[_Union[Reference, _Mapping]] = ...) -> None: ...

class CheckReferenceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Reference(_message.Message):
    __slots__ = ("task_type", "gold", "dataset", "prompt_id", "aliases", "code", "rubric", "options")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RUBRIC_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    gold: str
    dataset: str
    prompt_id: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    code: CodeTests
    rubric: str
    options: str
    def __init__(self, task_type: _Optional[str] = ..., gold: _Optional[str] = ..., dataset: _Optional[str] = ..., prompt_id: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., code: _Optional[_Union[CodeTests, _Mapping]] = ..., rubric: _Optional[str] = ..., options: _Optional[str] = ...) -> None: ...

class CodeTests(_message.Message):
    __slots__ = ("asserts", "setup", "check", "entry_point", "prefix")
    ASSERTS_FIELD_NUMBER: _ClassVar[int]
    SETUP_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    ENTRY_POINT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    asserts: _containers.RepeatedScalarFieldContainer[str]
    setup: str
    check: str
    entry_point: str
    prefix: str
    def __init__(self, asserts: _Optional[_Iterable[str]] = ..., setup: _Optional[str] = ..., check: _Optional[str] = ..., entry_point: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "response", "reference", "cost_usd", "cost_lambda", "router_cost_usd", "failure")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    ROUTER_COST_USD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    reference: Reference
    cost_usd: float
    cost_lambda: float
    router_cost_usd: float
    failure: str
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ..., reference: _Optional[_Union[Reference, _Mapping]] = ..., cost_usd: _Optional[float] = ..., cost_lambda: _Optional[float] = ..., router_cost_usd: _Optional[float] = ..., failure: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("score", "reward", "detail", "flagged")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    score: float
    reward: float
    detail: str
    flagged: bool
    def __init__(self, score: _Optional[float] = ..., reward: _Optional[float] = ..., detail: _Optional[str] = ..., flagged: _Optional[bool] = ...) -> None: ...
