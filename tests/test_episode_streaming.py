"""The episode loop's streaming (plain Python, no gRPC): which calls stream to the user, and what a
call that breaks off mid-stream does to the episode."""

from __future__ import annotations

import pytest

from xrouter.common.errors import DeadlineExceeded, Unavailable
from xrouter.router.baselines import CascadePolicy, SingleModelPolicy
from xrouter.router.episode import AnswerDelta, CallEvent, Decision, run_episode
from xrouter.router.policy import CallModels, CallOutcome, CallStatus, SelectResponse, Strategy, ToolCall
from test_episode import Scripted, state


def streaming(answers: dict[str, str], breaks: dict[str, list[CallStatus | None]] | None = None):  # type: ignore[no-untyped-def]
    """An invoker that streams each answer word by word when asked to; ``breaks[model]`` lists, per
    call, None (succeeds) or the status the call fails with after its first word."""
    seen: list[tuple[str, bool]] = []

    async def invoke(call: ToolCall, messages, index: int, turn: int, on_delta=None) -> CallOutcome:  # type: ignore[no-untyped-def]
        seen.append((call.model, on_delta is not None))
        outcome = CallOutcome(index, turn, call.model, call.system_prompt, call.temperature, CallStatus.OK,
                              attempted=True)
        words = answers[call.model].split(" ")
        failure = (breaks or {}).get(call.model, [None]).pop(0) if (breaks or {}).get(call.model) else None
        for number, word in enumerate(words):
            if failure is not None and number == 1:
                outcome.status, outcome.error = failure, "backend went quiet"
                return outcome
            if on_delta is not None:
                await on_delta(word if number == 0 else " " + word)
        outcome.text = answers[call.model]
        return outcome
    return invoke, seen


def recorder():  # type: ignore[no-untyped-def]
    events: list[object] = []

    async def record(event) -> None:  # type: ignore[no-untyped-def]
        events.append(event)
    return events, record


def kinds(events: list[object]) -> list[str]:
    return [type(e).__name__ + (("+" if e.started else "-") if isinstance(e, CallEvent) else "") for e in events]


async def test_a_fixed_policy_streams_its_call_while_it_runs_and_sends_the_answer_once() -> None:
    invoke, seen = streaming({"medium": "a brick is heavier"})
    events, record = recorder()
    result = await run_episode(SingleModelPolicy("fixed:medium", "medium"), state(), invoke, record, stream=True)
    assert seen == [("medium", True)]
    assert kinds(events) == ["Decision", "CallEvent+", "AnswerDelta", "AnswerDelta", "AnswerDelta", "AnswerDelta",
                             "CallEvent-", "Decision"]
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == result.answer == "a brick is heavier"
    assert (result.strategy, result.selected_call) == (Strategy.SELECT, 0)


async def test_without_stream_no_call_is_streamed() -> None:
    invoke, seen = streaming({"medium": "a brick"})
    await run_episode(SingleModelPolicy("fixed:medium", "medium"), state(), invoke)
    assert seen == [("medium", False)]


async def test_a_cascade_streams_only_its_escalation_and_sends_an_agreed_answer_whole() -> None:
    invoke, seen = streaming({"small": "A", "medium": "B", "large": "B it is"})
    events, record = recorder()
    result = await run_episode(CascadePolicy(), state(), invoke, record, stream=True)
    assert seen == [("small", False), ("medium", False), ("large", True)]  # the pair must be compared first
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["B", " it", " is"]
    assert result.answer == "B it is"

    invoke, seen = streaming({"small": "B", "medium": "B", "large": "C"})
    events, record = recorder()
    result = await run_episode(CascadePolicy(), state(), invoke, record, stream=True)
    assert seen == [("small", False), ("medium", False)]
    assert kinds(events)[-2:] == ["Decision", "AnswerDelta"] and events[-1].text == "B" == result.answer


async def test_a_call_that_fails_before_its_first_word_is_retried_and_streams_again() -> None:
    invoke, seen = streaming({"medium": "x"}, breaks={})

    async def fails_first(call, messages, index, turn, on_delta=None):  # type: ignore[no-untyped-def]
        if index == 0:  # nothing sent yet: the policy may still try again
            return CallOutcome(index, turn, call.model, "", 0.0, CallStatus.ERROR, error="down", attempted=True)
        return await invoke(call, messages, index, turn, on_delta)
    events, record = recorder()
    result = await run_episode(SingleModelPolicy("fixed:medium", "medium"), state(), fails_first, record, stream=True)
    assert (result.answer, result.selected_call) == ("x", 1)
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["x"]


@pytest.mark.parametrize(("status", "error"), [(CallStatus.ERROR, Unavailable), (CallStatus.TIMEOUT, DeadlineExceeded)])
async def test_a_call_that_breaks_off_mid_stream_ends_the_episode(status, error) -> None:  # type: ignore[no-untyped-def]
    invoke, seen = streaming({"medium": "a brick is heavier"}, breaks={"medium": [status]})
    events, record = recorder()
    st = state()
    with pytest.raises(error, match="broke off mid-stream: backend went quiet"):
        await run_episode(SingleModelPolicy("fixed:medium", "medium"), st, invoke, record, stream=True)
    assert seen == [("medium", True)], "the user has part of the answer: no second call"
    assert [c.status for c in st.calls] == [status]  # kept for accounting
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["a"]


async def test_a_policy_that_breaks_its_final_promise_still_returns_the_streamed_answer() -> None:
    invoke, _ = streaming({"medium": "streamed", "large": "other"})
    policy = Scripted(CallModels((ToolCall("medium", ""), ToolCall("large", "")), final=True),  # two: not streamed
                      CallModels((ToolCall("medium", ""),), final=True), SelectResponse(1))
    events, record = recorder()
    result = await run_episode(policy, state(max_turns=4), invoke, record, stream=True)
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["streamed"]
    assert (result.answer, result.selected_call, result.strategy) == ("streamed", 2, Strategy.SELECT)
    assert isinstance(events[-1], Decision) and events[-1].selected_call == 2
