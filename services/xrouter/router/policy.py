"""What a routing policy sees and what it may do (the xRouter action space), shared by every
policy — baselines, the compact learned policy and the LM policy — and by serving and training."""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Protocol

from xrouter.adapters.token_count import estimate_tokens

# Tokens a call is assumed to generate when neither the request nor the model says less; used
# only for estimates (cost caps, reservations), never for billing.
TYPICAL_OUTPUT_TOKENS = 256


@dataclasses.dataclass(frozen=True)
class ModelOption:
    """One model the policy may call (a ``call_<model>`` tool), as the catalog describes it."""

    id: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    description: str = ""
    tags: tuple[str, ...] = ()
    context_tokens: int = 0  # 0: not stated
    max_output_tokens: int = 0  # 0: not stated (no limit checked)
    options: frozenset[str] = frozenset()  # generation options its backend honours (common/call_options.py)

    def estimate_cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6


class CallStatus(enum.Enum):
    PENDING = "CALL_STATUS_UNSPECIFIED"  # started, not finished
    OK = "CALL_STATUS_OK"
    ERROR = "CALL_STATUS_ERROR"
    TIMEOUT = "CALL_STATUS_TIMEOUT"
    SKIPPED_BUDGET = "CALL_STATUS_SKIPPED_BUDGET"


class Strategy(enum.Enum):
    DIRECT = "STRATEGY_DIRECT"
    SELECT = "STRATEGY_SELECT"
    SYNTHESIZE = "STRATEGY_SYNTHESIZE"
    FALLBACK = "STRATEGY_FALLBACK"


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """``call_<model>``: the system prompt the router writes for the model, and a temperature."""

    model: str
    system_prompt: str
    temperature: float = 0.0


@dataclasses.dataclass(frozen=True)
class CallModels:
    """Call one or more models; the calls of one turn run in parallel.

    ``final``: the policy promises to return this (single) call's answer unchanged if it succeeds, so
    the answer may stream from the backend to the user while it is generated."""

    calls: tuple[ToolCall, ...]
    final: bool = False


@dataclasses.dataclass(frozen=True)
class SelectResponse:
    """``select_response``: return an earlier call's answer verbatim."""

    call_index: int


@dataclasses.dataclass(frozen=True)
class Answer:
    """Plain text: a direct answer, or a synthesis when earlier calls exist."""

    text: str


Action = CallModels | SelectResponse | Answer


@dataclasses.dataclass
class CallOutcome:
    """One model call as the episode saw it (also what is billed and reported)."""

    index: int
    turn: int
    model: str
    system_prompt: str
    temperature: float
    status: CallStatus
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    cost_micro_usd: int = 0
    latency_ms: float = 0.0
    finish_reason: str = ""
    error: str = ""
    tool_calls: str = ""  # JSON array of the model's tool calls; "" when none
    attempted: bool = False  # reached the adapters (so it is recorded, and may be billed)
    role: str = "tool"  # "router": the LM policy's own tokens for one decision turn (router/lm/charge.py)

    @property
    def ok(self) -> bool:
        return self.status is CallStatus.OK


@dataclasses.dataclass
class EpisodeState:
    """Everything a policy may look at when it decides a turn."""

    messages: list[tuple[str, str]]
    pool: list[ModelOption]
    cost_lambda: float
    max_cost_usd: float | None
    max_turns: int
    max_tokens: int
    turn: int = 1
    calls: list[CallOutcome] = dataclasses.field(default_factory=list)

    @property
    def prompt(self) -> str:
        """The last user message: the query being routed."""
        return next((content for role, content in reversed(self.messages) if role == "user"), "")

    @property
    def final_turn(self) -> bool:
        """On the last turn no model may be called: the policy must select or answer."""
        return self.turn >= self.max_turns

    def spent_usd(self) -> float:
        return sum(c.cost_micro_usd for c in self.calls) / 1e6

    @functools.cached_property
    def prompt_tokens(self) -> int:
        """Estimated tokens of the request's messages (fixed for the episode: counted once, not per
        model per decision)."""
        return sum(estimate_tokens(content) for _, content in self.messages)

    def estimate_call_usd(self, option: ModelOption) -> float:
        """Pre-call cost estimate (prompt tokens counted, output assumed typical or capped)."""
        output = min(self.max_tokens or TYPICAL_OUTPUT_TOKENS, TYPICAL_OUTPUT_TOKENS)
        return option.estimate_cost_usd(self.prompt_tokens, output)

    def option(self, model: str) -> ModelOption | None:
        return next((o for o in self.pool if o.id == model), None)


class Policy(Protocol):
    """Decides one turn at a time. ``kind`` and ``version`` are reported with every response;
    ``min_turns`` is the fewest turns the policy can finish in (requests with fewer are refused).
    A policy whose answer is always one call's answer unchanged (it never compares, selects among
    or rewrites answers) says so with ``one_answer = True``: only such a policy can hand back a
    model's tool calls or schema-shaped answer (tools, response_format); absent means False.
    A policy may also define ``async prepare(state)``: work on the request that the router runs
    while metering admits it (the compact policy encodes the query); it must spend nothing."""

    kind: str
    version: str
    min_turns: int

    async def decide(self, state: EpisodeState) -> Action: ...
