"""The gRPC tracing interceptors run only for a provider whose spans are exported (common/telemetry.py):
with an exporter, one RPC is a client span and a server span of one trace (the caller's context
reached the server); without one, no RPC span is made at all, and the call still works. Real
gRPC server and channel on localhost."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common import telemetry
from xrouter.common.grpc_server import GrpcServer

AUTHORIZE = "/xrouter.metering.v1.MeteringService/Authorize"


class Granting(metering_pb2_grpc.MeteringServiceServicer):
    async def Authorize(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 - the proto's name
        return metering_pb2.AuthorizeResponse(reservation_id=f"r-{request.request_id}")


def register(server: grpc.aio.Server) -> list[str]:
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(Granting(), server)
    return [metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name]


async def authorize_once(provider: TracerProvider) -> str:
    server = GrpcServer("metering", register, provider)
    port = await server.start()
    try:
        async with telemetry.insecure_channel(f"127.0.0.1:{port}", provider) as channel:
            with provider.get_tracer("test").start_as_current_span("caller"):
                reply = await metering_pb2_grpc.MeteringServiceStub(channel).Authorize(
                    metering_pb2.AuthorizeRequest(request_id="q1", tenant="t", estimate_micro_usd=1))
        return reply.reservation_id
    finally:
        await server.stop(0)


async def test_an_exporting_provider_traces_each_rpc_on_both_sides_in_the_callers_trace() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    telemetry.export_to(provider, SimpleSpanProcessor(spans))
    assert telemetry.exporting(provider)
    assert await authorize_once(provider) == "r-q1"
    finished = spans.get_finished_spans()
    caller, = [s for s in finished if s.name == "caller"]
    rpc = [s for s in finished if s.name == AUTHORIZE]
    assert sorted(s.kind.name for s in rpc) == ["CLIENT", "SERVER"]
    assert {s.context.trace_id for s in rpc} == {caller.context.trace_id}  # propagated over the metadata


async def test_a_provider_that_exports_nothing_gets_no_rpc_spans_and_the_call_still_works() -> None:
    # A processor added behind telemetry's back stands in for "nobody reads these spans": it lets the
    # test see what would have been made. The service's own span is made either way.
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    assert not telemetry.exporting(provider)
    assert await authorize_once(provider) == "r-q1"
    assert [s.name for s in spans.get_finished_spans()] == ["caller"]


def test_the_environment_decides_for_a_deployed_service(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert not telemetry.exporting(telemetry.tracer_provider("xrouter-test"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:1")
    assert telemetry.exporting(telemetry.tracer_provider("xrouter-test"))
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry.exporting(telemetry.tracer_provider("xrouter-test"))


def test_a_services_provider_makes_non_recording_spans_with_real_ids_until_it_exports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    provider = telemetry.tracer_provider("xrouter-test")  # exports nowhere
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("quiet") as span:
        assert not span.is_recording()
        quiet_trace = telemetry.current_trace_id()
        with tracer.start_as_current_span("child") as child:
            assert telemetry.current_trace_id() == quiet_trace  # a child keeps its parent's trace
            assert not child.is_recording()
    assert len(quiet_trace) == 32 and quiet_trace != "0" * 32  # the ledger still gets a trace id
    spans = InMemorySpanExporter()
    telemetry.export_to(provider, SimpleSpanProcessor(spans))  # the tracer made before now records
    with tracer.start_as_current_span("exported") as span:
        assert span.is_recording()
    assert [s.name for s in spans.get_finished_spans()] == ["exported"]
