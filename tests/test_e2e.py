"""One routed request end to end through the four services on real gRPC servers and channels:
the answer, the ledger rows, the spans of one trace, and bad input refused with named fields."""

from __future__ import annotations

import asyncio
import shutil
import uuid

import grpc
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xrouter.api.common.v1 import common_pb2
from xrouter.api.reward.v1 import reward_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.auth import bearer_interceptors, bearer_metadata

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory, exporter):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("e2e")), exporter).start()
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def router(stack):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key)) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def request(prompt: str, **fields) -> router_pb2.RouteRequest:  # type: ignore[no-untyped-def]
    return router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                                   tenant=fields.pop("tenant", f"t-{uuid.uuid4().hex[:8]}"), **fields)


ARC = "arc-challenge.test.1/test"


async def test_a_request_flows_through_all_four_services(stack, router, recorded, exporter) -> None:  # type: ignore[no-untyped-def]
    exporter.clear()
    reference = reward_pb2.Reference(task_type="recorded_label", dataset="routerbench", prompt_id=ARC)
    reply = await router.Route(request(recorded[ARC][""], tenant="acme", policy="cascade", reference=reference))

    ok_calls = [c for c in reply.calls if c.status == common_pb2.CALL_STATUS_OK]
    assert ok_calls and reply.answer == recorded[ARC][reply.calls[reply.selected_call].model]
    assert reply.total_cost_micro_usd == sum(c.cost_micro_usd for c in reply.calls) > 0
    assert reply.policy_kind == "cascade" and reply.strategy == router_pb2.STRATEGY_SELECT
    assert reply.HasField("score") and reply.score in (0.0, 1.0) and reply.HasField("reward")

    usage = stack.ledger.usage("acme")
    assert usage.total_cost_micro_usd == reply.total_cost_micro_usd
    assert sum(m.calls for m in usage.models) == len(reply.calls)
    assert {m.model for m in usage.models} == {c.model for c in reply.calls}

    spans = exporter.get_finished_spans()
    trace_ids = {format(s.context.trace_id, "032x") for s in spans}
    assert trace_ids == {reply.trace_id}, "every span of the request belongs to its one trace"
    services = {s.resource.attributes["service.name"] for s in spans}
    assert services == {"xrouter-router", "xrouter-adapters", "xrouter-metering", "xrouter-reward"}
    by_name = [s.name for s in spans]
    assert by_name.count("xrouter.decide") == reply.turns_used
    chat = [s for s in spans if s.name.startswith("chat ")]
    assert len(chat) == len(reply.calls)
    for span in chat:
        assert span.attributes["gen_ai.request.model"] in {c.model for c in reply.calls}
        assert span.attributes["gen_ai.usage.input_tokens"] > 0 and "xrouter.cost_usd" in span.attributes
    metering_rpcs = [s.name.rsplit("/", 1)[-1] for s in spans if "MeteringService/" in s.name
                     and s.resource.attributes["service.name"] == "xrouter-metering"]
    # The calls travel in the one Settle (written in its transaction): no Record round trips.
    assert metering_rpcs.count("Settle") == 1 and "Record" not in metering_rpcs

    # The scored request is a training episode in metering's export.
    from xrouter.metering.export import episodes

    exported = [e for e in episodes(stack.ledger.engine, tenant="acme") if e["request_id"] == reply.request_id]
    assert len(exported) == 1 and exported[0]["score"] == reply.score and exported[0]["trace_id"] == reply.trace_id
    assert exported[0]["prompt"] == {"dataset": "routerbench", "prompt_id": ARC}
    assert exported[0]["cost_micro_usd"] == reply.total_cost_micro_usd


async def test_the_request_controls_are_honoured(stack, router, recorded) -> None:  # type: ignore[no-untyped-def]
    pool = ["mistralai/mistral-7b-chat", "gpt-3.5-turbo-1106"]
    reply = await router.Route(request(recorded[ARC][""], allowed_models=pool, policy="cascade"))
    assert {c.model for c in reply.calls} <= set(pool)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await router.Route(request(recorded[ARC][""], policy="fixed:gpt-4-1106-preview", max_cost_usd=0.0001))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no retry changes it: not a quota
    assert error.value.details().startswith("max_cost_usd: ")
    # A cap the cheap model fits under but gpt-4 does not: the cascade answers without escalating.
    cheap = await router.Route(request(recorded[ARC][""], policy="cascade", max_cost_usd=0.0015))
    assert "gpt-4-1106-preview" not in {c.model for c in cheap.calls if c.status == common_pb2.CALL_STATUS_OK}
    assert cheap.total_cost_usd <= 0.0015


