"""Replay of recorded outcomes: for a prompt the set knows, the recorded answer and its real cost.

This is what lets the embedded default, training and evaluation run on real model behaviour offline.
Rows with a recorded score but no recorded text (some chat sets) answer with a marked placeholder
(:func:`~xrouter.common.outcomes.placeholder_text`) that the recorded-label verifier grades with
that row's score, so every scored row stays routable.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Sequence

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.catalog import ModelSpec, usd_to_micro
from xrouter.adapters.token_count import counter_for
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import NotFound
from xrouter.common.outcomes import is_placeholder, placeholder_text, read_outcomes

log = logging.getLogger(__name__)


def _last_turn(prompt: str) -> str | None:
    """The last turn of a multi-turn prompt recorded as a JSON list of strings, else None."""
    if not prompt.startswith("["):
        return None
    try:
        turns = json.loads(prompt)
    except ValueError:
        return None
    if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
        return turns[-1]
    return None


class ReplayBackend:
    """Answers from one outcome set, keyed by the exact text of the last user message.

    A prompt recorded as a JSON list of turns is also found by the text of its last turn (what a
    chat client sends as its last user message), unless another prompt has exactly that text.

    Options: ``stop`` cuts the recording where a generating model would have stopped; ``seed`` asks
    for a reproducible answer, which a recording always is. Other sampling options would change a
    sample the recording cannot redraw, and tools it never saw: those are refused.
    """

    options = frozenset({"stop", "seed"})

    def __init__(self, name: str, path: pathlib.Path | str) -> None:
        started = time.perf_counter()
        self.name = name
        self._prompt_ids: dict[str, str] = {}
        self._answers: dict[tuple[str, str], tuple[str, int | None]] = {}
        last_turns: dict[str, str] = {}
        placeholders = 0
        for row in read_outcomes(path):
            self._prompt_ids.setdefault(row.prompt, row.prompt_id)
            turn = _last_turn(row.prompt)
            if turn is not None:
                last_turns.setdefault(turn, row.prompt_id)
            text = row.response
            if text is None:
                text = placeholder_text(row.prompt_id, row.model)
                placeholders += 1
            cost = None if row.cost_usd is None else usd_to_micro(row.cost_usd)
            self._answers[(row.prompt_id, row.model)] = (text, cost)
        for turn, prompt_id in last_turns.items():
            self._prompt_ids.setdefault(turn, prompt_id)
        log.info("replay %s: %d prompts, %d answers (%d without recorded text) loaded in %.1fs", name,
                 len({pid for pid, _ in self._answers}), len(self._answers), placeholders,
                 time.perf_counter() - started)

    def models(self) -> set[str]:
        """Every model with at least one recorded row (with or without recorded text)."""
        return {model for _, model in self._answers}

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int, options: CallOptions = CallOptions()) -> BackendReply:
        prompt = next((content for role, content in reversed(messages) if role == "user"), "")
        prompt_id = self._prompt_ids.get(prompt)
        if prompt_id is None:
            raise NotFound(f"replay {self.name}: no recording of this prompt "
                           f"({len(prompt)} characters, starting {prompt[:60]!r})")
        recorded = self._answers.get((prompt_id, spec.id))
        if recorded is None:
            raise NotFound(f"replay {self.name}: model {spec.id!r} has no recorded answer to {prompt_id}")
        text, cost = recorded
        counter = counter_for(spec.tokenizer)  # a recording carries no token counts of its own
        input_tokens, estimated = counter.messages(messages), not counter.exact
        cut = min((text.find(s) for s in options.stop if s in text), default=-1)
        if cut >= 0 and not is_placeholder(text):  # generation ends before the stop sequence
            text = text[:cut]
            cost = None  # priced for the tokens "generated" up to the stop, as the cut below
            if not max_tokens or counter.text(text) <= max_tokens:
                return BackendReply(text, input_tokens, counter.text(text), estimated, "stop")
        output_tokens = counter.text(text)
        if is_placeholder(text):
            # No recorded text: the row's (recorded or priced) cost stands, the text is never cut.
            return BackendReply(text, input_tokens, output_tokens, estimated, "stop", cost)
        if max_tokens and output_tokens > max_tokens:
            # The recording is longer than the caller allows: cut it, and price what was "generated".
            text = counter.truncate(text, max_tokens)
            return BackendReply(text, input_tokens, max_tokens, estimated, "length",
                                spec.cost_micro_usd(input_tokens, max_tokens))
        return BackendReply(text, input_tokens, output_tokens, estimated, "stop", cost)
