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
import logging
from collections.abc import Awaitable, Callable

from xrouter.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from xrouter.router.policy import (
    Answer, CallModels, CallOutcome, CallStatus, EpisodeState, Policy, SelectResponse, Strategy, ToolCall)

log = logging.getLogger(__name__)

# Runs one model call: (tool call, the messages the model receives, call index, turn) → outcome.
# A streaming episode also passes ``on_delta=`` (an async callback per text delta) for a final call.
Invoke = Callable[..., Awaitable[CallOutcome]]
OnDelta = Callable[[str], Awaitable[None]]


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


@dataclasses.dataclass(frozen=True)
class AnswerDelta:
    """A piece of the answer the user gets: a final call's text as the backend streams it, or the
    whole answer at the moment the policy decides it (when it had to see answers first)."""

    text: str
    call_index: int = -1


Event = Decision | CallEvent | AnswerDelta
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
                      on_event: OnEvent = _no_event, stream: bool = False) -> EpisodeResult:
    """Run decisions until the policy selects or answers, or the turn limit forces an end.

    ``stream``: a single call the policy marks ``final`` streams its text to ``on_event`` as
    :class:`AnswerDelta` while it is generated; any other answer goes out whole once decided."""
    streamed: CallOutcome | None = None  # the call whose answer the user already has
    while True:
        action = await policy.decide(state)
        if streamed is not None:
            if not (isinstance(action, SelectResponse) and action.call_index == streamed.index):
                # The answer is out already; the policy broke its ``final`` promise.
                log.warning("policy %s decided %r after streaming call %d; returning the streamed answer",
                            policy.kind, action, streamed.index)
            await on_event(Decision(state.turn, "select", selected_call=streamed.index))
            return EpisodeResult(streamed.text, Strategy.SELECT, state.turn, False, streamed.index, state.calls)
        if isinstance(action, Answer):
            await on_event(Decision(state.turn, "answer"))
            strategy = Strategy.SYNTHESIZE if any(c.ok for c in state.calls) else Strategy.DIRECT
            return await _deliver(EpisodeResult(action.text, strategy, state.turn, False, -1, state.calls), on_event)
        if isinstance(action, SelectResponse):
            await on_event(Decision(state.turn, "select", selected_call=action.call_index))
            chosen = next((c for c in state.calls if c.index == action.call_index and c.ok), None)
            if chosen is None:
                return await _deliver(_fallback(state, limit=False), on_event)
            return await _deliver(EpisodeResult(chosen.text, Strategy.SELECT, state.turn, False, chosen.index,
                                                state.calls), on_event)
        assert isinstance(action, CallModels)
        await on_event(Decision(state.turn, "call", tuple(c.model for c in action.calls)))
        if state.final_turn or not action.calls:
            return await _deliver(_fallback(state, limit=state.final_turn), on_event)
        sent = [0]  # characters of this turn's call already streamed to the user
        on_delta = _delta_sender(len(state.calls), on_event, sent) \
            if stream and action.final and len(action.calls) == 1 else None
        outcomes = await _run_turn(state, action, invoke, on_event, on_delta)
        state.calls.extend(outcomes)
        if on_delta is not None and sent[0]:
            streamed = _streamed_or_raise(outcomes[0])
        state.turn += 1


def _delta_sender(index: int, on_event: OnEvent, sent: list[int]) -> OnDelta:
    async def on_delta(text: str) -> None:
        sent[0] += len(text)
        await on_event(AnswerDelta(text, index))
    return on_delta


def _streamed_or_raise(call: CallOutcome) -> CallOutcome:
    """A streamed call that failed after its first delta cannot be retried or replaced: the user has
    part of it. The request ends with the call's error (its consumption is accounted all the same)."""
    if call.ok:
        return call
    why = f"the answer from {call.model} broke off mid-stream: {call.error or call.status.name}"
    if call.status is CallStatus.TIMEOUT:
        raise DeadlineExceeded(why)
    raise Unavailable(why)


async def _deliver(result: EpisodeResult, on_event: OnEvent) -> EpisodeResult:
    """The decided answer goes out whole, now, before the request is accounted."""
    if result.answer:
        await on_event(AnswerDelta(result.answer, result.selected_call))
    return result


async def _run_turn(state: EpisodeState, action: CallModels, invoke: Invoke,
                    on_event: OnEvent, on_delta: OnDelta | None = None) -> list[CallOutcome]:
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
            jobs.append(_call(tool_call, index, state, invoke, on_event, on_delta))
            continue
        await on_event(CallEvent(False, outcome))
        jobs.append(_done(outcome))
    outcomes = await asyncio.gather(*jobs)
    return sorted(outcomes, key=lambda c: c.index)


async def _done(outcome: CallOutcome) -> CallOutcome:
    return outcome


async def _call(tool_call: ToolCall, index: int, state: EpisodeState, invoke: Invoke,
                on_event: OnEvent, on_delta: OnDelta | None) -> CallOutcome:
    await on_event(CallEvent(True, CallOutcome(index, state.turn, tool_call.model, tool_call.system_prompt,
                                               tool_call.temperature, CallStatus.PENDING)))
    messages = messages_for_call(state.messages, tool_call.system_prompt)
    # Only a streaming episode passes on_delta: training's invokers need not know about it.
    outcome = await (invoke(tool_call, messages, index, state.turn) if on_delta is None
                     else invoke(tool_call, messages, index, state.turn, on_delta=on_delta))
    await on_event(CallEvent(False, outcome))
    return outcome


def _fallback(state: EpisodeState, limit: bool) -> EpisodeResult:
    ok = [c for c in state.calls if c.ok]
    if state.calls and all(c.status is CallStatus.SKIPPED_BUDGET for c in state.calls):
        # A 4xx a retry cannot change, not a quota (429, which OpenAI's clients retry on their own).
        raise InvalidArgument("max_cost_usd", f"{state.max_cost_usd} is below the estimated cost of every call "
                              f"the policy chose ({state.calls[0].error}); raise it or allow cheaper models")
    if not ok:
        failures = "; ".join(f"{c.model}: {c.error or c.status.name}" for c in state.calls) or "no model was called"
        raise Unavailable(f"no model call succeeded within {state.turn} turns ({failures})")
    last = ok[-1]
    return EpisodeResult(last.text, Strategy.FALLBACK, state.turn, limit, last.index, state.calls)
