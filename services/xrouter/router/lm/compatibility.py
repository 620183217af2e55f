"""What an LM checkpoint must offer before it may route, checked at load so that a bad one is refused
with the fix rather than serving fallbacks: a tokenizer and chat template that carry tool calls both
ways (the tool list and ``tool`` messages rendered into the context, ``<tool_call>`` markup surviving
the decode), and — when its tokens come from an OpenAI-compatible server — a server that serves
these weights, not others."""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.router.lm.transcript import supports_tools

GENERATION_URL = "XROUTER_ROUTER_LM_GENERATION_URL"
TEMPLATE_FIX = ("give the checkpoint a chat template that renders a `tools` list and `tool` messages (e.g. "
                "Qwen2.5-Instruct's chat_template in tokenizer_config.json), or a plain one that renders every "
                "role's content (the router then writes the tool list into the system prompt), and re-publish it")
_PROBE_TOOL = "call_xrouter_probe_model"
# Markers that each appear in one place only (the tool call names the tool, so the tool list is
# recognised by its description).
_PROBE_TOOLS, _PROBE_SYSTEM, _PROBE_RESULT = "xrouter-probe-tools-8c1f", "xrouter-probe-system-8c1f", "xrouter-probe-result-8c1f"
_PROBE_CALL = '<tool_call>{"name": "' + _PROBE_TOOL + '", "arguments": {"system_prompt": "x"}}</tool_call>'


def check_tool_support(tokenizer: Any, directory: pathlib.Path) -> None:
    """InvalidArgument naming the fix when the router LM could not see its tools or their results,
    or could not write a tool call the parser reads."""
    native = supports_tools(tokenizer)
    tools = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": _PROBE_TOOLS, "parameters": {
        "type": "object", "properties": {"system_prompt": {"type": "string"}}, "required": ["system_prompt"]}}}]
    messages = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": "Which is heavier?"},
                {"role": "assistant", "content": _PROBE_CALL}, {"role": "tool", "content": _PROBE_RESULT}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools if native else None, add_generation_prompt=True,
                                             tokenize=False)
    except Exception as error:  # noqa: BLE001 - jinja raises whatever the template author chose
        raise InvalidArgument("source", f"{directory}: the chat template cannot render a tool call and its result "
                              f"({type(error).__name__}: {error}); {TEMPLATE_FIX}") from None
    missing = [what for what, marker in (
        ("the tool list", _PROBE_TOOLS if native else _PROBE_SYSTEM),  # the Hermes block rides in the system prompt
        ("the tool call it made", _PROBE_CALL), ("the tool result", _PROBE_RESULT)) if marker not in text]
    if missing:
        raise InvalidArgument("source", f"{directory}: the chat template never renders {' or '.join(missing)}"
                              f"{' (it mentions tools but drops them)' if native and missing[0] == 'the tool list' else ''}"
                              f"; {TEMPLATE_FIX}")
    ids = tokenizer(_PROBE_CALL, add_special_tokens=False)["input_ids"]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if decoded.strip() != _PROBE_CALL:
        # The policy decodes with skip_special_tokens: markup the tokenizer cannot spell, or spells
        # as special tokens, never reaches the parser, and every reply would be malformed.
        raise InvalidArgument("source", f"{directory}: the tokenizer does not carry tool-call markup through "
                              f"(encoded and decoded, {_PROBE_CALL!r} comes back as {decoded!r}); use a tokenizer "
                              "that spells <tool_call> as text (or as a non-special added token) and re-publish")


def check_served_weights(url: str, served_model: str, directory: pathlib.Path, manifest: dict[str, Any],
                         timeout_s: float = 10.0) -> None:
    """The server at ``url`` must list ``served_model`` in ``/v1/models``, loaded from this checkpoint
    (vLLM reports the ``--model`` path it loaded as ``root``: the same directory, or one of the same
    name or named for the manifest's version where the server mounts the store elsewhere).
    InvalidArgument naming XROUTER_ROUTER_LM_GENERATION_URL and both names otherwise."""
    listing = url.rstrip("/") + "/models"
    try:
        with urllib.request.urlopen(listing, timeout=timeout_s) as response:  # noqa: S310 - http(s) checked by settings
            body = json.loads(response.read(1_000_000))
        served = {str(m["id"]): str(m.get("root") or "") for m in body["data"]}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
        raise InvalidArgument("source", f"{GENERATION_URL}={url}: cannot list its models at {listing} "
                              f"({type(error).__name__}: {error}); point it at the /v1 base URL of the vLLM "
                              f"server that serves {directory}") from None
    version = str(manifest.get("version", ""))
    wanted = f"checkpoint {directory} (manifest version {version!r})"
    if served_model not in served:
        listed = ", ".join(f"{name!r}" + (f" from {root}" if root and root != name else "")
                           for name, root in served.items()) or "nothing"
        raise InvalidArgument("source", f"{GENERATION_URL}={url} serves {listed}, not {served_model!r}, the "
                              f"{wanted}: start vLLM with --model {directory}"
                              f"{'' if served_model == str(directory) else f' --served-model-name {served_model}'}, "
                              f"or point {GENERATION_URL} at a server that serves it")
    root = served[served_model].rstrip("/")
    if root and root != str(directory) and pathlib.PurePosixPath(root).name not in (directory.name, version):
        raise InvalidArgument("source", f"{GENERATION_URL}={url} serves {served_model!r} from {root}, other "
                              f"weights than the {wanted}: restart vLLM with --model {directory} (or the same "
                              f"checkpoint where the server mounts it), or point {GENERATION_URL} elsewhere")
