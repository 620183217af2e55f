"""The OpenAI-compatible HTTP face: ``POST /v1/chat/completions`` (plain and SSE streaming),
``GET /v1/models`` and ``POST /v1/feedback`` (router/feedback.py), over the same core as the gRPC face.
The chat body is read by openai_request.py (``model``: ``xrouter``, ``xrouter:<lambda>``,
``xrouter-<preset>`` or a catalog model; router controls in an optional ``xrouter`` object). Every
error is OpenAI's shape with a string ``code``.
Callers authenticate with ``Authorization: Bearer <key>`` (router/auth.py); Prometheus metrics are
not served here (they carry every tenant's spend) but on the metrics port."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from typing import Any

from aiohttp import web

from xrouter.adapters.catalog import micro_to_usd
from xrouter.common.errors import ResourceExhausted, XRouterError
from xrouter.common.http_tracing import server_middleware
from xrouter.router.auth import Caller, RouterAuth, key_from_authorization
from xrouter.router.core import RouteRequest, RouteResult, RouterCore
from xrouter.router.episode import AnswerDelta, Event
from xrouter.router.feedback import FeedbackDesk, parse_body
from xrouter.router.openai_request import MODEL, PRESETS, ChatRequest, parse_chat_request

log = logging.getLogger(__name__)
_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "ALREADY_EXISTS": 409,
           "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
_STATUS["UNAUTHENTICATED"] = 401  # a missing, unknown or revoked API key (router/auth.py)
_DONE = object()
# OpenAI's ``code`` for each status (clients branch on it; OpenAI's own where it has one).
_CODES = {400: "invalid_value", 401: "invalid_api_key", 403: "permission_denied", 404: "not_found",
          405: "method_not_allowed", 409: "conflict", 413: "request_too_large", 429: "insufficient_quota",
          500: "internal_error", 503: "service_unavailable", 504: "timeout"}


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": param,
                                        "code": code or _CODES.get(status, "error")}}, status=status)


def _code(error: XRouterError, status: int) -> str:
    if getattr(error, "openai_code", None):  # a field refused as unsupported (openai_request.py)
        return str(error.openai_code)  # type: ignore[attr-defined]
    if status == 404 and getattr(error, "field", None) == "model":
        return "model_not_found"
    if isinstance(error, ResourceExhausted) and error.subject.startswith("model:"):
        return "rate_limit_exceeded"  # the backend's rate limit, not the tenant's budget
    return _CODES.get(status, "error")


# The core names a field as RouteRequest does; in a chat body these live in the ``xrouter`` object.
# (Not tenant: it may come from the X-Tenant header as well.)
_CONTROLS = frozenset({"allowed_models", "max_cost_usd", "max_turns", "policy", "reference", "request_id"})


def chat_param(field: str | None, tokens_field: str = "max_tokens") -> str | None:
    """The chat body's path of a field the core named (``max_cost_usd`` → ``xrouter.max_cost_usd``;
    ``cost_lambda`` → ``model``, which carries λ as ``xrouter:<λ>``; ``max_tokens`` → whichever of
    max_tokens and max_completion_tokens the caller sent)."""
    if field == "cost_lambda":
        return "model"
    if field == "max_tokens":
        return tokens_field
    if field is None or re.split(r"[.\[]", field, maxsplit=1)[0] not in _CONTROLS:
        return field
    return f"xrouter.{field}"


def _named(error: XRouterError, chat: bool, tokens_field: str = "max_tokens") -> tuple[str, str | None]:
    """The error's message and ``param``, both naming the field by its path in a chat body."""
    field = getattr(error, "field", None)
    param = chat_param(field, tokens_field) if chat else field
    message = error.message
    if field and param != field and message.startswith(f"{field}: "):
        message = f"{param}: {message[len(field) + 2:]}"
    return message, param


