"""The OpenAI-compatible HTTP face: ``POST /v1/chat/completions`` (plain and SSE streaming),
``GET /v1/models`` and ``POST /v1/feedback`` (router/feedback.py), over the same core as the gRPC face. ``model`` is ``xrouter`` or
``xrouter:<lambda>``; router controls ride in an optional ``xrouter`` object of the body.
Callers authenticate with ``Authorization: Bearer <key>`` (router/auth.py); Prometheus metrics are
not served here (they carry every tenant's spend) but on the metrics port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
import uuid
from typing import Any

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry.propagate import extract

from xrouter.adapters.catalog import micro_to_usd
from xrouter.common.bounds import shown
from xrouter.common.errors import InvalidArgument, NotFound, XRouterError
from xrouter.router.auth import Caller, RouterAuth, key_from_authorization
from xrouter.router.core import RouteRequest, RouteResult, RouterCore
from xrouter.router.episode import AnswerDelta, Event
from xrouter.router.feedback import FeedbackDesk, parse_body
from xrouter.router.ports import ScoringReference

log = logging.getLogger(__name__)
MODEL = "xrouter"
_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "ALREADY_EXISTS": 409,
           "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_STATUS["UNAUTHENTICATED"] = 401  # a missing, unknown or revoked API key (router/auth.py)
_DONE = object()
_CONTROLS = {"allowed_models", "max_cost_usd", "max_turns", "policy", "tenant", "reference", "request_id"}


def _error(status: int, message: str, kind: str, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": None}},
                             status=status)


def _domain_error(error: XRouterError) -> web.Response:
    status = _STATUS.get(error.code.name, 500)
    kind = "invalid_request_error" if status < 500 else "server_error"
    response = _error(status, error.message, kind, getattr(error, "field", None))
    if status == 401:  # RFC 6750: say which scheme to use
        response.headers["WWW-Authenticate"] = 'Bearer realm="xrouter"'
    return response


def _typed(value: Any, kind: type | tuple[type, ...], field: str, what: str) -> Any:
    # bool is an int in Python; JSON true is never a number here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidArgument(field, f"must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(field, f"must be {what}, got {value!r}")
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


def parse_chat_request(body: Any, tenant_header: str) -> tuple[RouteRequest, bool, bool]:
    """OpenAI chat body → (route request, stream?, include usage in stream?); strict about types."""
    _typed(body, dict, "body", "a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not (model == MODEL or model.startswith(MODEL + ":")):
        raise NotFound(f"model: {shown(model)} does not exist; use {MODEL!r} or '{MODEL}:<lambda>'")
    cost_lambda = None
    if model != MODEL:
        try:
            cost_lambda = float(model.split(":", 1)[1])
        except ValueError:
            raise InvalidArgument("model", f"{shown(model)}: the part after 'xrouter:' must be a number") from None
        if math.isnan(cost_lambda) or math.isinf(cost_lambda):
            raise InvalidArgument("model", f"{shown(model)}: lambda must be a finite number")
    messages = _typed(body.get("messages"), list, "messages", "a list of {role, content} objects")
    parsed = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise InvalidArgument(f"messages[{number}]", "must be an object with string role and content")
        parsed.append((str(message.get("role")), message["content"]))
    max_tokens = _typed(body.get("max_completion_tokens", body.get("max_tokens")) or 0, int, "max_tokens",
                        "an integer")
    controls = _typed(body.get("xrouter") or {}, dict, "xrouter", "an object")
    if not set(controls) <= _CONTROLS:
        raise InvalidArgument("xrouter", f"unknown keys {sorted(set(controls) - _CONTROLS)}; known: {sorted(_CONTROLS)}")
    allowed = _typed(controls.get("allowed_models") or [], list, "xrouter.allowed_models", "a list of model ids")
    max_cost = controls.get("max_cost_usd")
    request = RouteRequest(
        messages=parsed, cost_lambda=cost_lambda, max_tokens=max_tokens,
        allowed_models=[_typed(m, str, "xrouter.allowed_models", "a list of model ids") for m in allowed],
        max_cost_usd=None if max_cost is None else _number(max_cost, "xrouter.max_cost_usd"),
        max_turns=_typed(controls.get("max_turns") or 0, int, "xrouter.max_turns", "an integer"),
        tenant=_typed(controls.get("tenant") or tenant_header, str, "xrouter.tenant", "a string"),
        policy=_typed(controls.get("policy") or "", str, "xrouter.policy", "a string"),
        reference=_reference(controls.get("reference")),
        request_id=_typed(controls.get("request_id") or "", str, "xrouter.request_id", "a string"))
    stream = _typed(body.get("stream", False), bool, "stream", "true or false")
    options = _typed(body.get("stream_options") or {}, dict, "stream_options", "an object")
    include_usage = _typed(options.get("include_usage", False), bool, "stream_options.include_usage", "true or false")
    return request, stream, include_usage


def _usage(result: RouteResult) -> dict[str, int]:
    prompt = sum(c.input_tokens for c in result.calls)
    completion = sum(c.output_tokens for c in result.calls)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _xrouter_block(result: RouteResult) -> dict[str, Any]:
    return {
        "request_id": result.request_id, "trace_id": result.trace_id, "strategy": result.strategy.name.lower(),
        "turns_used": result.turns_used, "turn_limit_reached": result.turn_limit_reached,
        "policy": {"kind": result.policy_kind, "version": result.policy_version},
        "total_cost_usd": micro_to_usd(result.total_cost_micro_usd), "selected_call": result.selected_call,
        "score": result.score, "reward": result.reward, "replayed": result.replayed,
        "calls": [{"index": c.index, "turn": c.turn, "model": c.model, "status": c.status.name.lower(),
                   "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                   "tokens_estimated": c.tokens_estimated, "cost_usd": micro_to_usd(c.cost_micro_usd),
                   "latency_ms": round(c.latency_ms, 3), "error": c.error} for c in result.calls],
    }


class ChatCompletions:
    """aiohttp handlers over a :class:`RouterCore`."""

    def __init__(self, core: RouterCore, auth: RouterAuth) -> None:
        self._core = core
        self._auth = auth
        self._feedback = FeedbackDesk(core.meter, core.limits.request_timeout_s)

    async def _caller(self, request: web.Request) -> Caller:
        return await self._auth.caller(key_from_authorization(request.headers.get("Authorization")))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        # Continue the caller's W3C trace (traceparent header), as the gRPC face does.
        # Header names are case-insensitive: hand the propagator lower-cased keys.
        token = otel_context.attach(extract({k.lower(): v for k, v in request.headers.items()}))
        try:
            return await self._completions(request)
        finally:
            otel_context.detach(token)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:  # before the body is even read: strangers get nothing parsed
            caller = await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            return _error(400, f"body: malformed JSON ({error})", "invalid_request_error", "body")
        try:
            route_request, stream, include_usage = parse_chat_request(body, request.headers.get("X-Tenant", ""))
            # The key decides the tenant; a named one (body or X-Tenant) must be its own, or the key an admin's.
            route_request = dataclasses.replace(route_request,
                                                tenant=self._auth.tenant_for(caller, route_request.tenant))
            if stream:
                return await self._stream(request, route_request, include_usage, body["model"])
            result = await self._core.route(route_request)
        except XRouterError as error:
            return _domain_error(error)
        return web.json_response({
            "id": f"chatcmpl-{result.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "usage": _usage(result), "xrouter": _xrouter_block(result),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                         "finish_reason": _finish_reason(result), "logprobs": None}]})

    async def _stream(self, http: web.Request, request: RouteRequest, include_usage: bool,
                      model: str) -> web.StreamResponse:
        """SSE with the answer's text as the backend generates it (see RouterCore.route's ``stream``).
        The response starts with the first piece of the answer: a refusal or a failure before it is
        a plain JSON error with its HTTP status; a failure after it is a terminal ``error`` event."""
        request = dataclasses.replace(request, request_id=request.request_id or uuid.uuid4().hex)
        sse = _Sse(http, {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion.chunk",
                          "created": int(time.time()), "model": model})
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def on_event(event: Event) -> None:
            if isinstance(event, AnswerDelta) and event.text:
                queue.put_nowait(event.text)

        async def run() -> RouteResult:
            try:
                return await self._core.route(request, on_event=on_event, stream=True)
            finally:
                queue.put_nowait(_DONE)

        task = asyncio.create_task(run())
        try:
            while (item := await queue.get()) is not _DONE:
                await sse.send({"choices": [{"index": 0, "delta": {"content": item}, "finish_reason": None}]})
            try:
                result = await task
            except XRouterError as error:
                if not sse.started:
                    return _domain_error(error)
                await sse.fail(error)
                return sse.response
            await sse.send({"choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(result)}],
                            "xrouter": _xrouter_block(result)})
            if include_usage:
                await sse.send({"choices": [], "usage": _usage(result)})
            await sse.end()
            return sse.response
        except ConnectionResetError:  # the client went away mid-stream: nobody is left to answer
            return sse.response
        finally:
            task.cancel()  # the client went away (a failed write, or aiohttp cancelled us): stop the backend

    async def feedback(self, request: web.Request) -> web.Response:
        """A verdict on a settled request's answer; authenticated (and the tenant decided) as for chat."""
        try:
            caller = await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            return _error(400, f"body: malformed JSON ({error})", "invalid_request_error", "body")
        try:
            parsed = parse_body(body, request.headers.get("X-Tenant", ""))
            parsed = dataclasses.replace(parsed, tenant=self._auth.tenant_for(caller, parsed.tenant))
            result = await self._feedback.submit(parsed)
        except XRouterError as error:
            return _domain_error(error)
        return web.json_response({"object": "xrouter.feedback", "request_id": result.request_id,
                                  "score": result.score, "duplicate": result.duplicate})

    async def models(self, request: web.Request) -> web.Response:
        try:
            await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        return web.json_response({"object": "list", "data": [
            {"id": MODEL, "object": "model", "created": 0, "owned_by": "xrouter"}]})


