"""The episode loop and the baseline policies, in plain Python (no gRPC)."""

from __future__ import annotations

import asyncio

import pytest

from xrouter.common.errors import InvalidArgument, Unavailable
from xrouter.router.baselines import CascadePolicy, SingleModelPolicy, make_baseline
from xrouter.router.episode import CallEvent, Decision, messages_for_call, run_episode
from xrouter.router.policy import (
    Answer, CallModels, CallOutcome, CallStatus, EpisodeState, ModelOption, SelectResponse, Strategy, ToolCall)

POOL = [ModelOption("small", 0.2, 0.2), ModelOption("medium", 1.0, 2.0), ModelOption("large", 10.0, 30.0)]


def state(max_turns: int = 3, max_cost_usd: float | None = None, pool=POOL) -> EpisodeState:  # type: ignore[no-untyped-def]
    return EpisodeState([("user", "Which is heavier? A) feather B) brick")], list(pool), 1.0,
                        max_cost_usd, max_turns, 0)


def replies(answers: dict[str, str], failing: frozenset[str] = frozenset()):  # type: ignore[no-untyped-def]
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    async def invoke(call: ToolCall, messages, index: int, turn: int) -> CallOutcome:  # type: ignore[no-untyped-def]
        seen.append((call.model, messages))
        outcome = CallOutcome(index, turn, call.model, call.system_prompt, call.temperature, CallStatus.OK,
                              attempted=True, cost_micro_usd=100)
        if call.model in failing:
            outcome.status, outcome.error = CallStatus.ERROR, "backend down"
        else:
            outcome.text = answers[call.model]
        return outcome
    return invoke, seen


class Scripted:
    """A policy that plays back a fixed list of actions."""

    kind, version, min_turns = "scripted", "1", 1

    def __init__(self, *actions) -> None:  # type: ignore[no-untyped-def]
        self._actions = list(actions)

    async def decide(self, state: EpisodeState):  # type: ignore[no-untyped-def]
        return self._actions.pop(0)


async def test_fixed_model_calls_once_then_selects() -> None:
    invoke, seen = replies({"medium": "B"})
    result = await run_episode(make_baseline("fixed:medium", {"small", "medium", "large"}), state(), invoke)
    assert (result.answer, result.strategy, result.turns_used, result.selected_call) == ("B", Strategy.SELECT, 2, 0)
    assert [model for model, _ in seen] == ["medium"]


async def test_cheapest_picks_the_lowest_estimated_cost() -> None:
    invoke, seen = replies({"small": "A"})
    result = await run_episode(make_baseline("cheapest", set()), state(), invoke)
    assert [model for model, _ in seen] == ["small"] and result.answer == "A"


async def test_calls_of_one_turn_run_in_parallel() -> None:
    both_started = asyncio.Barrier(2)

    async def invoke(call, messages, index, turn):  # type: ignore[no-untyped-def]
        await both_started.wait()  # deadlocks (and times out) if the calls ran one after the other
        return CallOutcome(index, turn, call.model, "", 0.0, CallStatus.OK, text=call.model, attempted=True)

    policy = Scripted(CallModels((ToolCall("small", ""), ToolCall("medium", ""))), SelectResponse(1))
    result = await asyncio.wait_for(run_episode(policy, state(), invoke), timeout=5)
    assert result.answer == "medium" and [c.turn for c in result.calls] == [1, 1]


async def test_turn_limit_falls_back_to_the_last_good_answer() -> None:
    invoke, seen = replies({"small": "A", "medium": "B", "large": "C"})
    always_call = Scripted(*(CallModels((ToolCall(m, ""),)) for m in ("small", "medium", "large")))
    result = await run_episode(always_call, state(max_turns=3), invoke)
    # Turn 3 is the last: its call is not made, the answer of turn 2 is returned.
    assert [model for model, _ in seen] == ["small", "medium"]
    assert (result.answer, result.strategy, result.turn_limit_reached, result.turns_used) == (
        "B", Strategy.FALLBACK, True, 3)


async def test_no_successful_call_is_unavailable_with_the_reasons() -> None:
    invoke, _ = replies({}, failing=frozenset({"small", "medium", "large"}))
    with pytest.raises(Unavailable, match="small: backend down"):
        await run_episode(make_baseline("cheapest", set()), state(), invoke)


async def test_cost_cap_skips_calls_that_would_pass_it() -> None:
    invoke, seen = replies({"small": "A", "large": "C"})
    policy = Scripted(CallModels((ToolCall("small", ""), ToolCall("large", ""))), SelectResponse(0))
    result = await run_episode(policy, state(max_cost_usd=0.0005), invoke)
    assert [model for model, _ in seen] == ["small"]
    skipped = result.calls[1]
    assert skipped.status is CallStatus.SKIPPED_BUDGET and not skipped.attempted and "max_cost_usd" in skipped.error


