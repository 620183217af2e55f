"""Hand-made policies that evaluation compares the learned router with (and that serve until one
is trained): a fixed model, the cheapest model, and an agreement cascade."""

from __future__ import annotations

import re

from xrouter.common.errors import InvalidArgument
from xrouter.router.policy import (
    Action, CallModels, EpisodeState, ModelOption, Policy, SelectResponse, ToolCall)

SYSTEM_PROMPT = "Follow the user's instructions exactly and answer as briefly as the task allows."
_CHOICE = re.compile(r"^\s*\(?([A-E])\b[).:]?")


def _by_price(state: EpisodeState) -> list[ModelOption]:
    return sorted(state.pool, key=lambda o: (state.estimate_call_usd(o), o.id))


def _last_ok(state: EpisodeState) -> int | None:
    return next((c.index for c in reversed(state.calls) if c.ok), None)


class SingleModelPolicy:
    """Call one model, then select its answer (a failed call is tried again while turns remain)."""

    version = "1"
    min_turns = 2

    def __init__(self, kind: str, model: str | None = None) -> None:
        self.kind = kind
        self._model = model

    def choose(self, state: EpisodeState) -> str:
        if self._model is None:
            return _by_price(state)[0].id
        if state.option(self._model) is None:
            raise InvalidArgument("allowed_models", f"policy {self.kind} needs {self._model!r} in the pool")
        return self._model

    async def decide(self, state: EpisodeState) -> Action:
        selected = _last_ok(state)
        if selected is not None or state.final_turn:
            return SelectResponse(-1 if selected is None else selected)
        return CallModels((ToolCall(self.choose(state), SYSTEM_PROMPT),))


def answer_key(text: str) -> str:
    """What two answers must share to 'agree': the option letter if one leads, else the text."""
    match = _CHOICE.match(text)
    return match.group(1) if match else " ".join(text.lower().split())


class CascadePolicy:
    """The two cheapest models first, in parallel; if they agree (same option letter or the same
    normalised text) return the cheaper one's answer, otherwise escalate to the most expensive model
    in the pool and return its answer. The rule: two cheap models disagreeing marks a hard query."""

    kind = "cascade"
    version = "1"
    min_turns = 2

    async def decide(self, state: EpisodeState) -> Action:
        ranked = _by_price(state)
        ok = [c for c in state.calls if c.ok]
        if not state.calls:
            return CallModels(tuple(ToolCall(o.id, SYSTEM_PROMPT) for o in ranked[:2]))
        escalated = [c for c in ok if c.model == ranked[-1].id and c.turn > 1]
        if escalated:
            return SelectResponse(escalated[-1].index)
        first_round = [c for c in ok if c.turn == 1]
        agree = len(first_round) == 2 and answer_key(first_round[0].text) == answer_key(first_round[1].text)
        if agree or len(ranked) <= 2 or state.final_turn:
            best = first_round[0].index if first_round else _last_ok(state)
            return SelectResponse(-1 if best is None else best)
        return CallModels((ToolCall(ranked[-1].id, SYSTEM_PROMPT),))


BASELINES = ("cheapest", "cascade", "fixed:<model>")


def make_baseline(spec: str, catalog: set[str]) -> Policy:
    """A baseline policy from its spec; an unknown spec names the choices."""
    if spec == "cheapest":
        return SingleModelPolicy("cheapest")
    if spec == "cascade":
        return CascadePolicy()
    if spec.startswith("fixed:"):
        model = spec.removeprefix("fixed:")
        if model not in catalog:
            raise InvalidArgument("policy", f"fixed model {model!r} is not in the catalog")
        return SingleModelPolicy(spec, model)
    raise InvalidArgument("policy", f"unknown policy {spec!r}; choose one of {', '.join(BASELINES)}")
