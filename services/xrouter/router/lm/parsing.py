"""Reading what the router LM wrote. Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`` blocks (or one block holding a JSON list of such calls, as SmolLM2 was taught) become
actions: one or more ``call_<model>`` calls → CallModels (the calls of one reply run in parallel);
one ``select_response`` → SelectResponse; text with no block → Answer. Text around tool-call blocks
(the model thinking aloud) is ignored.

Anything else is *malformed* and yields no action, only the reason: an unclosed or unopened tag,
JSON that does not parse or is not ``{"name": str, "arguments": object}``, a tool name that is
neither ``select_response`` nor a ``call_`` tool offered this episode, a missing or ill-typed
argument, ``select_response`` twice or together with calls, or an empty reply. What the policy does
then is its fallback (see LMPolicy); training scores such an episode 0, as the paper does."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from xrouter.router.lm.tools import CALL_PREFIX, SELECT
from xrouter.router.policy import Action, Answer, CallModels, SelectResponse, ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    """An action, or (``action`` None) the reason the reply is malformed."""

    action: Action | None
    error: str = ""


def _malformed(reason: str) -> ParsedReply:
    return ParsedReply(None, reason)


def parse_reply(text: str, tools: dict[str, str]) -> ParsedReply:
    """Parse one generated reply; ``tools`` maps the episode's ``call_<name>`` tools to model ids."""
    blocks = _BLOCK.findall(text)
    rest = _BLOCK.sub("", text)
    if OPEN in rest or CLOSE in rest:
        return _malformed(f"unbalanced {OPEN} tags (a block not closed, or a close without an open)")
    if not blocks:
        return ParsedReply(Answer(text.strip())) if text.strip() else _malformed("empty reply")
    requests: list[Any] = []
    for block in blocks:
        try:
            parsed = json.loads(block)
        except json.JSONDecodeError as error:
            return _malformed(f"tool call {len(requests) + 1}: not JSON ({error.msg} at char {error.pos})")
        # One call per block (Hermes, Qwen), or a list of calls in one block (SmolLM2's own format).
        requests += parsed if isinstance(parsed, list) and parsed else [parsed]
    calls: list[ToolCall] = []
    selects: list[int] = []
    for number, call in enumerate(requests, 1):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return _malformed(f"tool call {number}: expected {{\"name\": ..., \"arguments\": {{...}}}}")
        name, arguments = call["name"], call.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI style: the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return _malformed(f"tool call {number} ({name}): arguments string is not JSON")
        if not isinstance(arguments, dict):
            return _malformed(f"tool call {number} ({name}): arguments must be an object")
        if name == SELECT:
            index = arguments.get("call_index")
            if not isinstance(index, int) or isinstance(index, bool):
                return _malformed(f"tool call {number} ({SELECT}): call_index must be an integer, got {index!r}")
            selects.append(index)
        elif name in tools:
            parsed = _call(number, name, tools[name], arguments)
            if isinstance(parsed, str):
                return _malformed(parsed)
            calls.append(parsed)
        else:
            offered = "a call_ tool of this pool" if name.startswith(CALL_PREFIX) else f"{SELECT} or a call_ tool"
            return _malformed(f"tool call {number}: unknown tool {name!r} (expected {offered})")
    if selects and (calls or len(selects) > 1):
        return _malformed(f"{SELECT} must be the only tool call of its reply")
    return ParsedReply(SelectResponse(selects[0]) if selects else CallModels(tuple(calls)))


def _call(number: int, name: str, model: str, arguments: dict[str, Any]) -> ToolCall | str:
    prompt = arguments.get("system_prompt")
    if not isinstance(prompt, str):
        return f"tool call {number} ({name}): system_prompt must be a string, got {prompt!r}"
    temperature = arguments.get("temperature", 0.0)
    if (not isinstance(temperature, int | float) or isinstance(temperature, bool) or not math.isfinite(temperature)
            or not 0 <= temperature <= 2):
        return f"tool call {number} ({name}): temperature must be a number in [0, 2], got {temperature!r}"
    return ToolCall(model, prompt, float(temperature))
