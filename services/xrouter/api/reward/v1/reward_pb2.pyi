from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reference(_message.Message):
    __slots__ = ("task_type", "gold", "dataset", "prompt_id")
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    task_type: str
    gold: str
    dataset: str
    prompt_id: str
    def __init__(self, task_type: _Optional[str] = ..., gold: _Optional[str] = ..., dataset: _Optional[str] = ..., prompt_id: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "response", "reference", "cost_usd", "cost_lambda")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    response: str
    reference: Reference
    cost_usd: float
    cost_lambda: float
    def __init__(self, prompt: _Optional[str] = ..., response: _Optional[str] = ..., reference: _Optional[_Union[Reference, _Mapping]] = ..., cost_usd: _Optional[float] = ..., cost_lambda: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("score", "reward", "detail")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    score: float
    reward: float
    detail: str
    def __init__(self, score: _Optional[float] = ..., reward: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...
