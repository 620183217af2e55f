"""Reading an OpenAI chat-completions body into a :class:`RouteRequest`: every field is either
honoured or refused with a 400 naming it, never dropped (a caller that set ``n: 3`` or a
``logit_bias`` and got one plain answer back would believe it had what it asked for).

The body is a pydantic model (:class:`ChatBody`, strict: JSON ``true`` is not ``1``, ``"2"`` is not
2); unknown fields are refused by ``extra="forbid"``, and common/validation.py names the field.

``model`` picks the routing: ``xrouter`` (the default λ), ``xrouter:<λ>``, ``xrouter-<preset>`` (a
named λ, :data:`PRESETS`), or a catalog model id (that model is called directly, through the router,
with metering: the router acts as a gateway). Router controls ride in an optional ``xrouter`` object.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from xrouter.common.bounds import shown
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import InvalidArgument, NotFound
from xrouter.common.validation import first_problem, invalid_argument
from xrouter.router.auth import named_tenant
from xrouter.router.core import RouteRequest
from xrouter.router.ports import ScoringReference

__all__ = ["MODEL", "PRESETS", "ChatBody", "ChatRequest", "Unsupported", "parse_chat_request"]

MODEL = "xrouter"
# Named cost preferences (λ, reward per dollar), from the bundled policy's evaluation in the README:
# λ=1 keeps its best accuracy, λ=100 gives up a little of it for a twelfth of the cost, λ=1000
# answers from the cheapest models that still get most questions right.
PRESETS = {"quality": 1.0, "balanced": 100.0, "cheap": 1000.0}
# Why an unknown field is refused, where there is more to say than "leave it out".
_WHY = {
    "n": "one answer per request (send n requests)", "store": "xrouter stores no completions",
    "metadata": "it tags stored completions, and xrouter stores none",
    "functions": "use tools", "function_call": "use tool_choice"}


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
    tokens_field: str = "max_tokens"  # which of max_tokens / max_completion_tokens the caller sent (errors name it)


def _is_default(value: Any, defaults: tuple[Any, ...]) -> bool:
    # JSON true is not the number 1, nor false 0: compare bools by identity.
    return any(value is d if isinstance(value, bool) or isinstance(d, bool) else value == d for d in defaults)


def _only(*defaults: Any, why: str = "xrouter does not honour other values") -> AfterValidator:
    """A field an SDK may send at its default value (or null); any other value is refused, not honoured."""
    def check(value: Any) -> Any:
        if value is not None and not _is_default(value, defaults):
            raise PydanticCustomError("unsupported", "only {default} is supported: {why}",
                                      {"default": shown(defaults[0]), "why": why})
        return value
    return AfterValidator(check)


def _text(value: Any) -> Any:
    """A message's content as text: a list of text parts is joined, as OpenAI reads it."""
    if isinstance(value, list) and value and all(isinstance(part, dict) for part in value):
        for part in value:
            if part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise PydanticCustomError("unsupported", "only text parts are supported, got {part}",
                                          {"part": shown(part)})
        return "".join(part["text"] for part in value)
    if not isinstance(value, str):
        raise PydanticCustomError("content", "must be a string or a list of text parts")
    return value


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value  # OpenAI's stop: one string or a list of them


class _Strict(BaseModel):
    # strict: a JSON string is not a number, true is not 1; forbid: no field is dropped unread.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Message(_Strict):
    """One chat message; names, earlier tool calls and tool results are not carried to the models yet."""

    role: str
    content: Annotated[str, BeforeValidator(_text)]


class Reference(_Strict):
    """``xrouter.reference``: what the answer is scored against online (reward/core.py checks the rest)."""

    task_type: str
    gold: str = ""
    dataset: str = ""
    prompt_id: str = ""


class Controls(_Strict):
    """The ``xrouter`` object: the router's own controls."""

    allowed_models: list[str] | None = None
    max_cost_usd: float | None = None
    max_turns: int | None = None
    policy: str | None = None
    tenant: str | None = None
    reference: Reference | None = None
    request_id: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatBody(_Strict):
    """The chat-completions body; a field that is not here is refused (see :func:`_refused`)."""

    model: str
    messages: list[Message]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Annotated[list[str] | None, BeforeValidator(_listed)] = None
    seed: int | None = None
    user: str | None = None
    tools: Any = None  # passed to the model as JSON: its backend is the judge of its shape
    tool_choice: Any = None
    response_format: Any = None
    xrouter: Controls | None = None
    n: Annotated[Any, _only(1, why=_WHY["n"])] = None
    logprobs: Annotated[Any, _only(False)] = None
    presence_penalty: Annotated[Any, _only(0, 0.0)] = None
    frequency_penalty: Annotated[Any, _only(0, 0.0)] = None
    logit_bias: Annotated[Any, _only({})] = None
    parallel_tool_calls: Annotated[Any, _only(True)] = None
    store: Annotated[Any, _only(False, why=_WHY["store"])] = None
    metadata: Annotated[Any, _only({}, why=_WHY["metadata"])] = None
    service_tier: Annotated[Any, _only("auto", "default")] = None
    modalities: Annotated[Any, _only(["text"])] = None


