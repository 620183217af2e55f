"""The episode loop: one routed request, turn by turn. The same loop serves requests and runs
training rollouts, so what the policy learns is what it does in production.

Turn semantics: each policy decision is a turn; the calls of one turn run in parallel; on the last
turn (``max_turns``) no model may be called. A policy that still calls then, or selects a call that
does not exist or failed, gets the defined fallback: the last successful answer is returned with
strategy FALLBACK and ``turn_limit_reached`` set when the limit caused it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from xrouter.common.errors import ResourceExhausted, Unavailable
from xrouter.router.policy import (
    Answer, CallModels, CallOutcome, CallStatus, EpisodeState, Policy, SelectResponse, Strategy, ToolCall)

# Runs one model call: (tool call, the messages the model receives, call index, turn) → outcome.
Invoke = Callable[[ToolCall, list[tuple[str, str]], int, int], Awaitable[CallOutcome]]


@dataclasses.dataclass(frozen=True)
class Decision:
    turn: int
    action: str  # "call", "select" or "answer"
    models: tuple[str, ...] = ()
    selected_call: int = -1


@dataclasses.dataclass(frozen=True)
class CallEvent:
    started: bool  # False: finished
    call: CallOutcome


Event = Decision | CallEvent
OnEvent = Callable[[Event], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    answer: str
    strategy: Strategy
    turns_used: int
    turn_limit_reached: bool
    selected_call: int
    calls: list[CallOutcome]


def messages_for_call(conversation: list[tuple[str, str]], router_prompt: str) -> list[tuple[str, str]]:
    """The user's own system prompt comes first and is kept; the router's instructions follow it."""
    user_system = "\n\n".join(content for role, content in conversation if role == "system")
    system = f"{user_system}\n\n{router_prompt}" if user_system and router_prompt else user_system or router_prompt
    rest = [(role, content) for role, content in conversation if role != "system"]
    return ([("system", system)] if system else []) + rest


async def _no_event(event: Event) -> None:
    return None


async def run_episode(policy: Policy, state: EpisodeState, invoke: Invoke,
                      on_event: OnEvent = _no_event) -> EpisodeResult:
    """Run decisions until the policy selects or answers, or the turn limit forces an end."""
    while True:
        action = await policy.decide(state)
        if isinstance(action, Answer):
            await on_event(Decision(state.turn, "answer"))
            strategy = Strategy.SYNTHESIZE if any(c.ok for c in state.calls) else Strategy.DIRECT
            return EpisodeResult(action.text, strategy, state.turn, False, -1, state.calls)
        if isinstance(action, SelectResponse):
            await on_event(Decision(state.turn, "select", selected_call=action.call_index))
            chosen = next((c for c in state.calls if c.index == action.call_index and c.ok), None)
            if chosen is None:
                return _fallback(state, limit=False)
            return EpisodeResult(chosen.text, Strategy.SELECT, state.turn, False, chosen.index, state.calls)
        assert isinstance(action, CallModels)
        await on_event(Decision(state.turn, "call", tuple(c.model for c in action.calls)))
        if state.final_turn or not action.calls:
            return _fallback(state, limit=state.final_turn)
        state.calls.extend(await _run_turn(state, action, invoke, on_event))
        state.turn += 1


async def _run_turn(state: EpisodeState, action: CallModels, invoke: Invoke,
                    on_event: OnEvent) -> list[CallOutcome]:
    planned_usd = state.spent_usd()
    jobs = []
    for offset, tool_call in enumerate(action.calls):
        index = len(state.calls) + offset
        option = state.option(tool_call.model)
        outcome = CallOutcome(index, state.turn, tool_call.model, tool_call.system_prompt,
                              tool_call.temperature, CallStatus.ERROR)
        if option is None:
            outcome.error = f"unknown tool call_{tool_call.model}: not in the allowed pool"
        elif state.max_cost_usd is not None and planned_usd + state.estimate_call_usd(option) > state.max_cost_usd:
            outcome.status = CallStatus.SKIPPED_BUDGET
            outcome.error = (f"estimated ${state.estimate_call_usd(option):.6f} would pass max_cost_usd "
                             f"{state.max_cost_usd} (already planned ${planned_usd:.6f})")
        else:
            planned_usd += state.estimate_call_usd(option)
            jobs.append(_call(tool_call, index, state, invoke, on_event))
            continue
        await on_event(CallEvent(False, outcome))
        jobs.append(_done(outcome))
    outcomes = await asyncio.gather(*jobs)
    return sorted(outcomes, key=lambda c: c.index)


async def _done(outcome: CallOutcome) -> CallOutcome:
    return outcome


async def _call(tool_call: ToolCall, index: int, state: EpisodeState, invoke: Invoke,
                on_event: OnEvent) -> CallOutcome:
    await on_event(CallEvent(True, CallOutcome(index, state.turn, tool_call.model, tool_call.system_prompt,
                                               tool_call.temperature, CallStatus.PENDING)))
    outcome = await invoke(tool_call, messages_for_call(state.messages, tool_call.system_prompt),
                           index, state.turn)
    await on_event(CallEvent(False, outcome))
    return outcome


def _fallback(state: EpisodeState, limit: bool) -> EpisodeResult:
    ok = [c for c in state.calls if c.ok]
    if state.calls and all(c.status is CallStatus.SKIPPED_BUDGET for c in state.calls):
        raise ResourceExhausted(
            f"max_cost_usd: {state.max_cost_usd} is below the estimated cost of every call the policy "
            f"chose ({state.calls[0].error})", subject="request:max_cost_usd")
    if not ok:
        failures = "; ".join(f"{c.model}: {c.error or c.status.name}" for c in state.calls) or "no model was called"
        raise Unavailable(f"no model call succeeded within {state.turn} turns ({failures})")
    last = ok[-1]
    return EpisodeResult(last.text, Strategy.FALLBACK, state.turn, limit, last.index, state.calls)
