"""The exploring wrapper (router/exploration.py) alone: its draw favours the models the outcome
memory knows least, and each first call's logged probability is what the behaviour policy gave it."""

from __future__ import annotations

import asyncio
import collections

import numpy as np
import pytest

from xrouter.router.compact.memory import OutcomeMemory
from xrouter.router.exploration import ExploringPolicy
from xrouter.router.policy import CallModels, EpisodeState, ModelOption, ToolCall

POOL = [ModelOption(id=m, input_usd_per_mtok=1.0, output_usd_per_mtok=1.0) for m in ("known", "new", "half")]


class Fixed:
    """Always calls ``known`` first; carries an outcome memory as the compact policy does."""

    kind, version, min_turns = "fixed", "1", 1

    def __init__(self) -> None:
        vectors = np.eye(4, dtype=np.float32)
        scores = np.array([[1, np.nan], [1, np.nan], [1, 0], [0, np.nan]], dtype=np.float32)
        self.memory = OutcomeMemory(vectors, [bytes([i]) * 8 for i in range(4)], ["known", "half"], scores)

    async def decide(self, state: EpisodeState) -> CallModels:
        return CallModels((ToolCall("known", ""),))


def _state() -> EpisodeState:
    return EpisodeState([("user", "q")], POOL, 0.0, None, 2, 0)


def test_the_draw_weighs_each_model_by_how_little_the_memory_holds_on_it() -> None:
    weights = ExploringPolicy(Fixed(), 0.5).weights(_state())
    raw = np.array([1 / (1 + 4), 1 / (1 + 0), 1 / (1 + 1)])  # rows on known, new, half
    assert weights == pytest.approx((raw / raw.sum()).tolist())


def test_each_first_call_logs_the_behaviour_probability_of_that_call() -> None:
    epsilon = 0.3
    wrapped = ExploringPolicy(Fixed(), epsilon, seed=7)
    weights = dict(zip((o.id for o in POOL), wrapped.weights(_state())))
    calls = collections.Counter()
    for _ in range(3000):
        action = asyncio.run(wrapped.decide(_state()))
        calls[action.calls[0].model] += 1
    for entry in wrapped.log:
        greedy = entry.model == "known"
        assert entry.probability == pytest.approx(epsilon * weights[entry.model] + (1 - epsilon) * greedy)
    # The logged probabilities are the frequencies the calls were made with.
    for model, share in calls.items():
        expected = epsilon * weights[model] + (1 - epsilon) * (model == "known")
        assert share / 3000 == pytest.approx(expected, abs=0.03)


def test_an_explored_answer_is_the_one_returned_so_its_verdict_judges_the_explored_model() -> None:
    """The user's verdict is on the answer returned: an explored call the policy then passed over
    for its own choice would teach nothing about the explored model."""
    from xrouter.router.policy import CallOutcome, CallStatus, SelectResponse

    wrapped = ExploringPolicy(Fixed(), 1.0, seed=1)
    state = _state()
    first = asyncio.run(wrapped.decide(state))
    assert first.final and wrapped.log[-1].explored
    state.calls.append(CallOutcome(0, 0, first.calls[0].model, "", None, CallStatus.OK, text="an answer"))
    assert asyncio.run(wrapped.decide(state)) == SelectResponse(0)
    # An explored call that failed leaves the next turn to the policy.
    failed = _state()
    asyncio.run(wrapped.decide(failed))
    failed.calls.append(CallOutcome(0, 0, wrapped.log[-1].model, "", None, CallStatus.ERROR))
    assert asyncio.run(wrapped.decide(failed)) == CallModels((ToolCall("known", ""),))
    # A greedy first call leaves the follow-up to the policy as before.
    greedy = ExploringPolicy(Fixed(), 0.0, seed=1)
    plain = _state()
    asyncio.run(greedy.decide(plain))
    plain.calls.append(CallOutcome(0, 0, "known", "", None, CallStatus.OK, text="an answer"))
    assert asyncio.run(greedy.decide(plain)) == CallModels((ToolCall("known", ""),))