def _domain_error(error: XRouterError, chat: bool = False, tokens_field: str = "max_tokens") -> web.Response:
    status = _STATUS.get(error.code.name, 500)
    message, param = _named(error, chat, tokens_field)
    response = _error(status, message, param, _code(error, status))
    if status == 401:  # RFC 6750: say which scheme to use
        response.headers["WWW-Authenticate"] = 'Bearer realm="xrouter"'
    retry = getattr(error, "retry_after_s", None)
    if retry is not None:  # when a budget resets: OpenAI clients wait this long before retrying
        response.headers["Retry-After"] = str(max(1, round(retry)))
    return response


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
        "calls": [{"index": c.index, "turn": c.turn, "model": c.model, "role": c.role, "status": c.status.name.lower(),
                   "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
                   "tokens_estimated": c.tokens_estimated, "cost_usd": micro_to_usd(c.cost_micro_usd),
                   "latency_ms": round(c.latency_ms, 3), "error": c.error} for c in result.calls],
    }


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or the 400 that says why there is none. JSON is UTF-8 (RFC 8259):
    the bytes are decoded as such whatever charset the Content-Type names (an unknown one was a
    500), a body its Content-Encoding cannot undo is refused, and so is a string holding an
    unpaired UTF-16 surrogate ("\\ud800" is valid JSON, but no UTF-8 text, prompt or ledger row can
    hold it: it was a 500 from the tokenizer or the ledger, after the request was admitted)."""
    try:
        raw = await request.read()
    except web.HTTPException:
        raise  # over the size limit: 413, shaped by _json_errors
    except Exception as error:  # noqa: BLE001 - aiohttp's decompression errors have no common base
        return _error(400, f"body: cannot be decoded under Content-Encoding "
                      f"{request.headers.get('Content-Encoding', '')!r} ({type(error).__name__})", "body", "invalid_json")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        return _error(400, f"body: malformed JSON ({error})", "body", "invalid_json")
    if not _SURROGATE_ESCAPE.search(raw):  # raw UTF-8 cannot hold one: only an escape can (the usual case)
        return body
    try:
        where = _unpaired_surrogate(body)
    except RecursionError:  # parsed, but too deep to walk: no request field nests this deep
        return _error(400, "body: nested too deeply", "body", "invalid_json")
    if where is not None:
        return _error(400, f"{where}: holds an unpaired UTF-16 surrogate (an escape such as \\ud800 without its "
                      "pair); strings must be valid Unicode", where, "invalid_value")
    return body


def _unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string or key holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unpaired_surrogate(key, path or "body") or _unpaired_surrogate(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    if isinstance(value, list):
        for number, item in enumerate(value):
            found = _unpaired_surrogate(item, f"{path}[{number}]")
            if found is not None:
                return found
    return None


class ChatCompletions:
    """aiohttp handlers over a :class:`RouterCore`."""

    def __init__(self, core: RouterCore, auth: RouterAuth) -> None:
        self._core = core
        self._auth = auth
        self._feedback = FeedbackDesk(core.meter, core.limits.request_timeout_s)

    async def _caller(self, request: web.Request) -> Caller:
        return await self._auth.caller(key_from_authorization(request.headers.get("Authorization")))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        # The caller's W3C trace (traceparent) is continued by the server span's middleware.
        try:  # before the body is even read: strangers get nothing parsed
            caller = await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        tokens_field = "max_tokens"
        try:
            chat = parse_chat_request(body, request.headers.get("X-Tenant", ""), self._core.catalog)
            tokens_field = chat.tokens_field
            # The key decides the tenant; a named one (body or X-Tenant) must be its own, or the key an admin's.
            route_request = dataclasses.replace(chat.route, tenant=self._auth.tenant_for(caller, chat.route.tenant))
            if chat.stream:
                return await self._stream(request, route_request, chat)
            result = await self._core.route(route_request)
        except XRouterError as error:
            return _domain_error(error, chat=True, tokens_field=tokens_field)
        tool_calls = _tool_calls(result)
        message: dict[str, Any] = {"role": "assistant", "content": result.answer if result.answer or not tool_calls
                                   else None, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        return web.json_response({
            "id": f"chatcmpl-{result.request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": chat.model, "usage": _usage(result), "xrouter": _xrouter_block(result),
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(result),
                         "logprobs": None}]})

    async def _stream(self, http: web.Request, request: RouteRequest, chat: ChatRequest) -> web.StreamResponse:
        """SSE with the answer's text as the backend generates it (see RouterCore.route's ``stream``).
        The response starts with the first piece of the answer: a refusal or a failure before it is
        a plain JSON error with its HTTP status; a failure after it is a terminal ``error`` event."""
        if not request.request_id:  # the stream's id before the route starts; still the router's own
            request = dataclasses.replace(request, request_id=uuid.uuid4().hex, request_id_generated=True)
        sse = _Sse(http, {"id": f"chatcmpl-{request.request_id}", "object": "chat.completion.chunk",
                          "created": int(time.time()), "model": chat.model})
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
                    return _domain_error(error, chat=True, tokens_field=chat.tokens_field)
                await sse.fail(error, chat.tokens_field)
                return sse.response
            tool_calls = _tool_calls(result)
            if tool_calls:  # whole, in one delta (OpenAI's clients join pieces; one piece is a valid stream)
                await sse.send({"choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
                    {"index": number, **call} for number, call in enumerate(tool_calls)]}}]})
            await sse.send({"choices": [{"index": 0, "delta": {}, "finish_reason": _finish_reason(result)}],
                            "xrouter": _xrouter_block(result)})
            if chat.include_usage:
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
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            parsed = parse_body(body, request.headers.get("X-Tenant", ""))
            parsed = dataclasses.replace(parsed, tenant=self._auth.tenant_for(caller, parsed.tenant))
            result = await self._feedback.submit(parsed)
        except XRouterError as error:
            return _domain_error(error)
        return web.json_response({"object": "xrouter.feedback", "request_id": result.request_id,
                                  "score": result.score, "duplicate": result.duplicate})

    def _models(self) -> dict[str, dict[str, Any]]:
        """The router, its named cost presets, then every catalog model (each callable directly)."""
        owners = {MODEL: "xrouter", **{f"{MODEL}-{preset}": "xrouter" for preset in PRESETS},
                  **{model: "xrouter-catalog" for model in self._core.catalog}}
        return {model: {"id": model, "object": "model", "created": 0, "owned_by": owner}
                for model, owner in owners.items()}

    async def models(self, request: web.Request) -> web.Response:
        try:
            await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        return web.json_response({"object": "list", "data": list(self._models().values())})

    async def model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{id}`` (ids may hold slashes: ``mistralai/mistral-7b-chat``)."""
        try:
            await self._caller(request)
        except XRouterError as error:
            return _domain_error(error)
        found = self._models().get(request.match_info["model"])
        if found is None:
            return _error(404, f"model: {request.match_info['model'][:64]!r} does not exist", "model",
                          "model_not_found")
        return web.json_response(found)


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

    async def fail(self, error: XRouterError, tokens_field: str = "max_tokens") -> None:
        """The terminal error event (the shape OpenAI sends mid-stream; its client raises APIError on
        it), and no ``[DONE]``: the answer is incomplete."""
        status = _STATUS.get(error.code.name, 500)
        message, param = _named(error, chat=True, tokens_field=tokens_field)
        event = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                           "param": param, "code": _code(error, status)}}
        await self.response.write(f"data: {json.dumps(event)}\n\n".encode())
        await self.response.write_eof()

    async def end(self) -> None:
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()


