"""Tracing at the HTTP edges, per the OpenTelemetry HTTP semantic conventions: a SERVER span for each
request the router's OpenAI face answers (continuing the caller's W3C ``traceparent``), and a
CLIENT span for each request an aiohttp session sends to a model backend, whose ``traceparent``
header carries the trace on to the backend.

Written here rather than taken from opentelemetry-instrumentation-aiohttp-{server,client}: those
are not in the lock at the pinned 0.66b2, and the little they would do for us fits in this file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

__all__ = ["TracedTransport", "client_trace_config", "server_middleware"]

# Probes would otherwise open one trace each, every few seconds, per replica.
_UNTRACED_PATHS = frozenset({"/healthz"})


def server_middleware(tracer: Tracer) -> Callable[..., Awaitable[web.StreamResponse]]:
    """An aiohttp middleware opening the SERVER span of each request. Put it first (outermost), so
    that the status it records is the one the client gets after the other middlewares' mapping."""

    @web.middleware
    async def traced(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in _UNTRACED_PATHS:
            return await handler(request)
        # Header names are case-insensitive; the propagator looks keys up as written: lower-case them.
        parent = extract({key.lower(): value for key, value in request.headers.items()})
        route = _route(request)
        # HTTP semconv: "{method} {http.route}", or the method alone when no route matched (a 404):
        # a raw path in the name would give every mistyped URL its own span name.
        name = f"{request.method} {route}" if route else request.method
        with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                          record_exception=False, set_status_on_exception=False) as span:
            span.set_attributes({"http.request.method": request.method, "url.path": request.path,
                                 "url.scheme": request.scheme, "network.protocol.version":
                                 f"{request.version.major}.{request.version.minor}"})
            if route:
                span.set_attribute("http.route", route)
            try:
                response = await handler(request)
            except web.HTTPException as error:  # raised responses (aiohttp's own 404/405) are answers too
                _record_status(span, error.status)
                raise
            except BaseException as error:  # cancelled (the client went away) or a bug
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
                raise
            _record_status(span, response.status)
            return response
    return traced


def _route(request: web.Request) -> str:
    """The matched route's template (``/v1/models/{model}``), '' when none matched."""
    info = request.match_info
    if getattr(info, "http_exception", None) is not None or info.route.resource is None:
        return ""
    return info.route.resource.canonical


def _record_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:  # for a server, 4xx is the client's mistake, not a failed span (semconv)
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


def client_trace_config(tracer: Callable[[], Tracer]) -> aiohttp.TraceConfig:
    """aiohttp request hooks making a CLIENT span per request and injecting ``traceparent`` into
    its headers. ``tracer`` is read per request, so a backend may be handed its tracer after its
    session exists. The span ends when the response's headers arrive (a streamed body goes on
    under the caller's model-call span)."""
    config = aiohttp.TraceConfig()

    async def start(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                    params: aiohttp.TraceRequestStartParams) -> None:
        url = params.url
        # HTTP client semconv: the method alone (no low-cardinality URL template is known here).
        span = tracer().start_span(params.method, kind=SpanKind.CLIENT, attributes={
            "http.request.method": params.method, "url.full": str(url.with_user(None).with_query(None)),
            "server.address": url.host or "", "server.port": url.port or 0})
        ctx.span = span
        # The headers aiohttp is about to send: the backend continues this span's trace.
        inject(params.headers, context=trace.set_span_in_context(span))

    async def end(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                  params: aiohttp.TraceRequestEndParams) -> None:
        span = getattr(ctx, "span", None)
        if span is None:
            return
        status = params.response.status
        span.set_attribute("http.response.status_code", status)
        if status >= 400:  # for a client every 4xx/5xx is a failed request (semconv)
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    async def failed(session: aiohttp.ClientSession, ctx: SimpleNamespace,
                     params: aiohttp.TraceRequestExceptionParams) -> None:
        span = getattr(ctx, "span", None)
        if span is None:
            return
        span.set_attribute("error.type", type(params.exception).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(params.exception)[:200]))
        span.end()

    config.on_request_start.append(start)
    config.on_request_end.append(end)
    config.on_request_exception.append(failed)
    return config


class TracedTransport(httpx.AsyncBaseTransport):
    """An httpx transport doing for httpx clients (the kserve SDK's REST client) what
    :func:`client_trace_config` does for aiohttp sessions: a CLIENT span per request, ``traceparent``
    sent on."""

    def __init__(self, tracer: Callable[[], Tracer], inner: httpx.AsyncBaseTransport | None = None) -> None:
        self._tracer, self._inner = tracer, inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        with self._tracer().start_as_current_span(request.method, kind=SpanKind.CLIENT, attributes={
                "http.request.method": request.method, "url.full": str(url.copy_with(query=None, userinfo=b"")),
                "server.address": url.host, "server.port": url.port or (443 if url.scheme == "https" else 80)},
                record_exception=False, set_status_on_exception=False) as span:
            inject(request.headers)
            try:
                response = await self._inner.handle_async_request(request)
            except BaseException as error:
                span.set_attribute("error.type", type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
