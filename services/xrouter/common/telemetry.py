"""OpenTelemetry set-up in one place: resource and exporter from the standard OTEL_* variables,
W3C propagation over gRPC metadata (the grpc instrumentation's interceptors), GenAI attributes.

The gRPC interceptors are installed only for a provider whose spans go somewhere (an exporter):
without one they would open, propagate and end a span per RPC on both sides for nobody — measured
at 0.2-0.4 ms per round trip on the shared 2-core machine, three round trips per routed request.
A service's own spans (the router's ``xrouter.route``, whose trace id the ledger keeps) are
created either way; a provider made by :func:`tracer_provider` makes them non-recording while it
exports nowhere (:class:`RecordWhenExporting`): they keep their trace and span ids, and skip the
attributes, events and end-of-span processing nobody would read (about a sixth of the router's
CPU per request under load, measured with py-spy).
"""

from __future__ import annotations

import os
import weakref

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult


from xrouter.common.tls import TlsFiles, channel_credentials, channel_options

# Health probes would otherwise put one trace per probe into the collector.
_NOT_HEALTH = filters.negate(filters.health_check())
# Providers given a span processor through export_to: the ones whose RPC spans are worth making.
_EXPORTING: weakref.WeakSet[TracerProvider] = weakref.WeakSet()


def tracer_provider(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider for one service. Without an explicit exporter, spans go to OTLP when the standard
    ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set (and ``OTEL_TRACES_EXPORTER`` is not ``none``),
    and nowhere otherwise."""
    resource = Resource.create({"service.name": service_name, "service.namespace": "xrouter"})
    if os.environ.get("OTEL_SERVICE_NAME"):  # an explicit name from the deployment wins
        resource = Resource.create({"service.namespace": "xrouter"})
    sampler = RecordWhenExporting()
    provider = TracerProvider(resource=resource, sampler=sampler)
    sampler.provider = weakref.ref(provider)
    if exporter is None and os.environ.get("OTEL_TRACES_EXPORTER", "otlp") != "none" and (
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    if exporter is not None:
        export_to(provider, BatchSpanProcessor(exporter))
    return provider


class RecordWhenExporting(Sampler):
    """Parent-based always-on while the provider exports (:func:`export_to`); otherwise every span
    is non-recording (DROP still gives it valid ids: a root gets a new trace id, a child its
    parent's, so ``current_trace_id`` and propagation work as before)."""

    def __init__(self) -> None:
        self.provider: weakref.ref[TracerProvider] | None = None
        self._recording = ParentBased(ALWAYS_ON)

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,  # type: ignore[no-untyped-def]
                      trace_state=None) -> SamplingResult:
        provider = self.provider() if self.provider is not None else None
        if provider is not None and exporting(provider):
            return self._recording.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        return SamplingResult(Decision.DROP)

    def get_description(self) -> str:
        return "RecordWhenExporting"


def export_to(provider: TracerProvider, processor: SpanProcessor) -> None:
    """Add ``processor`` to ``provider`` and trace its gRPC calls from now on (servers and channels
    made afterwards carry the interceptors)."""
    provider.add_span_processor(processor)
    _EXPORTING.add(provider)


def exporting(provider: TracerProvider) -> bool:
    """Whether ``provider``'s spans are exported (it went through :func:`export_to`)."""
    return provider in _EXPORTING


def server_interceptors(provider: TracerProvider) -> list[grpc.aio.ServerInterceptor]:
    """The tracing interceptor when ``provider`` exports (see the module's note), else none."""
    return [server_interceptor(provider)] if exporting(provider) else []


def _client_interceptors(provider: TracerProvider) -> list[grpc.aio.ClientInterceptor] | None:
    return aio_client_interceptors(tracer_provider=provider, filter_=_NOT_HEALTH) if exporting(provider) else None


def server_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    """Opens a server span per RPC, continuing the caller's W3C trace context."""
    return aio_server_interceptor(tracer_provider=provider, filter_=_NOT_HEALTH)


def insecure_channel(target: str, provider: TracerProvider) -> grpc.aio.Channel:
    """A client channel whose calls carry the current trace context downstream (when ``provider``
    exports: see the module's note)."""
    return grpc.aio.insecure_channel(target, interceptors=_client_interceptors(provider))


def channel(target: str, provider: TracerProvider, tls: TlsFiles | None = None) -> grpc.aio.Channel:
    """A traced client channel: TLS (mutual when ``tls`` has a certificate) when ``tls`` is set,
    plaintext otherwise."""
    if tls is None or not tls.enabled:
        return insecure_channel(target, provider)
    return grpc.aio.secure_channel(
        target, channel_credentials(tls), options=channel_options(tls),
        interceptors=_client_interceptors(provider))


def current_trace_id() -> str:
    """The W3C trace id (32 hex) of the active span, or '' outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
