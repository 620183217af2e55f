"""Reading an OpenAI chat-completions body into a :class:`RouteRequest`: every field is either
honoured or refused with a 400 naming it, never dropped (a caller that set ``n: 3`` or a
``logit_bias`` and got one plain answer back would believe it had what it asked for).

``model`` picks the routing: ``xrouter`` (the default λ), ``xrouter:<λ>``, ``xrouter-<preset>`` (a
named λ, :data:`PRESETS`), or a catalog model id (that model is called directly, through the router,
with metering: the router acts as a gateway). Router controls ride in an optional ``xrouter`` object.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection
from typing import Any

from xrouter.common.bounds import shown
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import InvalidArgument, NotFound
from xrouter.router.core import RouteRequest
from xrouter.router.ports import ScoringReference

__all__ = ["MODEL", "PRESETS", "ChatRequest", "Unsupported", "parse_chat_request"]

MODEL = "xrouter"
# Named cost preferences (λ, reward per dollar), from the bundled policy's evaluation in the README:
# λ=1 keeps its best accuracy, λ=100 gives up a little of it for a twelfth of the cost, λ=1000
# answers from the cheapest models that still get most questions right.
PRESETS = {"quality": 1.0, "balanced": 100.0, "cheap": 1000.0}
CONTROLS = frozenset({"allowed_models", "max_cost_usd", "max_turns", "policy", "tenant", "reference", "request_id"})
# Fields an SDK may send at their default value; any other value is refused (not honoured).
_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "n": (1,), "logprobs": (False,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
    "logit_bias": ({},), "parallel_tool_calls": (True,), "store": (False,), "metadata": ({},),
    "service_tier": ("auto", "default"), "modalities": (["text"],)}
_WHY = {
    "n": "one answer per request (send n requests)", "store": "xrouter stores no completions",
    "metadata": "it tags stored completions, and xrouter stores none",
    "functions": "use tools", "function_call": "use tool_choice"}
_HONOURED = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                       "temperature", "top_p", "stop", "seed", "user", "tools", "tool_choice", "response_format",
                       "xrouter", *_DEFAULTS})
_MESSAGE_KEYS = frozenset({"role", "content"})


class Unsupported(InvalidArgument):
    """A field xrouter does not honour (OpenAI's ``unsupported_parameter``), rather than a bad value."""

    openai_code = "unsupported_parameter"


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """The parsed body: the route request and how to answer it."""

    route: RouteRequest
    stream: bool
    include_usage: bool
    model: str  # as the caller wrote it (echoed in responses)


def _typed(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> Any:
    # bool is an int in Python; JSON true is never a number here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidArgument(field, f"must be {what}, got {shown(value)}")
    if not isinstance(value, kind):
        raise InvalidArgument(field, f"must be {what}, got {shown(value)}")
    return value


def _number(value: Any, field: str) -> float:
    """A JSON number as a float; an integer too large for one (1e400 written out) is refused, not a 500."""
    _typed(value, (int, float), field, "a number")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(field, f"{len(str(value))}-digit integer is out of range") from None


def _reference(value: Any) -> ScoringReference | None:
    if value is None:
        return None
    _typed(value, dict, "xrouter.reference", "an object")
    fields = {"task_type", "gold", "dataset", "prompt_id"}
    if not set(value) <= fields or not isinstance(value.get("task_type"), str):
        raise InvalidArgument("xrouter.reference", f"needs a string task_type and keys among {sorted(fields)}")
    return ScoringReference(**{k: _typed(v, str, f"xrouter.reference.{k}", "a string") for k, v in value.items()})


def _is_default(value: Any, defaults: tuple[Any, ...]) -> bool:
    # JSON true is not the number 1, nor false 0: compare bools by identity.
    return any(value is d if isinstance(value, bool) or isinstance(d, bool) else value == d for d in defaults)


def _refuse_unhonoured(body: dict[str, Any]) -> None:
    for field, value in body.items():
        if field not in _HONOURED:
            raise Unsupported(field, _WHY.get(field, "is not supported by xrouter; leave it out"))
        if field in _DEFAULTS and value is not None and not _is_default(value, _DEFAULTS[field]):
            raise Unsupported(field, f"only {shown(_DEFAULTS[field][0])} is supported: "
                              f"{_WHY.get(field, 'xrouter does not honour other values')}")


def _content(value: Any, field: str) -> str:
    """A message's text: a string, or a list of text parts (joined, as OpenAI reads them)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) for p in value):
        for part in value:
            if part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise Unsupported(field, f"only text parts are supported, got {shown(part)}")
        return "".join(part["text"] for part in value)
    raise InvalidArgument(field, "must be a string or a list of text parts")


def _messages(value: Any) -> list[tuple[str, str]]:
    messages = _typed(value, list, "messages", "a list of {role, content} objects")
    parsed = []
    for number, message in enumerate(messages):
        field = f"messages[{number}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidArgument(field, "must be an object with a string role and content")
        extra = sorted(set(message) - _MESSAGE_KEYS)
        if extra:  # names, earlier tool calls and tool results are not carried to the models yet
            raise Unsupported(f"{field}.{extra[0]}", "is not supported (messages carry role and content only)")
        role = "system" if message["role"] == "developer" else message["role"]  # OpenAI's newer name for it
        parsed.append((role, _content(message.get("content"), f"{field}.content")))
    return parsed


def _json_option(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if field == "response_format" and value == {"type": "text"}:
        return ""  # plain text is what every answer is: nothing to ask of the model (and any policy may serve it)
    return "" if value is None else json.dumps(value)


def _options(body: dict[str, Any]) -> CallOptions:
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    stop = _typed(stop or [], list, "stop", "a string or a list of strings")
    seed = body.get("seed")
    top_p = body.get("top_p")
    return CallOptions(
        top_p=None if top_p is None else _number(top_p, "top_p"),
        stop=tuple(_typed(s, str, "stop", "a string or a list of strings") for s in stop),
        seed=None if seed is None else _typed(seed, int, "seed", "an integer"),
        user=_typed(body.get("user") or "", str, "user", "a string"),
        tools=_json_option(body, "tools"), tool_choice=_json_option(body, "tool_choice"),
        response_format=_json_option(body, "response_format"))


def _max_tokens(body: dict[str, Any]) -> int:
    given = {f: body[f] for f in ("max_completion_tokens", "max_tokens") if body.get(f) is not None}
    for field, value in given.items():
        _typed(value, int, field, "an integer")
    if len(set(given.values())) > 1:
        raise InvalidArgument("max_tokens", "max_tokens and max_completion_tokens differ; send one of them")
    return next(iter(given.values()), 0)


def _model(model: Any, catalog: Collection[str]) -> tuple[float | None, str]:
    """``model`` → (λ or None for the default, the catalog model to call directly or "")."""
    if not isinstance(model, str):
        raise InvalidArgument("model", f"must be a string, got {shown(model)}")
    if model == MODEL:
        return None, ""
    if model.startswith(MODEL + "-") and model.removeprefix(MODEL + "-") in PRESETS:
        return PRESETS[model.removeprefix(MODEL + "-")], ""
    if model.startswith(MODEL + ":"):
        try:
            cost_lambda = float(model.split(":", 1)[1])
        except ValueError:
            raise InvalidArgument("model", f"{shown(model)}: the part after 'xrouter:' must be a number") from None
        if math.isnan(cost_lambda) or math.isinf(cost_lambda):
            raise InvalidArgument("model", f"{shown(model)}: lambda must be a finite number")
        return cost_lambda, ""
    if model in catalog:
        return None, model
    error = NotFound(f"model: {shown(model)} does not exist; use {MODEL!r}, '{MODEL}:<lambda>', "
                     f"{', '.join(repr(f'{MODEL}-{p}') for p in PRESETS)} or a catalog model (GET /v1/models)")
    error.field = "model"  # type: ignore[attr-defined]  # OpenAI's 404 names the param: model_not_found
    raise error


def parse_chat_request(body: Any, tenant_header: str, catalog: Collection[str] = ()) -> ChatRequest:
    """An OpenAI chat body → the route request; strict about types, refuses what it does not honour."""
    _typed(body, dict, "body", "a JSON object")
    cost_lambda, direct = _model(body.get("model"), catalog)
    _refuse_unhonoured(body)
    controls = _typed(body.get("xrouter") or {}, dict, "xrouter", "an object")
    if not set(controls) <= CONTROLS:
        raise InvalidArgument("xrouter", f"unknown keys {sorted(set(controls) - CONTROLS)}; known: {sorted(CONTROLS)}")
    allowed = _typed(controls.get("allowed_models") or [], list, "xrouter.allowed_models", "a list of model ids")
    policy = _typed(controls.get("policy") or "", str, "xrouter.policy", "a string")
    if direct and (policy or allowed):
        raise InvalidArgument("xrouter.policy" if policy else "xrouter.allowed_models",
                              f"model {direct!r} is called directly; routing controls apply to model {MODEL!r}")
    max_cost = controls.get("max_cost_usd")
    temperature = body.get("temperature")
    request = RouteRequest(
        messages=_messages(body.get("messages")), cost_lambda=cost_lambda, max_tokens=_max_tokens(body),
        allowed_models=[direct] if direct else [_typed(m, str, "xrouter.allowed_models", "a list of model ids")
                                                for m in allowed],
        max_cost_usd=None if max_cost is None else _number(max_cost, "xrouter.max_cost_usd"),
        max_turns=_typed(controls.get("max_turns") or 0, int, "xrouter.max_turns", "an integer"),
        tenant=_typed(controls.get("tenant") or tenant_header, str, "xrouter.tenant", "a string"),
        policy=f"fixed:{direct}" if direct else policy,
        reference=_reference(controls.get("reference")),
        request_id=_typed(controls.get("request_id") or "", str, "xrouter.request_id", "a string"),
        temperature=None if temperature is None else _number(temperature, "temperature"),
        options=_options(body))
    stream = _typed(False if body.get("stream") is None else body["stream"], bool, "stream", "true or false")
    options = _typed(body.get("stream_options") or {}, dict, "stream_options", "an object")
    if set(options) - {"include_usage"}:
        raise Unsupported(f"stream_options.{sorted(set(options) - {'include_usage'})[0]}",
                          "is not supported (only include_usage is)")
    if options and not stream:
        raise InvalidArgument("stream_options", "is only allowed when stream is true")
    include_usage = _typed(options.get("include_usage", False), bool, "stream_options.include_usage", "true or false")
    return ChatRequest(request, stream, include_usage, body["model"])
