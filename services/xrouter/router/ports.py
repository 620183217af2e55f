"""What the router needs from the other services, as plain-Python protocols. The gRPC clients in
``clients.py`` implement them; tests and training may pass in-process implementations."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from xrouter.common.call_options import CallOptions
from xrouter.reward.core import Reference as ScoringReference
from xrouter.router.policy import CallOutcome, ModelOption

__all__ = ["Adapters", "Admission", "Exploration", "Meter", "ModelReply", "Scorer", "ScoringReference"]


@dataclasses.dataclass(frozen=True)
class Admission:
    """Authorize's answer: "new" (reserved: do the work), or what an earlier request with the same
    id is doing: "in_flight", "settled" (with its stored response JSON) or "abandoned"."""

    state: str = "new"
    response_json: str = ""
    # The budget left after the reservation (the tightest hard limit that applies); -1: none applies.
    remaining_micro_usd: int = 0
    soft_limit_exceeded: bool = False


@dataclasses.dataclass(frozen=True)
class Exploration:
    """How an exploring router chose a request's first call: its rate ε, the behaviour policy's
    probability of the call it made, and whether that call was drawn at random."""

    epsilon: float
    first_call_probability: float
    explored: bool


@dataclasses.dataclass(frozen=True)
class ModelReply:
    text: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_micro_usd: int
    latency_ms: float
    finish_reason: str
    tool_calls: str = ""  # JSON array of the model's tool calls; "" when none


class Adapters(Protocol):
    async def list_models(self) -> list[ModelOption]: ...

    async def invoke(self, model: str, messages: list[tuple[str, str]], temperature: float,
                     max_tokens: int, request_id: str, call_index: int, timeout: float,
                     options: CallOptions = CallOptions()) -> ModelReply: ...

    def invoke_stream(self, model: str, messages: list[tuple[str, str]], temperature: float, max_tokens: int,
                      request_id: str, call_index: int, timeout: float,
                      options: CallOptions = CallOptions()) -> AsyncIterator[str | ModelReply]:
        """Text deltas as the backend produces them, then the accounted :class:`ModelReply`. A failure
        raises a domain error carrying ``failed_call`` (what the call consumed), like :meth:`invoke`."""
        ...


class Meter(Protocol):
    def check_room(self) -> None:
        """Raise Unavailable when new work could not be accounted (the router's journal is full)."""
        ...

    async def authorize(self, request_id: str, tenant: str, estimate_micro_usd: int, timeout: float,
                        models: Sequence[str] = (), generated: bool = False) -> Admission | None: ...

    async def record(self, request_id: str, tenant: str, call: CallOutcome, policy_version: str,
                     trace_id: str, timeout: float) -> None: ...

    async def settle(self, request_id: str, tenant: str, strategy: str, outcome: str,
                     total_cost_micro_usd: int, calls: int, timeout: float, *, policy_version: str = "",
                     trace_id: str = "", cost_lambda: float | None = None, dataset: str = "",
                     prompt_id: str = "", response_json: str = "", returned_call_index: int | None = None,
                     exploration: Exploration | None = None, call_records: Sequence[CallOutcome] = (),
                     call_policy_version: str = "") -> int:
        """Close the request, writing ``call_records`` in the same transaction; how many of them
        metering holds now (0 when it ignored them: a metering older than call_records)."""
        ...

    async def record_score(self, request_id: str, tenant: str, score: float, reward: float,
                           timeout: float) -> None: ...

    async def record_feedback(self, request_id: str, tenant: str, score: float, comment: str,
                              timeout: float) -> tuple[bool, float]:
        """A user's verdict on a settled request's answer: (duplicate, the score stored)."""
        ...


class Scorer(Protocol):
    async def score(self, prompt: str, response: str, reference: ScoringReference, cost_usd: float,
                    cost_lambda: float, timeout: float) -> tuple[float, float]:
        """Returns (score, reward)."""
        ...

    async def check(self, reference: ScoringReference, timeout: float) -> None:
        """Raises what ``score`` would raise for this reference whatever the answer (asked before any call)."""
        ...
