"""What the router LM is shown: OpenAI-style tool definitions built from the pool (``call_<model>``
per model with its description and prices, and ``select_response``), the router's system prompt
(its standing instructions, then this request's λ, budget, turns and per-model cost estimates), the
Hermes ``<tools>`` block for chat templates that cannot render tools, and the ``tool`` messages that
carry call results back on the next turn.

Two renderings (a checkpoint's manifest names the one it was trained with):
- ``full``: one JSON function signature per model with its whole catalog description and prices;
- ``compact``: the call syntax once, and the pool as one short table row per model (name, prices,
  this query's estimated cost, the description's first sentence). Why: the first turn's context is
  what every GRPO update pays for; with 11 models the full tool block is ~1.4k tokens of repeated
  JSON schema, the compact one ~0.4k, and the standing part no longer depends on the pool, so a
  prefix cache shares it across every request.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from xrouter.router.policy import CallOutcome, EpisodeState

SELECT = "select_response"
CALL_PREFIX = "call_"
MAX_NAME = 64  # OpenAI function names: ^[a-zA-Z0-9_-]{1,64}$

# The router's instructions, the same for every request (so a context cache can share them), and
# then what differs per request, rendered after the tools.
ROUTER_PROMPT = """\
You are xRouter, a cost-aware router. You rarely answer yourself: you pick which language models \
answer the user. Each call_<model> tool sends the user's conversation to that model together with \
the system_prompt you write; make it specific (the task, the exact answer format, e.g. "Reply with \
the letter of the correct option only"); temperature is optional (0 to 2, default 0). Calls you \
make in the same reply run in parallel. Their answers come back as tool responses numbered by \
call_index. Then call select_response with the call_index of the best answer (it is returned to \
the user verbatim), call other models, or write the final answer yourself. Reply without any tool \
only to answer directly. A correct answer is worth 1 point; every US dollar spent on calls costs \
lambda points (lambda 0: only correctness counts; a large lambda: prefer cheap models)."""

REQUEST_PROMPT = """\
This request: lambda = {cost_lambda:g}. {budget}You have {turns} replies in total; in your last \
one you cannot call models."""

HERMES_TOOLS = """\
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


TOOL_PROMPTS = ("full", "compact")

# The compact block: the same Hermes call syntax, the tools described once for the whole pool.
COMPACT_TOOLS = """\
# Tools

