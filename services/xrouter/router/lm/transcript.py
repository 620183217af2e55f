"""One episode as the router LM sees it, kept as token ids rather than re-rendered text.

Why ids: re-rendering the conversation each turn would re-tokenize what the model generated, and the
re-tokenized ids can differ from the sampled ones; the trainer must score exactly the tokens that
were sampled, in exactly the context they were sampled in. So the first turn renders the chat
template once, each generation is appended verbatim (marked as generated), and each later turn
appends only the template's rendering of what came after the model's reply (its end-of-turn
tokens, the ``tool`` messages with call results, the next generation prompt), all marked not
generated. That continuation is found by rendering the chat with a sentinel in place of the last
reply and keeping what follows the sentinel, which works for any template that renders messages
in order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from xrouter.router.lm.tools import ROUTER_PROMPT, Toolset, hermes_block

SENTINEL = "\u2063xrouter-reply\u2063"
_STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end|>")


def supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools=`` list itself."""
    template = tokenizer.chat_template
    return isinstance(template, str) and "tools" in template


def stop_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokens that end a reply: EOS and the usual end-of-turn tokens this vocabulary has."""
    vocabulary = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id} | {vocabulary[t] for t in _STOP_TOKENS if t in vocabulary}
    return tuple(sorted(i for i in ids if i is not None))


@dataclasses.dataclass
class Reply:
    """One generated reply: its text, how it ended, and why it is malformed (empty if it is not)."""

    text: str
    finish_reason: str
    error: str = ""
    # What generating it cost (router/lm/charge.py prices these): the context it continued and the
    # tokens generated, as the backend counted them; the turn it decided and how long it took.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    turn: int = 0
    latency_ms: float = 0.0


@dataclasses.dataclass
class Transcript:
    """Every token of one episode's router context, which of them the policy generated, and the
    log-probability the generation backend reported for each generated token (NaN elsewhere)."""

    toolset: Toolset
    messages: list[dict[str, str]]
    token_ids: list[int]
    generated: list[bool]
    log_probs: list[float]
    reported_calls: int = 0  # calls already shown to the model as tool messages
    replies: list[Reply] = dataclasses.field(default_factory=list)

    @property
    def failure(self) -> str:
        """Why the episode did not end properly (malformed or truncated replies); empty if it did."""
        problems = [r.error for r in self.replies if r.error]
        problems += ["truncated at max_new_tokens" for r in self.replies if r.finish_reason == "length"]
        return "; ".join(problems)

    def add_context(self, ids: list[int]) -> None:
        self.token_ids += ids
        self.generated += [False] * len(ids)
        self.log_probs += [math.nan] * len(ids)

    def add_generation(self, ids: list[int], log_probs: list[float] | None, reply: Reply) -> None:
        self.token_ids += ids
        self.generated += [True] * len(ids)
        self.log_probs += list(log_probs) if log_probs is not None else [math.nan] * len(ids)
        self.replies.append(reply)
        self.messages.append({"role": "assistant", "content": reply.text})


class ChatRenderer:
    """Renders transcripts with a tokenizer's chat template (tools natively, or as a Hermes block
    in the system prompt when the template has no tool support). With ``message_tokens`` > 0 the
    router reads only the last that many tokens of each conversation message (the models it calls
    still get the whole conversation): in few-shot prompts the question comes last, and the rest is
    context every GRPO update would pay for (the compact policy's encoder cuts the same way)."""

    def __init__(self, tokenizer: Any, message_tokens: int = 0) -> None:
        if message_tokens < 0:
            raise ValueError(f"message_tokens={message_tokens}: need >= 0 (0: whole messages)")
        self.tokenizer, self.message_tokens = tokenizer, message_tokens
        self.native_tools = supports_tools(tokenizer)
        self.stop_ids = stop_token_ids(tokenizer)

    def _text(self, messages: list[dict[str, str]], tools: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools if self.native_tools else None,
                                                  add_generation_prompt=True, tokenize=False)

    def _ids(self, text: str) -> list[int]:
        # The template wrote every special token (BOS included, where it has one) into the text.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def start(self, request: str, conversation: list[tuple[str, str]], toolset: Toolset) -> Transcript:
        """The first turn's context: the router's system prompt, then the conversation. Its
        standing instructions and the tools come before ``request`` (what differs per request), so
        requests over the same pool share the longest prefix a context cache can reuse."""
        if self.native_tools:  # the template appends the tools to the system message itself
            system = f"{ROUTER_PROMPT}\n\n{request}"
        else:
            system = f"{ROUTER_PROMPT}\n\n{hermes_block(toolset.tools, toolset.compact)}\n\n{request}"
        messages = [{"role": "system", "content": system}]
        messages += [{"role": role, "content": self._tail(content)} for role, content in conversation if role != "system"]
        transcript = Transcript(toolset, messages, [], [], [])
        transcript.add_context(self._ids(self._text(messages, toolset.tools)))
        return transcript

    def _tail(self, content: str) -> str:
        """``content`` cut to its last ``message_tokens`` tokens, marked as cut."""
        if not self.message_tokens:
            return content
        ids = self._ids(content)
        if len(ids) <= self.message_tokens:
            return content
        return "[...] " + self.tokenizer.decode(ids[-self.message_tokens:])

    def continue_with(self, transcript: Transcript, messages: list[dict[str, str]]) -> None:
        """Append what follows the last reply: its end-of-turn tokens, ``messages``, a new prompt."""
        last = transcript.messages[-1]
        if last["role"] != "assistant":
            raise ValueError("continue_with: the transcript does not end with a generated reply")
        marked = transcript.messages[:-1] + [{"role": "assistant", "content": SENTINEL}] + messages
        text = self._text(marked, transcript.toolset.tools)
        if text.count(SENTINEL) != 1:
            raise ValueError("the chat template does not render the assistant reply verbatim; "
                             "the LM policy needs one that does")
        suffix = text.split(SENTINEL, 1)[1]
        if transcript.generated[-1] and transcript.token_ids[-1] in self.stop_ids:
            # The reply's own stop token is already in the transcript: do not add the template's copy.
            suffix = suffix.removeprefix(self.tokenizer.convert_ids_to_tokens(transcript.token_ids[-1]))
        transcript.add_context(self._ids(suffix))
        transcript.messages += messages
