"""OpenAI-compatible chat completions over HTTP (OpenAI, Together, vLLM's server, KServe's OpenAI
route), plain and streamed (server-sent events), with aiohttp.

Usage comes from the response; only when the backend reports none are the counts estimated (and
marked so). HTTP error bodies become domain errors: 429 and 500/502/503/504 and connection errors
are retryable (with the backend's Retry-After), the rest are not.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.catalog import ModelSpec
from xrouter.adapters.resilience import BackendError
from xrouter.adapters.token_count import counter_for, estimate_tokens
from xrouter.common.call_options import SAMPLING, STRUCTURED, CallOptions
from xrouter.common.http_tracing import client_trace_config
from xrouter.common.bounds import MAX_CALL_TOKENS
from xrouter.common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    XRouterError,
)

__all__ = ["OpenAIBackend", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class OpenAIBackend:
    """Calls ``{spec.endpoint}/chat/completions``; one connection pool for every model it serves.

    ``api_keys`` maps a catalog ``credentials_env`` name to its value (read once at start-up).
    Every generation option is the protocol's own field: all are passed through as written."""

    options = frozenset((*SAMPLING, *STRUCTURED))

    def __init__(self, api_keys: Mapping[str, str] | None = None, read_timeout_s: float | None = None) -> None:
        self._api_keys = dict(api_keys or {})
        # A silent backend is caught by the call's deadline; this optional idle limit catches one earlier.
        self._read_timeout_s = read_timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._tracer: Tracer = trace.get_tracer("xrouter.adapters.openai")

    def trace_with(self, provider: TracerProvider) -> None:
        """Each HTTP request becomes a CLIENT span of ``provider`` carrying ``traceparent`` to the backend."""
        self._tracer = provider.get_tracer("xrouter.adapters.openai")

    @classmethod
    def from_environment(cls, specs: Sequence[ModelSpec], environ: Mapping[str, str] | None = None) -> OpenAIBackend:
        """Read each model's key from the variable its catalog entry names; a missing one stops start-up."""
        source = os.environ if environ is None else environ
        keys = {}
        for spec in specs:
            if spec.credentials_env:
                if spec.credentials_env not in source:
                    raise ValueError(f"model {spec.id!r}: credentials_env {spec.credentials_env} is not set")
                keys[spec.credentials_env] = source[spec.credentials_env]
        return cls(keys)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=self._read_timeout_s),
                connector=aiohttp.TCPConnector(limit=0), trace_configs=[client_trace_config(lambda: self._tracer)])
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _request(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                 max_tokens: int, stream: bool, options: CallOptions) -> tuple[str, dict[str, Any], dict[str, str]]:
        body: dict[str, Any] = {"model": spec.served_name, "temperature": temperature,
                                "messages": [{"role": role, "content": content} for role, content in messages]}
        if max_tokens:
            body["max_tokens"] = max_tokens
        body.update(_option_fields(options))
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        headers = {"Content-Type": "application/json"}
        if spec.credentials_env:
            headers["Authorization"] = f"Bearer {self._api_keys[spec.credentials_env]}"
        return spec.endpoint.rstrip("/") + "/chat/completions", body, headers

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int, options: CallOptions = CallOptions()) -> BackendReply:
        """One non-streamed chat completion."""
        url, body, headers = self._request(spec, messages, temperature, max_tokens, False, options)
        async with _connect(spec, self._client().post(url, json=body, headers=headers)) as response:
            raw = await _read(spec, response)
            if response.status >= 400:
                raise http_error(spec, response.status, raw, response.headers)
        document = _json(spec, raw, response.status)
        try:
            choice = document["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason") or "stop"
            tool_calls = choice["message"].get("tool_calls") or []
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(Unavailable(f"model {spec.id!r}: reply has no choices[0].message: "
                                           f"{raw[:200]!r}")) from None
        return _reply(spec, messages, text, finish, document.get("usage"), tool_calls, document.get("model"))

    async def stream(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int, options: CallOptions = CallOptions()) -> AsyncIterator[str | BackendReply]:
        """A streamed chat completion: text deltas as they arrive, then the complete reply (with the
        tool calls, assembled from their streamed pieces).

        A stream that ends before ``data: [DONE]`` is truncated: it fails, and the text it carried is
        counted (estimated) as consumed."""
        url, body, headers = self._request(spec, messages, temperature, max_tokens, True, options)
        parts: list[str] = []
        tools: dict[int, dict[str, Any]] = {}
        finish, usage, done, served = "", None, False, None
        async with _connect(spec, self._client().post(url, json=body, headers=headers)) as response:
            if response.status >= 400:
                raise http_error(spec, response.status, await _read(spec, response), response.headers)
            try:
                async for data in _events(response):
                    if data == "[DONE]":
                        done = True
                        break
                    event = _json(spec, data.encode(), response.status, partial=parts, messages=messages)
                    if "error" in event:
                        raise _error_from_body(spec, 200, event, {}, partial=parts, messages=messages)
                    usage = event.get("usage") or usage
                    served = event.get("model") or served
                    for choice in event.get("choices") or ():
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            parts.append(delta)
                            yield delta
                        _gather_tool_calls(tools, (choice.get("delta") or {}).get("tool_calls"))
                        finish = choice.get("finish_reason") or finish
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.IncompleteReadError) as error:
                raise _truncated(spec, messages, parts, f"{type(error).__name__}: {error}") from None
        if not done:
            raise _truncated(spec, messages, parts, "the connection closed before data: [DONE]")
        yield _reply(spec, messages, "".join(parts), finish or "stop", usage, [tools[n] for n in sorted(tools)],
                     served)