async def test_route_stream_reports_decisions_calls_chunks_and_done(router, recorded) -> None:  # type: ignore[no-untyped-def]
    events = [e async for e in router.RouteStream(request(recorded[ARC][""], policy="fixed:claude-v1"))]
    kinds = [e.WhichOneof("event") for e in events]
    # The fixed policy's call is final: its answer streams while the call runs (a replay backend does
    # not stream, so its whole text is one chunk), before the call is reported finished.
    assert kinds == ["decision", "call_started", "answer_chunk", "call_finished", "decision", "done"]
    assert events[-1].done.calls[0].finish_reason == "stop"
    answer = "".join(e.answer_chunk for e in events if e.WhichOneof("event") == "answer_chunk")
    assert answer == events[-1].done.answer == recorded[ARC]["claude-v1"]


async def test_failed_calls_are_still_recorded(stack, router) -> None:  # type: ignore[no-untyped-def]
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await router.Route(request("a prompt nobody recorded", tenant=tenant, policy="cheapest"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "no recording" in error.value.details()
    usage = stack.ledger.usage(tenant)
    assert sum(m.calls for m in usage.models) == 2 and usage.total_cost_micro_usd == 0  # two turns tried


@pytest.mark.parametrize(("fields", "code", "field"), [
    ({"messages": []}, grpc.StatusCode.INVALID_ARGUMENT, "messages"),
    ({"messages": [common_pb2.ChatMessage(role="robot", content="hi")]}, grpc.StatusCode.INVALID_ARGUMENT,
     "messages[0].role"),
    ({"allowed_models": ["gpt-9"]}, grpc.StatusCode.INVALID_ARGUMENT, "allowed_models[0]"),
    ({"cost_lambda": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "cost_lambda"),
    ({"max_cost_usd": -0.5}, grpc.StatusCode.INVALID_ARGUMENT, "max_cost_usd"),
    ({"max_turns": 99}, grpc.StatusCode.INVALID_ARGUMENT, "max_turns"),
    ({"policy": "smartest"}, grpc.StatusCode.INVALID_ARGUMENT, "policy"),
    ({"request_id": "bad id with spaces"}, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ({"messages": [common_pb2.ChatMessage(role="user", content="x" * 200_001)]},
     grpc.StatusCode.INVALID_ARGUMENT, "messages"),
])
async def test_bad_input_names_the_field_and_records_nothing(stack, router, fields, code, field) -> None:  # type: ignore[no-untyped-def]
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    message = router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")], tenant=tenant)
    if "messages" in fields:
        del message.messages[:]
    message.MergeFrom(router_pb2.RouteRequest(**fields))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await router.Route(message)
    assert error.value.code() == code
    assert error.value.details().startswith(f"{field}: ")
    assert not stack.ledger.usage(tenant).models


async def test_unknown_reference_type_is_refused_before_any_call(stack, router, recorded) -> None:  # type: ignore[no-untyped-def]
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await router.Route(request(recorded[ARC][""], tenant=tenant, policy="cheapest",
                                   reference=reward_pb2.Reference(task_type="vibes")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("reference.task_type: ")
    assert not stack.ledger.usage(tenant).models  # checked at the edge: nothing spent


@pytest.mark.parametrize(("reference", "field"), [
    (reward_pb2.Reference(task_type="recorded_label", dataset="nope", prompt_id=ARC), "reference.dataset"),
    (reward_pb2.Reference(task_type="recorded_label", dataset="routerbench", prompt_id="no-such-prompt"),
     "reference.prompt_id"),
    (reward_pb2.Reference(task_type="multiple_choice", gold="Z"), "reference.gold"),
    (reward_pb2.Reference(task_type="multiple_choice", gold="A", options="XY"), "reference.gold"),
    (reward_pb2.Reference(task_type="judge"), "reference.task_type"),  # no judge configured here
])
async def test_a_reference_only_the_reward_service_can_refuse_is_refused_before_any_call(  # type: ignore[no-untyped-def]
        stack, router, recorded, reference, field) -> None:
    """Which data sets, prompts and verifiers the reward service holds is its knowledge, not the
    router's: the router asks it (CheckReference) before it calls a model. Until 2026-12-07 these
    were refused after the calls, which were billed for a request that failed."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    for stream in (False, True):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            message = request(recorded[ARC][""], tenant=tenant, policy="cheapest", reference=reference)
            if stream:
                async for _ in router.RouteStream(message):
                    pass
            else:
                await router.Route(message)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}: ")
    assert not stack.ledger.usage(tenant).models  # nothing called, nothing billed


async def test_load_policy_swaps_the_serving_policy(router, recorded) -> None:  # type: ignore[no-untyped-def]
    before = await router.GetPolicy(router_pb2.GetPolicyRequest())
    info = await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="fixed:gpt-3.5-turbo-1106"))
    try:
        reply = await router.Route(request(recorded[ARC][""]))
        assert info.kind == reply.policy_kind == "fixed:gpt-3.5-turbo-1106"
        assert [c.model for c in reply.calls] == ["gpt-3.5-turbo-1106"]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="fixed:nope"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await router.GetPolicy(router_pb2.GetPolicyRequest())).kind == "fixed:gpt-3.5-turbo-1106"
    finally:
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=before.source))


async def test_deadline_exceeded_when_the_caller_gives_no_time(router, recorded) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await router.Route(request(recorded[ARC][""]), timeout=0.0001)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.skipif(shutil.which("grpcurl") is None, reason="grpcurl not installed")
async def test_reflection_and_health_answer_grpcurl(stack) -> None:  # type: ignore[no-untyped-def]
    async def grpcurl(*args: str) -> str:
        # The servers share this event loop: the tool must run without blocking it.
        process = await asyncio.create_subprocess_exec("grpcurl", "-plaintext", *args,
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, err.decode()
        return out.decode()

    for name, server in stack.servers.items():
        target = f"127.0.0.1:{server.port}"
        listed = await grpcurl(target, "list")
        assert f"xrouter.{name}.v1" in listed and "grpc.health.v1.Health" in listed
        assert '"SERVING"' in await grpcurl(target, "grpc.health.v1.Health/Check")


async def test_prometheus_metrics_count_requests_cost_and_overhead(stack, router, recorded) -> None:  # type: ignore[no-untyped-def]
    import prometheus_client

    async def scrape() -> str:
        # What the metrics port (XROUTER_ROUTER_METRICS_PORT) serves; the public HTTP port does not.
        return prometheus_client.generate_latest().decode()

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = await scrape()
    # A tenant key: the tenant is then known, so its spend gets its own label value.
    reply = await router.Route(request(recorded[ARC][""], tenant="metrics-tenant", policy="fixed:claude-v1"),
                               metadata=bearer_metadata(stack.tenant_key("metrics-tenant")))
    with pytest.raises(grpc.aio.AioRpcError):
        await router.Route(request("unrecorded prompt", policy="fixed:claude-v1"))
    after = await scrape()
    ok = 'xrouter_rpc_requests_total{code="OK",method="Route",service="router"}'
    assert value(after, ok) == value(before, ok) + 1
    unavailable = 'xrouter_rpc_requests_total{code="UNAVAILABLE",method="Route",service="router"}'
    assert value(after, unavailable) == value(before, unavailable) + 1
    cost = 'xrouter_cost_usd_total{model="claude-v1",tenant="metrics-tenant"}'
    assert value(after, cost) - value(before, cost) == pytest.approx(reply.total_cost_usd)
    errors = 'xrouter_model_call_errors_total{model="claude-v1",status="ERROR"}'
    assert value(after, errors) == value(before, errors) + 2  # two turns tried the unrecorded prompt
    count = "xrouter_routing_overhead_seconds_count"
    assert value(after, count) >= value(before, count) + 1


async def test_code_references_reach_the_reward_service_whole(router) -> None:  # type: ignore[no-untyped-def]
    """A routed request's reference carries code tests through to the sandboxed verifier."""
    reference = reward_pb2.Reference(task_type="code", code=reward_pb2.CodeTests(
        asserts=["assert add(2, 3) == 5"], entry_point="add"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        # This stack's reward service runs no caller-written tests, and says so when the router asks
        # before any call (CheckReference): the router's conversion kept the tests, and nothing was spent.
        await router.Route(request("Write add(a, b).", policy="cheapest", reference=reference))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reference.code" in error.value.details()
    from xrouter.router.clients import reference_to_proto
    from xrouter.router.convert import route_request

    domain = route_request(request("x", reference=reference)).reference
    assert domain is not None and domain.code is not None and domain.code.asserts == ("assert add(2, 3) == 5",)
    assert reference_to_proto(domain) == reference


@pytest.mark.parametrize("method", ["Route", "RouteStream", "Feedback"])
async def test_a_request_that_does_not_parse_is_invalid_argument(stack, method) -> None:  # type: ignore[no-untyped-def]
    """Bytes that are no RouteRequest (a string field that is not UTF-8): INVALID_ARGUMENT naming the
    request, as for any bad input; grpc's own parsing answered UNKNOWN."""
    not_utf8 = b"\x0a\x0a\x0a\x04user\x12\x02\xff\xfe"  # messages[0].content holds bytes 0xff 0xfe
    async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key)) as channel:
        path = f"/xrouter.router.v1.RouterService/{method}"
        for raw in (not_utf8, b"\xff\xff\xff\xff"):
            call = (channel.unary_stream if method == "RouteStream" else channel.unary_unary)(
                path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                if method == "RouteStream":
                    async for _ in call(raw):
                        pass
                else:
                    await call(raw)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details().startswith(f"request: is not a valid {method} request message")
