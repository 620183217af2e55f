"""Replay of recorded outcomes: for a prompt the set knows, the recorded answer and its real cost.

This is what lets the embedded default, training and evaluation run on real model behaviour offline.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Sequence

from xrouter.adapters.backends import BackendReply, estimate_tokens
from xrouter.adapters.catalog import ModelSpec, usd_to_micro
from xrouter.common.errors import NotFound
from xrouter.common.outcomes import read_outcomes

log = logging.getLogger(__name__)


class ReplayBackend:
    """Answers from one outcome set, keyed by the exact text of the last user message."""

    def __init__(self, name: str, path: pathlib.Path | str) -> None:
        started = time.perf_counter()
        self.name = name
        self._prompt_ids: dict[str, str] = {}
        self._answers: dict[tuple[str, str], tuple[str, int | None]] = {}
        for row in read_outcomes(path):
            if row.response is None:
                continue
            self._prompt_ids.setdefault(row.prompt, row.prompt_id)
            cost = None if row.cost_usd is None else usd_to_micro(row.cost_usd)
            self._answers[(row.prompt_id, row.model)] = (row.response, cost)
        log.info("replay %s: %d prompts, %d answers loaded in %.1fs", name, len(self._prompt_ids),
                 len(self._answers), time.perf_counter() - started)

    def models(self) -> set[str]:
        return {model for _, model in self._answers}

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply:
        prompt = next((content for role, content in reversed(messages) if role == "user"), "")
        prompt_id = self._prompt_ids.get(prompt)
        if prompt_id is None:
            raise NotFound(f"replay {self.name}: no recording of this prompt "
                           f"({len(prompt)} characters, starting {prompt[:60]!r})")
        recorded = self._answers.get((prompt_id, spec.id))
        if recorded is None:
            raise NotFound(f"replay {self.name}: model {spec.id!r} has no recorded answer to {prompt_id}")
        text, cost = recorded
        input_tokens = sum(estimate_tokens(content) for _, content in messages)
        output_tokens = estimate_tokens(text)
        if max_tokens and output_tokens > max_tokens:
            # The recording is longer than the caller allows: cut it, and price what was "generated".
            text = text[: max_tokens * 4]
            return BackendReply(text, input_tokens, max_tokens, True, "length",
                                spec.cost_micro_usd(input_tokens, max_tokens))
        return BackendReply(text, input_tokens, output_tokens, True, "stop", cost)