def _option_fields(options: CallOptions) -> dict[str, Any]:
    """The request fields for the options set (the JSON ones exactly as the caller wrote them)."""
    fields: dict[str, Any] = {}
    if options.top_p is not None:
        fields["top_p"] = options.top_p
    if options.stop:
        fields["stop"] = list(options.stop)
    if options.seed is not None:
        fields["seed"] = options.seed
    if options.user:
        fields["user"] = options.user
    for name in STRUCTURED:
        if getattr(options, name):
            fields[name] = json.loads(getattr(options, name))
    return fields


def _gather_tool_calls(tools: dict[int, dict[str, Any]], pieces: Any) -> None:
    """Streamed tool calls come in pieces by index: the id, type and name once, the arguments as
    text fragments to concatenate."""
    for piece in pieces if isinstance(pieces, list) else ():
        if not isinstance(piece, dict):
            continue
        call = tools.setdefault(int(piece.get("index") or 0),
                                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = piece.get("id") or call["id"]
        call["type"] = piece.get("type") or call["type"]
        function = piece.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def _connect(spec: ModelSpec, request: Any) -> Any:
    """Wrap the request's context manager so that connection failures become retryable errors."""
    return _Connection(spec, request)


class _Connection:
    def __init__(self, spec: ModelSpec, request: Any) -> None:
        self._spec, self._request = spec, request

    async def __aenter__(self) -> aiohttp.ClientResponse:
        try:
            self._response: aiohttp.ClientResponse = await self._request.__aenter__()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as error:
            raise BackendError(Unavailable(f"model {self._spec.id!r}: cannot reach {self._spec.endpoint}: "
                                           f"{type(error).__name__}: {error}"), retryable=True) from None
        return self._response

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._request.__aexit__(*exc_info)


async def _read(spec: ModelSpec, response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as error:
        raise BackendError(Unavailable(f"model {spec.id!r}: reply cut off (HTTP {response.status}): "
                                       f"{type(error).__name__}: {error}"), retryable=response.status >= 500) from None


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data:`` payloads of a server-sent event stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for raw_line in response.content:
        line = raw_line.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _json(spec: ModelSpec, raw: bytes, status: int, partial: list[str] | None = None,
          messages: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        document = error
    if not isinstance(document, dict):
        consumed = _consumed(messages, partial) if partial else {}
        raise BackendError(Unavailable(f"model {spec.id!r}: malformed JSON from the backend (HTTP {status}): "
                                       f"{raw[:200]!r}"), **consumed)
    return document


def _consumed(messages: Sequence[tuple[str, str]], parts: list[str]) -> dict[str, Any]:
    """Estimated tokens of a call that failed after the backend had started generating."""
    return {"input_tokens": sum(estimate_tokens(content) for _, content in messages),
            "output_tokens": estimate_tokens("".join(parts)), "tokens_estimated": True}


def _truncated(spec: ModelSpec, messages: Sequence[tuple[str, str]], parts: list[str], why: str) -> BackendError:
    return BackendError(Unavailable(f"model {spec.id!r}: stream truncated after {len(parts)} chunk(s): {why}"),
                        **_consumed(messages, parts))


def _reply(spec: ModelSpec, messages: Sequence[tuple[str, str]], text: str, finish: str,
           usage: Any, tool_calls: Any = (), served: Any = None) -> BackendReply:
    calls = json.dumps(tool_calls) if tool_calls else ""
    model = served if isinstance(served, str) else ""  # the reply's "model": what actually answered
    # A usage the ledger cannot hold (negative, or past bounds.MAX_CALL_TOKENS: a broken or hostile
    # backend) is not believed: the call is counted as if the backend had sent none, estimated.
    # Believed, it would have been refused at settlement, and the answered request left unbilled.
    if isinstance(usage, dict) and all(isinstance(usage.get(key), int) and not isinstance(usage.get(key), bool)
                                       and 0 <= usage[key] <= MAX_CALL_TOKENS
                                       for key in ("prompt_tokens", "completion_tokens")):
        return BackendReply(text, usage["prompt_tokens"], usage["completion_tokens"], False, finish, tool_calls=calls,
                            model=model)
    counter = counter_for(spec.tokenizer)
    return BackendReply(text, counter.messages(messages), counter.text(text + calls), not counter.exact, finish,
                        tool_calls=calls, model=model)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def http_error(spec: ModelSpec, status: int, raw: bytes, headers: Mapping[str, str]) -> BackendError:
    """The domain error for an HTTP error reply, from its OpenAI-style body when it has one."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    if not isinstance(body, dict):
        body = {"error": {"message": raw[:200].decode("utf-8", "replace") or "(empty body)"}}
    return _error_from_body(spec, status, body, headers)


def _error_from_body(spec: ModelSpec, status: int, body: dict[str, Any], headers: Mapping[str, str],
                     partial: list[str] | None = None, messages: Sequence[tuple[str, str]] = ()) -> BackendError:
    error = body.get("error")
    if not isinstance(error, dict):
        error = {"message": str(error if error is not None else body)[:200]}
    detail = str(error.get("message") or "(no message)")
    kind = error.get("type") or error.get("code")
    said = f"model {spec.id!r}: backend said HTTP {status}" + (f" {kind}" if kind else "") + f": {detail}"
    retry_after = parse_retry_after(headers.get("Retry-After"))
    consumed = _consumed(messages, partial) if partial else {}
    domain: XRouterError
    if status == 429:
        domain = ResourceExhausted(said, subject=f"model:{spec.id}", description="rate limited by the backend")
    elif status in {400, 413, 422}:
        domain = InvalidArgument(str(error.get("param") or "messages"), said)
    elif status in {401, 403}:
        domain = PermissionDenied(f"{said} (check the key in {spec.credentials_env or 'credentials_env'})")
    elif status == 404:
        domain = NotFound(said)
    else:
        domain = Unavailable(said)
    return BackendError(domain, retryable=status in RETRYABLE_STATUS, retry_after=retry_after, **consumed)
