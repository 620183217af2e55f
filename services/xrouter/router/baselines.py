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
    one_answer = True  # the answer is the call's, unchanged: tool calls and formats pass through

    def __init__(self, kind: str, model: str | None = None) -> None:
        self.kind = kind
        self._model = model

    @property
    def model(self) -> str | None:
        """The one model a ``fixed:<model>`` policy calls (None: the cheapest of the pool)."""
        return self._model

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
        return CallModels((ToolCall(self.choose(state), SYSTEM_PROMPT),), final=True)  # selected once it succeeds


def answer_key(text: str) -> str:
    """What two answers must share to 'agree': the option letter if one leads, else the text."""
    match = _CHOICE.match(text)
    return match.group(1) if match else " ".join(text.lower().split())


class CascadePolicy:
    """Two cheap models first, in parallel; if they agree (same option letter or the same normalised
    text) return the first one's answer, otherwise escalate to a strong model and return its answer.
    The rule: two cheap models disagreeing marks a hard query. By default the pair is the two
    cheapest models of the pool and the escalation target the dearest; ``cascade:A,B[,C]`` names them."""

    kind = "cascade"
    version = "1"
    min_turns = 2

    def __init__(self, pair: tuple[str, str] | None = None, escalate: str | None = None) -> None:
        self.pair, self.escalate = pair, escalate

    def _plan(self, state: EpisodeState) -> tuple[list[str], str]:
        ranked = [o.id for o in _by_price(state)]
        pair = [m for m in self.pair if state.option(m)] if self.pair else ranked[:2]
        escalate = self.escalate if self.escalate and state.option(self.escalate) else ranked[-1]
        return pair or ranked[:2], escalate

    async def decide(self, state: EpisodeState) -> Action:
        pair, escalate = self._plan(state)
        ok = [c for c in state.calls if c.ok]
        if not state.calls:
            return CallModels(tuple(ToolCall(m, SYSTEM_PROMPT) for m in pair))
        escalated = [c for c in ok if c.model == escalate and c.turn > 1]
        if escalated:
            return SelectResponse(escalated[-1].index)
        first_round = [c for c in ok if c.turn == 1]
        agree = len(first_round) == 2 and answer_key(first_round[0].text) == answer_key(first_round[1].text)
        if agree or escalate in pair or state.final_turn:
            best = first_round[0].index if first_round else _last_ok(state)
            return SelectResponse(-1 if best is None else best)
        return CallModels((ToolCall(escalate, SYSTEM_PROMPT),), final=True)  # an escalated answer is selected


BASELINES = ("cheapest", "cascade", "cascade:<cheap>,<cheap>[,<strong>]", "fixed:<model>")


def make_baseline(spec: str, catalog: set[str]) -> Policy:
    """A baseline policy from its spec; an unknown spec names the choices."""
    if spec == "cheapest":
        return SingleModelPolicy("cheapest")
    if spec == "cascade":
        return CascadePolicy()
    if spec.startswith("cascade:"):
        models = [m.strip() for m in spec.removeprefix("cascade:").split(",")]
        unknown = [m for m in models if m not in catalog]
        if len(models) not in (2, 3) or unknown:
            raise InvalidArgument("policy", f"{spec!r}: name two cheap catalog models and optionally the one to "
                                  f"escalate to (cascade:A,B[,C]); not in the catalog: {unknown}")
        return CascadePolicy((models[0], models[1]), models[2] if len(models) == 3 else None)
    if spec.startswith("fixed:"):
        model = spec.removeprefix("fixed:")
        if model not in catalog:
            raise InvalidArgument("policy", f"fixed model {model!r} is not in the catalog")
        return SingleModelPolicy(spec, model)
    raise InvalidArgument("policy", f"unknown policy {spec!r}; choose one of {', '.join(BASELINES)}")