async def test_unknown_tool_is_an_error_outcome_not_a_call() -> None:
    invoke, seen = replies({"small": "A"})
    policy = Scripted(CallModels((ToolCall("gpt-9", ""), ToolCall("small", ""))), SelectResponse(1))
    result = await run_episode(policy, state(), invoke)
    assert [model for model, _ in seen] == ["small"]
    assert result.calls[0].status is CallStatus.ERROR and "call_gpt-9" in result.calls[0].error


async def test_direct_answer_and_synthesis() -> None:
    invoke, _ = replies({"small": "A"})
    direct = await run_episode(Scripted(Answer("hello")), state(), invoke)
    assert (direct.answer, direct.strategy, direct.calls) == ("hello", Strategy.DIRECT, [])
    synth = await run_episode(Scripted(CallModels((ToolCall("small", ""),)), Answer("A, surely")), state(), invoke)
    assert synth.strategy is Strategy.SYNTHESIZE


async def test_selecting_a_failed_call_falls_back_without_the_limit_flag() -> None:
    invoke, _ = replies({"small": "A"}, failing=frozenset({"medium"}))
    policy = Scripted(CallModels((ToolCall("small", ""), ToolCall("medium", ""))), SelectResponse(1))
    result = await run_episode(policy, state(), invoke)
    assert (result.answer, result.strategy, result.turn_limit_reached) == ("A", Strategy.FALLBACK, False)


async def test_events_follow_the_episode() -> None:
    invoke, _ = replies({"medium": "B"})
    events = []

    async def record(event):  # type: ignore[no-untyped-def]
        events.append(event)

    await run_episode(SingleModelPolicy("fixed:medium", "medium"), state(), invoke, record)
    kinds = [type(e).__name__ + (("+" if e.started else "-") if isinstance(e, CallEvent) else "") for e in events]
    # Not streaming: the answer goes out whole once the policy has selected it.
    assert kinds == ["Decision", "CallEvent+", "CallEvent-", "Decision", "AnswerDelta"]
    assert isinstance(events[-2], Decision) and events[-2].action == "select"
    assert (events[-1].text, events[-1].call_index) == ("B", 0)


async def test_cascade_keeps_the_cheap_answer_when_two_cheap_models_agree() -> None:
    invoke, seen = replies({"small": "B", "medium": "(B) brick", "large": "B"})
    result = await run_episode(CascadePolicy(), state(), invoke)
    assert [m for m, _ in seen] == ["small", "medium"] and result.selected_call == 0


async def test_cascade_escalates_on_disagreement() -> None:
    invoke, seen = replies({"small": "A", "medium": "B", "large": "B) brick"})
    result = await run_episode(CascadePolicy(), state(), invoke)
    assert [m for m, _ in seen] == ["small", "medium", "large"]
    assert (result.answer, result.strategy, result.turn_limit_reached) == ("B) brick", Strategy.SELECT, False)


async def test_cascade_with_two_turns_cannot_escalate_and_says_so_by_selecting() -> None:
    invoke, seen = replies({"small": "A", "medium": "B", "large": "B"})
    result = await run_episode(CascadePolicy(), state(max_turns=2), invoke)
    assert [m for m, _ in seen] == ["small", "medium"] and result.answer == "A"


async def test_a_named_cascade_calls_its_pair_and_escalates_to_its_target() -> None:
    pool = [*POOL, ModelOption("huge", 20.0, 60.0)]
    policy = make_baseline("cascade:medium,small,large", {o.id for o in pool})
    invoke, seen = replies({"small": "A", "medium": "B", "large": "B) brick", "huge": "A"})
    result = await run_episode(policy, state(pool=pool), invoke)
    assert [m for m, _ in seen] == ["medium", "small", "large"] and result.answer == "B) brick"
    invoke, seen = replies({"small": "B", "medium": "B", "large": "A", "huge": "A"})
    result = await run_episode(policy, state(pool=pool), invoke)
    assert [m for m, _ in seen] == ["medium", "small"] and result.selected_call == 0  # agreed: the first's answer
    with pytest.raises(InvalidArgument, match="not in the catalog: \\['gpt-9'\\]"):
        make_baseline("cascade:small,gpt-9", {"small"})
    with pytest.raises(InvalidArgument, match="cascade:A,B"):
        make_baseline("cascade:small", {"small"})


def test_users_system_prompt_comes_first_and_is_kept() -> None:
    conversation = [("system", "Answer in French."), ("user", "Hi")]
    assert messages_for_call(conversation, "Be brief.") == [("system", "Answer in French.\n\nBe brief."), ("user", "Hi")]
    assert messages_for_call([("user", "Hi")], "Be brief.") == [("system", "Be brief."), ("user", "Hi")]
    assert messages_for_call([("user", "Hi")], "") == [("user", "Hi")]


def test_baseline_specs_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="^policy: unknown policy 'smartest'"):
        make_baseline("smartest", set())
    with pytest.raises(InvalidArgument, match="^policy: fixed model 'gpt-9' is not in the catalog"):
        make_baseline("fixed:gpt-9", {"small"})
