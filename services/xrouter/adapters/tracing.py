"""The model-call span, made where the call happens (the adapters), per the OpenTelemetry GenAI
semantic conventions: ``chat {gen_ai.request.model}``, covering the logical call with all its
retries; each backend HTTP attempt is a CLIENT span beneath it (common/http_tracing.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from xrouter.adapters.catalog import ModelSpec

__all__ = ["finish_call_span", "in_span", "start_call_span"]

# gen_ai.provider.name: the registry's well-known value where there is one ("openai" for the OpenAI
# protocol), otherwise a custom name, as the conventions allow.
_PROVIDERS = {"openai": "openai", "kserve": "kserve", "replay": "xrouter.replay", "local": "xrouter.local"}
# Models answered inside the adapters' own process: INTERNAL spans (the conventions' MAY), since no
# remote service is called.
_IN_PROCESS = frozenset({"replay", "local"})


def start_call_span(tracer: Tracer, spec: ModelSpec, temperature: float, max_tokens: int) -> Span:
    """Started, not made current: the caller makes it current around the backend's work only."""
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": _PROVIDERS.get(spec.backend, spec.backend),
        # The catalog id the caller asked for; the name sent to the backend differs only by configuration.
        "gen_ai.request.model": spec.id, "gen_ai.request.temperature": temperature}
    if max_tokens:  # 0 means "the model's own limit": no limit was requested
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if spec.endpoint:
        address = urlsplit(spec.endpoint if "://" in spec.endpoint else f"//{spec.endpoint}")
        if address.hostname:
            attributes["server.address"] = address.hostname
            if address.port:
                attributes["server.port"] = address.port
    kind = SpanKind.INTERNAL if spec.backend in _IN_PROCESS else SpanKind.CLIENT
    return tracer.start_span(f"chat {spec.id}", kind=kind, attributes=attributes)


def finish_call_span(span: Span, invocation: object | None, response_model: str = "",
                     error: BaseException | None = None) -> None:
    """Record what the call consumed (a failed call too: it may be billed) and end the span.
    ``invocation`` is the adapters' :class:`~xrouter.adapters.core.Invocation` of the call."""
    if invocation is not None:
        span.set_attributes({
            "gen_ai.usage.input_tokens": invocation.input_tokens,  # type: ignore[attr-defined]
            "gen_ai.usage.output_tokens": invocation.output_tokens,  # type: ignore[attr-defined]
            "xrouter.tokens_estimated": invocation.tokens_estimated,  # type: ignore[attr-defined]
            "xrouter.cost_usd": invocation.cost_micro_usd / 1e6,  # type: ignore[attr-defined]
            "xrouter.attempts": invocation.attempts})  # type: ignore[attr-defined]
        if error is None and invocation.finish_reason:  # type: ignore[attr-defined]
            span.set_attribute("gen_ai.response.finish_reasons", [invocation.finish_reason])  # type: ignore[attr-defined]
    if response_model:  # only what the backend said it ran: never the requested name copied over
        span.set_attribute("gen_ai.response.model", response_model)
    if error is not None:
        # Low-cardinality, as the conventions ask: the domain error's class (Unavailable,
        # DeadlineExceeded, ...) or CancelledError when the caller went away.
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, str(getattr(error, "message", error))[:300]))
    span.end()


def in_span(span: Span):  # type: ignore[no-untyped-def]
    """``span`` current for a block without ending it there and without its exception handling
    (finish_call_span records the outcome)."""
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)
