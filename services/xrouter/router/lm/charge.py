"""The router LM's own tokens, charged: each decision turn of the LM policy (the context it read and
the reply it generated, as its generation backend counted them) becomes one priced call with role
"router" — recorded in the ledger and counted against budgets like any call, reported in the
response's ``usage`` and call list, and added to the episode cost the trainer's reward sees. The
paper leaves these tokens unpriced; a router that is not free to run must not look free."""

from __future__ import annotations

import dataclasses
import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from xrouter.router.policy import CallOutcome, CallStatus, EpisodeState

ROUTER_ROLE = "router"
DEFAULT_MODEL_ID = "xrouter-router-lm"
# Self-hosted defaults, USD per million tokens: an assumption, not a measurement — a 7B router on a
# rented GPU (about $2-3 an hour) batched by vLLM lands near what hosted 7B models are sold for
# (input a fraction of output: prefill is much cheaper per token than decoding). Set the real
# figure for your hardware with XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK / _OUTPUT_USD_PER_MTOK.
DEFAULT_INPUT_USD_PER_MTOK = 0.05
DEFAULT_OUTPUT_USD_PER_MTOK = 0.20
MAX_USD_PER_MTOK = 10_000.0  # far above any model's price: a larger figure is a typo


@dataclasses.dataclass(frozen=True)
class RouterLMPrice:
    """The id the router model is billed under and its price per million prompt / completion tokens."""

    model_id: str = DEFAULT_MODEL_ID
    input_usd_per_mtok: float = DEFAULT_INPUT_USD_PER_MTOK
    output_usd_per_mtok: float = DEFAULT_OUTPUT_USD_PER_MTOK

    def problem(self) -> tuple[str, str] | None:
        """(which field, what is wrong) for a price that cannot be billed; None when it can."""
        if not self.model_id or self.model_id != self.model_id.strip() or len(self.model_id) > 128:
            return "model_id", f"must be a model id of 1 to 128 characters without surrounding spaces, got {self.model_id!r}"
        for field in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= MAX_USD_PER_MTOK):
                return field, f"must be a finite number of USD within [0, {MAX_USD_PER_MTOK:g}], got {value}"
        return None

    def cost_micro_usd(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Exact: tokens × USD per million tokens is micro-USD (rounded half-even, as the adapters do)."""
        exact = (prompt_tokens * Decimal(str(self.input_usd_per_mtok))
                 + completion_tokens * Decimal(str(self.output_usd_per_mtok)))
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def turn_calls(transcript: Any, price: RouterLMPrice, temperature: float, first_index: int) -> list[CallOutcome]:
    """One router call per generated reply of ``transcript``, indexed from ``first_index``."""
    calls = []
    for number, reply in enumerate(transcript.replies):
        calls.append(CallOutcome(
            first_index + number, reply.turn, price.model_id, "", temperature, CallStatus.OK,
            input_tokens=reply.prompt_tokens, output_tokens=reply.completion_tokens,
            cost_micro_usd=price.cost_micro_usd(reply.prompt_tokens, reply.completion_tokens),
            latency_ms=reply.latency_ms, finish_reason=reply.finish_reason, attempted=True, role=ROUTER_ROLE))
    return calls


def transcript_cost_usd(transcript: Any, price: RouterLMPrice) -> float:
    """What the router LM's turns of one episode cost (the trainer adds it to the episode's cost)."""
    return sum(c.cost_micro_usd for c in turn_calls(transcript, price, 0.0, 0)) / 1e6


def charge_router(policy: Any, state: EpisodeState) -> None:
    """Append the router's own calls to ``state.calls`` once the episode is over (their indices follow
    every model call's, so ``select_response`` indices never shift). Once per episode: a second call
    does nothing; a policy without its own tokens (baselines, the compact policy) adds none."""
    price = getattr(policy, "price", None)
    transcript_of = getattr(policy, "transcript_of", None)
    if not isinstance(price, RouterLMPrice) or transcript_of is None:
        return
    if any(c.role == ROUTER_ROLE for c in state.calls):
        return
    transcript = transcript_of(state)
    if transcript is None:  # no decision was generated (refused before, or the backend failed at once)
        return
    first = max((c.index for c in state.calls), default=-1) + 1
    state.calls.extend(turn_calls(transcript, price, float(getattr(policy, "temperature", 0.0)), first))