def _finish_reason(result: RouteResult) -> str:
    """The backend's finish reason for the returned call ("length" when it was cut at max_tokens,
    "tool_calls" when the model called tools); "stop" for an answer the policy wrote itself."""
    chosen = next((c for c in result.calls if c.index == result.selected_call), None)
    return (chosen.finish_reason if chosen is not None else "") or "stop"


def _tool_calls(result: RouteResult) -> list[dict[str, Any]]:
    """The returned call's tool calls, as its backend wrote them (only a one-answer policy may be
    asked for tools, so the returned call is the one that answered the tools it was given)."""
    chosen = next((c for c in result.calls if c.index == result.selected_call), None)
    return json.loads(chosen.tool_calls) if chosen is not None and chosen.tool_calls else []


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
        code = "unknown_url" if isinstance(error, web.HTTPNotFound) else None
        response = _error(error.status, error.text or error.reason, "body" if error.status == 413 else None, code)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except Exception as error:  # noqa: BLE001 - logged here, answered as JSON without internals
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return _error(500, f"internal error ({type(error).__name__}); the server log has the details")


def make_app(core: RouterCore, auth: RouterAuth) -> web.Application:
    handlers = ChatCompletions(core, auth)
    # The server span outermost: it records the status the client gets once _json_errors has mapped it.
    app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[server_middleware(core.tracer),
                                                                        _json_errors])
    app.router.add_post("/v1/chat/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_post("/v1/feedback", handlers.feedback)
    app.router.add_get("/v1/models/{model:.+}", handlers.model)
    app.router.add_get("/healthz", _healthz)
    return app


async def start_http(core: RouterCore, host: str, port: int, auth: RouterAuth,
                     worker: int | None = None) -> web.AppRunner:
    """Serve the HTTP face on ``host:port`` (0: a free port; read it from the runner's addresses).
    ``worker``: this is one of several router processes sharing the port (router/processes.py);
    each response names it in the X-Xrouter-Router-Process header."""
    app = make_app(core, auth)
    if worker is not None:
        async def name_worker(request: web.Request, response: web.StreamResponse) -> None:
            response.headers["X-Xrouter-Router-Process"] = str(worker)
        app.on_response_prepare.append(name_worker)
    # A client that disconnects cancels its handler, and so the episode and the backend call in
    # flight (what they consumed is still recorded); aiohttp would otherwise let them run to the end.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=worker is not None).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


__all__ = ["make_app", "start_http", "bound_port"]
