"""Exploration at serving: with a small probability a request's first call goes to a pool model
drawn at random, so that models the policy would not pick yet (a new model, a source it never saw)
get tried and their verdicts reach the outcome memory. An explored call's answer is the one the
user gets (the call is ``final``, so it streams): a verdict judges the answer returned, so an
explored answer the policy then passed over for its own choice taught nothing about the explored
model. Measured in ``xrouter learn-sim`` on LLMRouter (500 requests, seed 0, ε 0.1): the policy
followed up 47 of 55 explored calls with a call of its own and returned that, so the seven models
it did not already favour got 0-2 verdicts each. The draw favours the models the policy's
outcome memory knows least (weight 1 / (1 + rows recorded on the model)): uniform draws spent most
of a small budget on models already well known, and a new model whose description undersold it
was almost never tried (measured in ``xrouter learn-sim``). Off by default; each decision records the
probability the behaviour policy gave the action it took, for off-policy use of the logs.

Serving turns it on per tenant (``XROUTER_ROUTER_EXPLORATION_EPSILON`` for every tenant,
``XROUTER_ROUTER_EXPLORATION_TENANTS`` to override it for some): exploring spends a tenant's
requests on answers the policy thinks worse, so it is that tenant's choice, not a global one."""

from __future__ import annotations

import dataclasses
import math
import random
import weakref

from xrouter.common.bounds import check_identifier
from xrouter.common.errors import InvalidArgument
from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.policy import Action, CallModels, EpisodeState, Policy, SelectResponse, ToolCall


@dataclasses.dataclass(frozen=True)
class Explored:
    """One first decision: the model called first, whether it was drawn at random, and the
    probability of that first call under the behaviour policy: ε·q(model) + (1 − ε)·[the policy's
    own first call is that model], q being the exploration draw's weights."""

    model: str
    explored: bool
    probability: float


class ExploringPolicy:
    """``policy`` with ε-exploration of the first call (later turns are the policy's own).
    ``rng``: shared by the per-request wrappers of a serving router; else seeded from ``seed``."""

    def __init__(self, policy: Policy, epsilon: float, seed: int | None = None,
                 rng: random.Random | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"exploration epsilon must be within [0, 1], got {epsilon}")
        self.policy, self.epsilon = policy, epsilon
        self.kind, self.version, self.min_turns = policy.kind, policy.version, policy.min_turns
        self.one_answer = getattr(policy, "one_answer", False)  # an explored call is still one answer
        self._rng = rng or random.Random(seed)
        self.log: list[Explored] = []
        # The episodes (by id, checked by a weak reference) whose first call this wrapper explored.
        self._explored: dict[int, weakref.ref[EpisodeState]] = {}

    async def decide(self, state: EpisodeState) -> Action:
        # An explored answer is the one returned; after an explored call that failed, the policy decides.
        if self._was_explored(state) and len(state.calls) == 1 and state.calls[0].ok:
            return SelectResponse(state.calls[0].index)
        if state.calls or not state.pool:
            return await self.policy.decide(state)
        action = await self.policy.decide(state)
        greedy = action.calls[0].model if isinstance(action, CallModels) and action.calls else None
        weights = self.weights(state)
        if self._rng.random() < self.epsilon:
            model = self._rng.choices([o.id for o in state.pool], weights)[0]
            action = CallModels((ToolCall(model, SYSTEM_PROMPT),), final=True)
            key = id(state)
            self._explored[key] = weakref.ref(state, lambda _: self._explored.pop(key, None))
            explored = True
        elif greedy is None:
            return action  # the policy answers or stops without a call: nothing to log
        else:
            model, explored = greedy, False
        share = self.epsilon * weights[[o.id for o in state.pool].index(model)]
        self.log.append(Explored(model, explored, share + (1.0 - self.epsilon) * (model == greedy)))
        return action

    def _was_explored(self, state: EpisodeState) -> bool:
        ref = self._explored.pop(id(state), None)
        return ref is not None and ref() is state

    def weights(self, state: EpisodeState) -> list[float]:
        """The exploration draw over ``state.pool``: 1 / (1 + rows the memory holds on the model),
        normalised (uniform without a memory)."""
        memory = getattr(self.policy, "memory", None)
        raw = [1.0 / (1.0 + (memory.rows_of(o.id) if memory is not None else 0)) for o in state.pool]
        total = sum(raw)
        return [w / total for w in raw]


@dataclasses.dataclass(frozen=True)
class ExplorationRates:
    """ε per tenant: ``tenants`` overrides ``default`` (0: no exploration) for the tenants it names."""

    default: float = 0.0
    tenants: tuple[tuple[str, float], ...] = ()

    def rate(self, tenant: str) -> float:
        return dict(self.tenants).get(tenant, self.default)


def check_epsilon(value: float, setting: str) -> float:
    """An exploration rate within [0, 1]; ValueError naming ``setting`` otherwise (NaN included)."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{setting} must be an exploration rate within [0, 1], got {value}")
    return value


def parse_tenants(raw: str, setting: str) -> tuple[tuple[str, float], ...]:
    """``"tenantA=0.05,tenantB=0.1"`` → ((tenant, ε), …); ValueError naming ``setting`` and the bad
    entry (a tenant named twice, a missing ``=``, a rate outside [0, 1], a malformed tenant)."""
    parsed: dict[str, float] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        tenant, sep, value = (side.strip() for side in entry.partition("="))
        if not sep:
            raise ValueError(f"{setting}: {entry!r} is not tenant=rate (e.g. \"acme=0.05,globex=0.1\")")
        try:
            check_identifier(tenant, "tenant")
        except InvalidArgument as error:
            raise ValueError(f"{setting}: {entry!r}: {error.message}") from None
        if tenant in parsed:
            raise ValueError(f"{setting}: tenant {tenant!r} is named twice")
        try:
            rate = float(value)
        except ValueError:
            raise ValueError(f"{setting}: {entry!r}: the rate must be a number within [0, 1]") from None
        parsed[tenant] = check_epsilon(rate, f"{setting} ({tenant})")
    return tuple(parsed.items())