def _refused(error: ValidationError) -> InvalidArgument:
    """The body's first problem as the 400 to send: ``unsupported_parameter`` for a field xrouter does
    not honour (an unknown field, a value other than the default), ``invalid_value`` for a bad value."""
    problem = first_problem(error)
    loc, field = problem.loc, problem.field
    if problem.kind == "extra_forbidden":
        if loc[0] == "xrouter" and len(loc) == 2:
            return InvalidArgument("xrouter", f"unknown key {shown(loc[1])}; known: {sorted(Controls.model_fields)}")
        if loc[:2] == ("xrouter", "reference"):
            return InvalidArgument("xrouter.reference", f"unknown key {shown(loc[2])}; known: "
                                   f"{sorted(Reference.model_fields)}")
        if len(loc) == 1:
            return Unsupported(field, _WHY.get(field, "is not supported by xrouter; leave it out"))
        if loc[0] == "messages":
            return Unsupported(field, "is not supported (messages carry role and content only)")
        return Unsupported(field, "is not supported (only include_usage is)")
    if problem.kind == "missing" and loc[:2] == ("xrouter", "reference"):
        return InvalidArgument("xrouter.reference", f"needs a string {loc[2]}")
    if problem.kind == "unsupported":
        return Unsupported(field, problem.message)
    return invalid_argument(error)


def _json_option(value: Any, field: str) -> str:
    if field == "response_format" and value == {"type": "text"}:
        return ""  # plain text is what every answer is: nothing to ask of the model (and any policy may serve it)
    return "" if value is None else json.dumps(value)


def _options(body: ChatBody) -> CallOptions:
    return CallOptions(
        top_p=body.top_p, stop=tuple(body.stop or ()), seed=body.seed, user=body.user or "",
        tools=_json_option(body.tools, "tools"), tool_choice=_json_option(body.tool_choice, "tool_choice"),
        response_format=_json_option(body.response_format, "response_format"))


def _max_tokens(body: ChatBody) -> int:
    given = {v for v in (body.max_completion_tokens, body.max_tokens) if v is not None}
    if len(given) > 1:
        raise InvalidArgument("max_tokens", "max_tokens and max_completion_tokens differ; send one of them")
    return next(iter(given), 0)


def _model(model: str, catalog: Collection[str]) -> tuple[float | None, str]:
    """``model`` → (λ or None for the default, the catalog model to call directly or "")."""
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


def parse_chat_request(raw: Any, tenant_header: str, catalog: Collection[str] = ()) -> ChatRequest:
    """An OpenAI chat body → the route request; strict about types, refuses what it does not honour."""
    if not isinstance(raw, dict):
        raise InvalidArgument("body", f"must be a JSON object, got {shown(raw)}")
    try:
        body = ChatBody.model_validate(raw)
    except ValidationError as error:
        raise _refused(error) from None
    cost_lambda, direct = _model(body.model, catalog)
    controls = body.xrouter or Controls()
    if direct and (controls.policy or controls.allowed_models):
        raise InvalidArgument("xrouter.policy" if controls.policy else "xrouter.allowed_models",
                              f"model {direct!r} is called directly; routing controls apply to model {MODEL!r}")
    for name in ("request_id", "tenant", "policy"):  # "" would have meant "not given": refused, not dropped
        if getattr(controls, name) == "":
            raise InvalidArgument(f"xrouter.{name}", "must not be empty; leave it out for the default")
    if controls.max_turns is not None and controls.max_turns < 1:  # 0 would have meant the default turns
        raise InvalidArgument("xrouter.max_turns", f"must be at least 1, got {controls.max_turns}; leave it out "
                              "for the default")
    reference = controls.reference
    request = RouteRequest(
        # "developer" is OpenAI's newer name for the system role.
        messages=[("system" if m.role == "developer" else m.role, m.content) for m in body.messages],
        cost_lambda=cost_lambda, max_tokens=_max_tokens(body),
        allowed_models=[direct] if direct else list(controls.allowed_models or ()),
        max_cost_usd=controls.max_cost_usd, max_turns=controls.max_turns or 0,
        tenant=named_tenant(controls.tenant or "", tenant_header, "xrouter.tenant", "X-Tenant"), policy=f"fixed:{direct}" if direct else controls.policy or "",
        reference=None if reference is None else ScoringReference(**reference.model_dump()),
        request_id=controls.request_id or "", temperature=body.temperature, options=_options(body))
    stream = bool(body.stream)
    options = body.stream_options
    if options is not None and options.model_fields_set and not stream:
        raise InvalidArgument("stream_options", "is only allowed when stream is true")
    tokens_field = "max_completion_tokens" if body.max_tokens is None and body.max_completion_tokens is not None \
        else "max_tokens"
    return ChatRequest(request, stream, options is not None and options.include_usage, body.model, tokens_field)
