"""Exploration at serving: with a small probability a request's first call goes to a pool model
drawn uniformly, so that models the policy would not pick yet (a new model, a source it never saw)
get tried and their verdicts reach the outcome memory. Off by default; each decision records the
probability the behaviour policy gave the action it took, for off-policy use of the logs."""

from __future__ import annotations

import dataclasses
import random

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.policy import Action, CallModels, EpisodeState, Policy, ToolCall


@dataclasses.dataclass(frozen=True)
class Explored:
    """One first decision: the model called first, whether it was drawn at random, and the
    probability of that first call under the behaviour policy (ε/M for a drawn one; for the greedy
    one 1 − ε + ε/M)."""

    model: str
    explored: bool
    probability: float


class ExploringPolicy:
    """``policy`` with ε-uniform exploration of the first call (later turns are the policy's own)."""

    def __init__(self, policy: Policy, epsilon: float, seed: int | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"exploration epsilon must be within [0, 1], got {epsilon}")
        self.policy, self.epsilon = policy, epsilon
        self.kind, self.version, self.min_turns = policy.kind, policy.version, policy.min_turns
        self.one_answer = getattr(policy, "one_answer", False)  # an explored call is still one answer
        self._rng = random.Random(seed)
        self.log: list[Explored] = []

    async def decide(self, state: EpisodeState) -> Action:
        if state.calls or not state.pool:
            return await self.policy.decide(state)
        share = self.epsilon / len(state.pool)
        if self._rng.random() < self.epsilon:
            model = self._rng.choice(state.pool).id
            self.log.append(Explored(model, True, share))
            return CallModels((ToolCall(model, SYSTEM_PROMPT),))
        action = await self.policy.decide(state)
        if isinstance(action, CallModels) and action.calls:
            self.log.append(Explored(action.calls[0].model, False, 1.0 - self.epsilon + share))
        return action
