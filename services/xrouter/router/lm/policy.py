"""The LM policy: each turn, the router LM continues its transcript (first turn: router prompt, tools
and conversation; later turns: the results of its calls as ``tool`` messages) and its reply is
parsed into an action.

A malformed reply (see parsing.py) has one defined outcome, chosen so that serving still answers:
- a call has succeeded already → ``SelectResponse(-1)``: the episode loop's fallback returns the last
  successful answer (strategy FALLBACK);
- nothing succeeded and calls are still allowed → the cheapest pool model is called with the
  baselines' system prompt (a safety net; the LM decides again on the next turn);
- otherwise → ``SelectResponse(-1)``, whose fallback reports that no model call succeeded.
Each reply's malformation or truncation is kept in the transcript (``Transcript.failure``) and the
trainer scores such an episode 0, as the paper does, so the fallback never pays during training.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.lm.charge import RouterLMPrice
from xrouter.router.lm.generation import GenerationBackend
from xrouter.router.lm.parsing import parse_reply
from xrouter.router.lm.tools import build_toolset, check_tool_prompt, request_prompt, tool_result
from xrouter.router.lm.transcript import ChatRenderer, Reply, Transcript
from xrouter.router.policy import Action, CallModels, EpisodeState, SelectResponse, ToolCall

DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_MAX_RESPONSE_CHARS = 1500  # of each model answer shown to the router LM (keeps its context short)


def fallback_action(state: EpisodeState) -> Action:
    """What a malformed reply turns into (see the module docstring)."""
    if any(c.ok for c in state.calls) or state.final_turn or not state.pool:
        return SelectResponse(-1)
    cheapest = min(state.pool, key=lambda o: (state.estimate_call_usd(o), o.id))
    return CallModels((ToolCall(cheapest.id, SYSTEM_PROMPT),))


class LMPolicy:
    """A causal LM deciding turns through a generation backend; ``temperature`` 0 decodes greedily
    (serving), > 0 samples (rollouts). With ``recorder`` set to a list, the transcript of every
    episode started is appended to it (the trainer reads token ids, masks and failures from it).
    ``price`` is what its own tokens cost (router/lm/charge.py bills every decision turn at it);
    ``tool_prompt`` is how the pool is shown ("full" or "compact", see tools.py): a checkpoint must be
    served with the one it was trained with, as with ``message_tokens`` (see ChatRenderer)."""

    kind = "lm"
    min_turns = 1

    def __init__(self, tokenizer: Any, backend: GenerationBackend, version: str = "0", temperature: float = 0.0,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS, price: RouterLMPrice = RouterLMPrice(),
                 tool_prompt: str = "full", message_tokens: int = 0) -> None:
        if temperature < 0 or max_new_tokens < 1 or max_response_chars < 1:
            raise ValueError(f"temperature={temperature}, max_new_tokens={max_new_tokens}, max_response_chars="
                             f"{max_response_chars}: need temperature >= 0 and the limits >= 1")
        self.tokenizer, self.backend, self.version = tokenizer, backend, version
        self.temperature, self.max_new_tokens, self.max_response_chars = temperature, max_new_tokens, max_response_chars
        self.price, self.tool_prompt = price, check_tool_prompt(tool_prompt)
        self.renderer = ChatRenderer(tokenizer, message_tokens)
        self.recorder: list[Transcript] | None = None
        # One transcript per live episode, keyed by its state object (concurrent requests each have
        # their own); dropped when the state is garbage-collected.
        self._transcripts: dict[int, Transcript] = {}

    def transcript_of(self, state: EpisodeState) -> Transcript | None:
        """The transcript of a live episode (None before its first decision)."""
        return self._transcripts.get(id(state))

    def _advance(self, state: EpisodeState) -> Transcript:
        """The episode's transcript, its context brought up to date with the calls made since."""
        key = id(state)
        transcript = self._transcripts.get(key)
        if transcript is None:
            toolset = build_toolset(state, self.tool_prompt)
            transcript = self.renderer.start(request_prompt(state, toolset), state.messages, toolset)
            self._transcripts[key] = transcript
            weakref.finalize(state, self._transcripts.pop, key, None)
            if self.recorder is not None:
                self.recorder.append(transcript)
            return transcript
        new_calls = state.calls[transcript.reported_calls:]
        replies_left = state.max_turns - state.turn + 1
        results = [tool_result(call, self.max_response_chars, replies_left, wrap=not self.renderer.native_tools)
                   for call in new_calls]
        self.renderer.continue_with(transcript, results)
        transcript.reported_calls = len(state.calls)
        return transcript

    async def decide(self, state: EpisodeState) -> Action:
        transcript = self._advance(state)
        started = time.perf_counter()
        generation = await self.backend.generate(transcript.token_ids, self.max_new_tokens, self.temperature)
        latency_ms = (time.perf_counter() - started) * 1000
        text = self.tokenizer.decode(list(generation.token_ids), skip_special_tokens=True)
        parsed = parse_reply(text, transcript.toolset.models)
        reply = Reply(text, generation.finish_reason, parsed.error,
                      _count(generation.prompt_tokens, len(transcript.token_ids)),
                      _count(generation.completion_tokens, len(generation.token_ids)), state.turn, latency_ms)
        transcript.add_generation(list(generation.token_ids),
                                  list(generation.log_probs) if generation.log_probs is not None else None, reply)
        return parsed.action if parsed.action is not None else fallback_action(state)


def _count(reported: int | None, held: int) -> int:
    """The backend's own count where it reports one (what a vLLM server bills), else the ids held."""
    return held if reported is None else reported