class _Sse:
    """An OpenAI-style event stream, opened on its first event (so that an earlier error can still be
    a plain HTTP error)."""

    def __init__(self, http: web.Request, base: dict[str, Any]) -> None:
        self._http, self._base = http, base
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        self.started = False

    async def send(self, payload: dict[str, Any]) -> None:
        if not self.started:
            self.started = True
            await self.response.prepare(self._http)
            await self._write({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
        await self._write(payload)

    async def _write(self, payload: dict[str, Any]) -> None:
        await self.response.write(f"data: {json.dumps({**self._base, **payload})}\n\n".encode())

    async def fail(self, error: XRouterError) -> None:
        """The terminal error event (the shape OpenAI sends mid-stream; its client raises APIError on
        it), and no ``[DONE]``: the answer is incomplete."""
        kind = "invalid_request_error" if _STATUS.get(error.code.name, 500) < 500 else "server_error"
        event = {"error": {"message": error.message, "type": kind, "param": getattr(error, "field", None),
                           "code": error.code.name.lower()}}
        await self.response.write(f"data: {json.dumps(event)}\n\n".encode())
        await self.response.write_eof()

    async def end(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()


def _finish_reason(result: RouteResult) -> str:
    """The backend's finish reason for the returned call ("length" when it was cut at max_tokens)."""
    chosen = next((c for c in result.calls if c.index == result.selected_call), None)
    return (chosen.finish_reason if chosen is not None else "") or "stop"


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (unknown path 404, wrong method 405, body over the limit 413) and
    uncaught exceptions come back in OpenAI's error shape, as the handlers' errors do, not as
    aiohttp's plain text (OpenAI clients parse the JSON body for the message)."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _error(error.status, error.text or error.reason,
                          "invalid_request_error" if error.status < 500 else "server_error",
                          "body" if error.status == 413 else None)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except Exception as error:  # noqa: BLE001 - logged here, answered as JSON without internals
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details",
                      "server_error")


def make_app(core: RouterCore, auth: RouterAuth) -> web.Application:
    handlers = ChatCompletions(core, auth)
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[_json_errors])
    app.router.add_post("/v1/chat/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_post("/v1/feedback", handlers.feedback)
    app.router.add_get("/healthz", _healthz)
    return app


async def start_http(core: RouterCore, host: str, port: int, auth: RouterAuth) -> web.AppRunner:
    """Serve the HTTP face on ``host:port`` (0: a free port; read it from the runner's addresses)."""
    # A client that disconnects cancels its handler, and so the episode and the backend call in
    # flight (what they consumed is still recorded); aiohttp would otherwise let them run to the end.
    runner = web.AppRunner(make_app(core, auth), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


__all__ = ["make_app", "start_http", "bound_port", "parse_chat_request"]
