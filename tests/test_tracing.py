"""One trace per request, whole: a chat completion over the HTTP face that calls two models and is
graded by the reward service's LLM judge (through the adapters) leaves one trace, received over
real OTLP/gRPC, whose parent chain runs HTTP server span → route → call → gRPC → adapters'
model-call span → backend HTTP client span, and whose ``traceparent`` reaches the backend.

Everything is real: the four services on their own gRPC servers, an OpenAI-speaking HTTP backend,
and a receiver implementing OTLP's TraceService/Export that the services export to through the
standard OTEL_EXPORTER_OTLP_ENDPOINT."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent import futures
from decimal import Decimal
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from adapters_openai_server import Fault, OpenAIProtocolServer
from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import ModelSpec
from xrouter.adapters.core import AdapterCore
from xrouter.local_stack import InProcessStack, sqlite_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHEAP_A, CHEAP_B, JUDGE, FAILING = "test/cheap-a", "test/cheap-b", "test/judge", "test/failing"
SERVER, CLIENT, INTERNAL = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT, trace_pb2.Span.SPAN_KIND_INTERNAL
ADAPTERS_INVOKE = "/xrouter.adapters.v1.AdapterService/Invoke"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping every span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource.get("service.name", ""), span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    def value(any_value: Any) -> Any:
        kind = any_value.WhichOneof("value")
        if kind == "array_value":
            return [value(v) for v in any_value.array_value.values]
        return getattr(any_value, kind) if kind else None
    return {a.key: value(a.value) for a in span.attributes}


def spec(model: str, url: str, price: str, served: str) -> ModelSpec:
    return ModelSpec(model, "openai", Decimal(price), Decimal(price), 8192, 1024, "", endpoint=url,
                     backend_model=served)


@pytest.fixture(scope="module")
def receiver():  # type: ignore[no-untyped-def]
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, port
    server.stop(None)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory, receiver):  # type: ignore[no-untyped-def]
    backend = await OpenAIProtocolServer().start()
    # The backend knows each model by another name, so that gen_ai.response.model (what the reply
    # says answered) is told apart from gen_ai.request.model (the catalog id asked for).
    catalog = {s.id: s for s in (spec(CHEAP_A, backend.url, "0.1", "served-a"),
                                 spec(CHEAP_B, backend.url, "0.2", "served-b"),
                                 spec(JUDGE, backend.url, "5", "served-judge"),
                                 spec(FAILING, backend.url, "1", "served-failing"))}
    core = AdapterCore(catalog, {"openai": OpenAIBackend()})
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver[1]}", "OTEL_EXPORTER_OTLP_INSECURE": "true"}
    saved = {name: os.environ.get(name) for name in (*otel, "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME")}
    os.environ.update(otel)
    os.environ.pop("OTEL_TRACES_EXPORTER", None)
    os.environ.pop("OTEL_SERVICE_NAME", None)
    try:  # the providers and their OTLP exporters read the variables once, when the stack starts
        running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("tracing")), adapter_core=core,
                                       judge_model=JUDGE).start()
    finally:
        for name, old in saved.items():
            os.environ.pop(name, None) if old is None else os.environ.__setitem__(name, old)
    running.backend = backend
    yield running
    await running.stop()
    await core.aclose()
    await backend.stop()


async def traced_post(stack, receiver, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    """POST a chat completion under a caller's own traceparent; the reply, the caller's trace and span
    ids, and the spans exported meanwhile."""
    stack.force_flush()
    before = len(receiver[0].spans)
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    async with aiohttp.ClientSession() as session, session.post(
            f"{stack.http_url}/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {stack.admin_key}",
                     "traceparent": f"00-{trace_id}-{parent_id}-01"}) as response:
        reply = response.status, (await response.text() if body.get("stream") else await response.json())
    stack.force_flush()
    return reply, trace_id, parent_id, receiver[0].spans[before:]


async def test_one_request_is_one_whole_trace(stack, receiver) -> None:  # type: ignore[no-untyped-def]
    headers_before = len(stack.backend.headers)
    (status, reply), trace_id, parent_id, exported = await traced_post(stack, receiver, {
        "model": "xrouter", "max_tokens": 64, "messages": [{"role": "user", "content": "name a prime number"}],
        "xrouter": {"policy": "cascade", "allowed_models": [CHEAP_A, CHEAP_B],
                    "reference": {"task_type": "judge", "gold": "7"}}})
    assert status == 200, reply
    assert {c["model"] for c in reply["xrouter"]["calls"]} == {CHEAP_A, CHEAP_B}
    assert reply["xrouter"]["score"] is not None and reply["xrouter"]["trace_id"] == trace_id

    # One trace: every span exported during the request is in the caller's trace, from all four services.
    assert {span.trace_id.hex() for _, span in exported} == {trace_id}
    assert {service for service, _ in exported} == {"xrouter-router", "xrouter-adapters", "xrouter-metering",
                                                     "xrouter-reward"}
    by_id = {span.span_id: (service, span) for service, span in exported}

    def chain(span: trace_pb2.Span) -> list[tuple[str, str, int]]:
        """(service, name, kind) of the span's ancestors, nearest first, up to the caller's span."""
        found = []
        while span.parent_span_id in by_id:
            service, span = by_id[span.parent_span_id]
            found.append((service, span.name, span.kind))
        assert span.parent_span_id.hex() == parent_id, "the chain ends at the caller's own span"
        return found

    top = [("xrouter-router", "xrouter.route", INTERNAL), ("xrouter-router", "POST /v1/chat/completions", SERVER)]
    chats = {attributes(s)["gen_ai.request.model"]: s for service, s in exported
             if service == "xrouter-adapters" and s.name.startswith("chat ")}
    assert set(chats) == {CHEAP_A, CHEAP_B, JUDGE}
    for model in (CHEAP_A, CHEAP_B):
        assert chain(chats[model]) == [("xrouter-adapters", ADAPTERS_INVOKE, SERVER),
                                       ("xrouter-router", ADAPTERS_INVOKE, CLIENT),
                                       ("xrouter-router", "xrouter.call", INTERNAL), *top]
    # The judge's call: reward → adapters, inside the router's Score call.
    assert chain(chats[JUDGE]) == [("xrouter-adapters", ADAPTERS_INVOKE, SERVER),
                                   ("xrouter-reward", ADAPTERS_INVOKE, CLIENT),
                                   ("xrouter-reward", "/xrouter.reward.v1.RewardService/Score", SERVER),
                                   ("xrouter-router", "/xrouter.reward.v1.RewardService/Score", CLIENT), *top]

    server = next(s for _, s in exported if s.kind == SERVER and s.name == "POST /v1/chat/completions")
    assert attributes(server) == {"http.request.method": "POST", "url.path": "/v1/chat/completions",
                                  "url.scheme": "http", "network.protocol.version": "1.1",
                                  "http.route": "/v1/chat/completions", "http.response.status_code": 200}

    # GenAI attributes where the call happens; the backend's own reply names the model that answered.
    calls = {c["model"]: c for c in reply["xrouter"]["calls"]}
    for model, served in ((CHEAP_A, "served-a"), (CHEAP_B, "served-b"), (JUDGE, "served-judge")):
        found = attributes(chats[model])
        assert chats[model].name == f"chat {model}" and chats[model].kind == CLIENT
        assert found["gen_ai.operation.name"] == "chat" and found["gen_ai.provider.name"] == "openai"
        assert found["gen_ai.response.model"] == served and found["gen_ai.response.finish_reasons"] == ["stop"]
        assert found["gen_ai.request.max_tokens"] == (64 if model in calls else 512)  # the judge asks for 512
        assert found["server.address"] == "127.0.0.1" and "error.type" not in found
        if model in calls:
            assert (found["gen_ai.usage.input_tokens"], found["gen_ai.usage.output_tokens"]) == (
                calls[model]["input_tokens"], calls[model]["output_tokens"])
            assert found["xrouter.cost_usd"] == pytest.approx(calls[model]["cost_usd"])
    # The router's spans carry no GenAI attributes: the adapters' span is the one model-call span.
    assert not [s.name for service, s in exported if service == "xrouter-router"
                for key in attributes(s) if key.startswith("gen_ai.")]

    # Each model call's backend request is a CLIENT span under it, and its traceparent reached the backend.
    http = [s for service, s in exported if service == "xrouter-adapters" and s.name == "POST"]
    assert sorted(by_id[s.parent_span_id][1].name for s in http) == sorted(f"chat {m}" for m in chats)
    sent = [{k.lower(): v for k, v in h.items()}.get("traceparent", "") for h in stack.backend.headers[headers_before:]]
    assert sorted(sent) == sorted(f"00-{trace_id}-{s.span_id.hex()}-01" for s in http)
    for span in http:
        found = attributes(span)
        assert span.kind == CLIENT and found["http.request.method"] == "POST"
        assert found["http.response.status_code"] == 200 and found["url.full"].endswith("/v1/chat/completions")


async def test_a_failed_call_says_why_at_each_level(stack, receiver) -> None:  # type: ignore[no-untyped-def]
    stack.backend.script["served-failing"] = [Fault(kind="status", status=400)]
    (status, reply), trace_id, _, exported = await traced_post(stack, receiver, {
        "model": FAILING, "messages": [{"role": "user", "content": "hello"}]})
    assert status == 503, reply  # no call succeeded: the router has no answer (a server-side failure)
    assert {span.trace_id.hex() for _, span in exported} == {trace_id}
    chats = [s for _, s in exported if s.name == f"chat {FAILING}"]
    assert chats
    for chat in chats:
        found = attributes(chat)
        assert found["error.type"] == "InvalidArgument" and chat.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert "gen_ai.response.model" not in found and "gen_ai.response.finish_reasons" not in found  # nothing answered
        http = next(s for _, s in exported if s.name == "POST" and s.parent_span_id == chat.span_id)
        assert attributes(http)["http.response.status_code"] == 400 and attributes(http)["error.type"] == "400"
    server = next(s for _, s in exported if s.kind == SERVER and s.name == "POST /v1/chat/completions")
    assert attributes(server)["http.response.status_code"] == 503 and attributes(server)["error.type"] == "503"
    assert server.status.code == trace_pb2.Status.STATUS_CODE_ERROR


async def test_a_client_error_is_not_a_failed_server_span(stack, receiver) -> None:  # type: ignore[no-untyped-def]
    (status, reply), trace_id, _, exported = await traced_post(stack, receiver, {
        "model": "xrouter", "messages": [{"role": "user", "content": "hello"}], "temperature": 7})
    assert status == 400, reply
    # A 4xx is the caller's mistake: recorded, not an error of the server span (HTTP semconv).
    server = next(s for _, s in exported if s.kind == SERVER and s.trace_id.hex() == trace_id)
    assert attributes(server)["http.response.status_code"] == 400 and "error.type" not in attributes(server)
    assert server.status.code != trace_pb2.Status.STATUS_CODE_ERROR


async def test_a_streamed_call_is_traced_the_same_way(stack, receiver) -> None:  # type: ignore[no-untyped-def]
    (status, text), trace_id, _, exported = await traced_post(stack, receiver, {
        "model": CHEAP_A, "stream": True, "messages": [{"role": "user", "content": "count to three"}]})
    assert status == 200 and text.rstrip().endswith("data: [DONE]"), text
    assert {span.trace_id.hex() for _, span in exported} == {trace_id}
    by_id = {span.span_id: span for _, span in exported}
    chat = next(s for _, s in exported if s.name == f"chat {CHEAP_A}")
    parents, span = [], chat
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        parents.append(span.name)
    stream = "/xrouter.adapters.v1.AdapterService/InvokeStream"
    assert parents == [stream, stream, "xrouter.call", "xrouter.route", "POST /v1/chat/completions"]
    found = attributes(chat)
    # Streamed, the usage and the model come from the stream's own events.
    assert found["gen_ai.response.model"] == "served-a" and found["gen_ai.response.finish_reasons"] == ["stop"]
    assert found["gen_ai.usage.output_tokens"] == 4  # "echo: count to three", counted in words by the backend
    assert any(s.name == "POST" and s.parent_span_id == chat.span_id for _, s in exported)