Call a tool by writing <tool_call>{{"name": <tool>, "arguments": <json object>}}</tool_call>; \
several calls in one reply run in parallel.
{calls}- select_response, arguments {{"call_index": <integer>}}: return the answer of that call to the \
user verbatim."""
COMPACT_CALLS = """\
- call_<model> (one per model in the table below), arguments {"system_prompt": <string>, \
"temperature": <number, optional>}: send the conversation to that model.
"""
ABOUT_WORDS = 16  # of a model's description shown in the compact table


def tool_names(models: list[str]) -> dict[str, str]:
    """``call_<model>`` name → model id; characters a function name may not hold become ``_``
    (``meta/llama-2-70b-chat`` → ``call_meta_llama-2-70b-chat``), clashes get a numeric suffix."""
    names: dict[str, str] = {}
    for model in models:
        base = (CALL_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", model))[:MAX_NAME]
        name, n = base, 2
        while name in names:
            name = f"{base[:MAX_NAME - len(str(n)) - 1]}_{n}"
            n += 1
        names[name] = model
    return names


@dataclasses.dataclass(frozen=True)
class Toolset:
    """The tools of one episode (the pool is fixed for an episode) and their name → model map."""

    tools: list[dict[str, Any]]
    models: dict[str, str]  # call_<name> → model id
    compact: bool = False


def check_tool_prompt(name: str) -> str:
    if name not in TOOL_PROMPTS:
        raise ValueError(f"tool prompt {name!r}: expected one of {', '.join(TOOL_PROMPTS)}")
    return name


def about(description: str) -> str:
    """A description's first sentence, at most ``ABOUT_WORDS`` words (the compact table's column)."""
    sentence = re.split(r"(?<=[.!?])\s", description.strip(), maxsplit=1)[0].replace("|", "/")
    words = sentence.split()
    return " ".join(words[:ABOUT_WORDS]) + (" ..." if len(words) > ABOUT_WORDS else "")


def build_toolset(state: EpisodeState, tool_prompt: str = "full") -> Toolset:
    """Tool definitions for the state's pool; none on a final turn with nothing to select. With the
    compact prompt each model's description is its table row's ``about`` and prices sit in the table."""
    compact = check_tool_prompt(tool_prompt) == "compact"
    names = tool_names([o.id for o in state.pool])
    tools: list[dict[str, Any]] = []
    if not state.final_turn:
        for name, model in names.items():
            option = state.option(model)
            assert option is not None
            description = about(option.description) if compact else (
                f"{option.description} Price: ${option.input_usd_per_mtok:g} per million input tokens, "
                f"${option.output_usd_per_mtok:g} per million output tokens.").strip()
            # Argument schemas stay bare: a pool of 11 models repeats them 11 times in the context,
            # and the router prompt already says what a good system_prompt is.
            tools.append(_function(name, description, {"system_prompt": {"type": "string"},
                                                       "temperature": {"type": "number"}}, ["system_prompt"]))
    tools.append(_function(SELECT, "Return the answer of call call_index to the user verbatim.",
                           {"call_index": {"type": "integer"}}, ["call_index"]))
    return Toolset(tools, names, compact)


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


def request_prompt(state: EpisodeState, toolset: Toolset) -> str:
    """What the router must know about this request: λ, budget, turns, the estimated cost of a call
    to each model for this query, and the user's own system prompt (the models receive it too)."""
    budget = (f"Hard budget: ${state.max_cost_usd:g} for all calls together; calls past it are skipped. "
              if state.max_cost_usd is not None else "")
    text = REQUEST_PROMPT.format(cost_lambda=state.cost_lambda, budget=budget, turns=state.max_turns)
    if state.final_turn and not state.calls:
        text += "\nThis request allows no model calls: answer the user directly."
    elif toolset.models and toolset.compact:
        rows = []
        for name, model in toolset.models.items():
            option = state.option(model)
            assert option is not None
            rows.append(f"{name} | {option.input_usd_per_mtok:g} / {option.output_usd_per_mtok:g} | "
                        f"{state.estimate_call_usd(option):.6f} | {about(option.description)}")
        text += ("\nModels (tool | $ per million input / output tokens | estimated $ of one call for this query "
                 "| about):\n" + "\n".join(rows))
    elif toolset.models:
        estimates = ", ".join(f"{name} ${state.estimate_call_usd(state.option(model)):.6f}"  # type: ignore[arg-type]
                              for name, model in toolset.models.items())
        text += f"\nEstimated cost of one call for this query: {estimates}."
    user_system = "\n\n".join(content for role, content in state.messages if role == "system")
    if user_system:
        text += f"\n\nThe user's system prompt (every model you call receives it too):\n{user_system}"
    return text


def hermes_block(tools: list[dict[str, Any]], compact: bool = False) -> str:
    """The tool list as Qwen/Hermes templates render it, for templates without tool support; compact:
    the call syntax once (the models are in the request's table), the same for every pool."""
    if compact:
        calls = COMPACT_CALLS if any(t["function"]["name"] != SELECT for t in tools) else ""
        return COMPACT_TOOLS.format(calls=calls)
    return HERMES_TOOLS.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def tool_result(call: CallOutcome, max_chars: int, turns_left: int, wrap: bool) -> dict[str, str]:
    """One call's outcome as a ``tool`` message (long answers cut to ``max_chars``, marked so)."""
    body: dict[str, Any] = {"call_index": call.index, "model": call.model}
    if call.ok:
        text = call.text if len(call.text) <= max_chars else call.text[:max_chars] + " [...cut]"
        body.update(status="ok", cost_usd=round(call.cost_micro_usd / 1e6, 8), response=text)
    else:
        body.update(status=call.status.name.lower(), error=call.error or call.status.name)
    body["replies_left"] = turns_left
    if turns_left <= 1:
        body["note"] = "this is your last reply: select_response or answer, no more calls"
    content = json.dumps(body, ensure_ascii=False)
    # Templates that know tools wrap results themselves; for the others we write Hermes' wrapper.
    return {"role": "tool", "content": f"<tool_response>\n{content}\n</tool_response>" if wrap else content}
