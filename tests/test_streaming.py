"""Real token streaming through the router, over both faces (OpenAI SSE with the official client, and
gRPC RouteStream), from an OpenAI-compatible backend that streams in-process, with a Postgres ledger.

Ordering, not wall-clock: a "gate" backend sends its first chunks and then waits for the test, so a
router that buffered the answer would never hand the client a first chunk (the wait times out). The
faults a real backend shows mid-stream — stalling, closing, malformed events — end the client's stream
with a terminal error, and the ledger holds the tokens the backend actually produced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest
import pytest_asyncio
import sqlalchemy
from adapters_openai_server import Fault, OpenAIProtocolServer
from test_adapters_openai import entry

from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import parse_catalog
from xrouter.adapters.core import AdapterCore
from xrouter.adapters.token_count import estimate_tokens
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.local_stack import InProcessStack
from xrouter.router.auth import bearer_interceptors
from xrouter.router.baselines import SYSTEM_PROMPT

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

PROMPT = "one two three four five six"
ANSWER = f"echo: {PROMPT}"
# Word counts, as the test backend reports usage: the fixed policy's system prompt plus the question.
PROMPT_WORDS = len(SYSTEM_PROMPT.split()) + len(PROMPT.split())
MODELS = ("gated", "stalls", "cut", "garbage", "fails", "plain")
PATIENCE_S = 20.0  # generous: only a broken router makes a test wait this long


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend():  # type: ignore[no-untyped-def]
    server = await OpenAIProtocolServer().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(backend, postgres_server_url):  # type: ignore[no-untyped-def]
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(postgres_server_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'create schema "{schema}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    # One attempt, and a short deadline for all but "gated": a stalled stream fails in 1.5 s; a gated
    # one ends only when the test opens the gate or the router cancels it.
    entries = [entry(model, backend.url, resilience={"timeout_s": 60.0 if model == "gated" else 1.5,
                                                     "max_attempts": 1, "breaker_failures": 1000})
               for model in MODELS]
    catalog = parse_catalog({"models": entries})
    core = AdapterCore(catalog, {"openai": OpenAIBackend()})
    running = await InProcessStack(f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}",
                                   policy="fixed:plain", adapter_core=core).start()
    yield running
    await running.stop()
    await core.aclose()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


class StreamFailed(Exception):
    """The stream's terminal error, as either face reports it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Http:
    """The OpenAI face through the official client; yields ("text", s), ("finish", r), ("usage", (p, c))."""

    name = "http"

    def __init__(self, stack: InProcessStack) -> None:
        self.client = openai.AsyncOpenAI(base_url=stack.http_url + "/v1", api_key=stack.admin_key, max_retries=0,
                                         timeout=PATIENCE_S)
        self._stream: Any = None

    async def open(self, model: str, tenant: str, **extra: Any) -> AsyncIterator[tuple[str, Any]]:
        try:
            self._stream = await self.client.chat.completions.create(
                model="xrouter", messages=[{"role": "user", "content": PROMPT}], stream=True,
                stream_options={"include_usage": True}, max_tokens=extra.get("max_tokens"),
                extra_body={"xrouter": {"tenant": tenant, "policy": f"fixed:{model}"}})
        except openai.APIStatusError as error:  # refused before the stream started: a plain HTTP error
            raise StreamFailed(f"http {error.status_code}", str(error.body)) from None
        return self._events()

    async def _events(self) -> AsyncIterator[tuple[str, Any]]:
        try:
            async for chunk in self._stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield "text", choice.delta.content
                    if choice.finish_reason:
                        yield "finish", choice.finish_reason
                if chunk.usage is not None:
                    yield "usage", (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        except openai.APIError as error:  # the terminal error event
            raise StreamFailed(str((error.body or {}).get("code")), error.message) from None

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()  # drops the connection: the client went away
        await self.client.close()


class Grpc:
    """RouteStream; the same items, the finish reason and usage read from the done event's call."""

    name = "grpc"

    def __init__(self, stack: InProcessStack) -> None:
        self.channel = grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key))
        self._call: Any = None

    async def open(self, model: str, tenant: str, **extra: Any) -> AsyncIterator[tuple[str, Any]]:
        self._call = router_pb2_grpc.RouterServiceStub(self.channel).RouteStream(router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=PROMPT)], tenant=tenant,
            policy=f"fixed:{model}", max_tokens=extra.get("max_tokens", 0)), timeout=PATIENCE_S)
        return self._events()

    async def _events(self) -> AsyncIterator[tuple[str, Any]]:
        try:
            async for event in self._call:
                if event.WhichOneof("event") == "answer_chunk":
                    yield "text", event.answer_chunk
                elif event.WhichOneof("event") == "done":
                    chosen = event.done.calls[event.done.selected_call]
                    yield "finish", chosen.finish_reason
                    yield "usage", (chosen.input_tokens, chosen.output_tokens)
        except grpc.aio.AioRpcError as error:
            raise StreamFailed(error.code().name.lower(), error.details() or "") from None

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()  # the client went away
        await self.channel.close()


@pytest_asyncio.fixture(params=[Http, Grpc], ids=["http", "grpc"], loop_scope="module")
async def face(request, stack):  # type: ignore[no-untyped-def]
    opened = request.param(stack)
    yield opened
    await opened.close()


def ledger_calls(stack: InProcessStack, tenant: str) -> list[dict[str, Any]]:
    with stack.ledger.engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text(
            "select model, status, input_tokens, output_tokens, cost_micro_usd "
            "from ledger_calls where tenant = :tenant order by call_index"), {"tenant": tenant})
        return [dict(row._mapping) for row in rows]


async def settled(stack: InProcessStack, tenant: str) -> list[dict[str, Any]]:
    """The tenant's ledger rows once the request is settled (accounting may finish after the stream)."""
    for _ in range(int(PATIENCE_S / 0.02)):
        if stack.ledger.usage(tenant).requests:
            return ledger_calls(stack, tenant)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the request of {tenant} was never settled")


def price(stack: InProcessStack, model: str, input_tokens: int, output_tokens: int) -> int:
    option = stack.router_core.catalog[model]
    return round(input_tokens * option.input_usd_per_mtok + output_tokens * option.output_usd_per_mtok)


def new_tenant() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


async def next_text(events: AsyncIterator[tuple[str, Any]]) -> str:
    async for kind, value in events:
        if kind == "text":
            return value
    raise AssertionError("the stream ended without text")


async def test_the_first_chunk_arrives_while_the_backend_is_still_generating(stack, backend, face) -> None:  # type: ignore[no-untyped-def]
    backend.script["gated"] = [Fault(kind="gate", chunks=2)]
    backend.gate = asyncio.Event()
    tenant, finished = new_tenant(), backend.completed
    events = await face.open("gated", tenant)
    first = await asyncio.wait_for(next_text(events), PATIENCE_S)  # a buffering router times out here
    assert ANSWER.startswith(first) and first
    assert backend.completed == finished, "the client had its first chunk before the backend finished"
    backend.gate.set()
    rest = [item async for item in events]
    assert first + "".join(v for k, v in rest if k == "text") == ANSWER
    assert backend.completed == finished + 1
    usage = next(v for k, v in rest if k == "usage")
    assert usage == (PROMPT_WORDS, len(ANSWER.split()))  # the backend's own counts, not estimates
    assert [v for k, v in rest if k == "finish"] == ["stop"]
    [call] = await settled(stack, tenant)
    assert (call["model"], call["status"]) == ("gated", "CALL_STATUS_OK")
    assert (call["input_tokens"], call["output_tokens"]) == usage
    assert call["cost_micro_usd"] == price(stack, "gated", *usage)


async def test_finish_reason_and_usage_are_the_backends(stack, face) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    items = [item async for item in await face.open("plain", tenant, max_tokens=3)]
    assert "".join(v for k, v in items if k == "text") == "echo: one two"
    assert [v for k, v in items if k == "finish"] == ["length"]
    assert [v for k, v in items if k == "usage"] == [(PROMPT_WORDS, 3)]
    [call] = await settled(stack, tenant)
    assert call["output_tokens"] == 3


async def test_a_client_that_leaves_cancels_the_backend_call_and_pays_what_it_received(  # type: ignore[no-untyped-def]
        stack, backend, face) -> None:
    backend.script["gated"] = [Fault(kind="gate", chunks=3)]
    backend.gate = asyncio.Event()  # never set: only a cancelled call ends this backend stream
    tenant, finished, left = new_tenant(), backend.completed, len(backend.disconnects)
    events = await face.open("gated", tenant)
    await asyncio.wait_for(next_text(events), PATIENCE_S)
    await face.close()
    for _ in range(int(PATIENCE_S / 0.02)):  # the router cancels the adapters, which close the backend
        if len(backend.disconnects) > left:
            break
        await asyncio.sleep(0.02)
    assert len(backend.disconnects) == left + 1 and backend.completed == finished
    [call] = await settled(stack, tenant)
    assert (call["model"], call["status"]) == ("gated", "CALL_STATUS_ERROR")
    # Billed: the prompt, and at most the three chunks the backend sent ("echo:", " one", " two").
    assert call["input_tokens"] > 0 and 0 < call["output_tokens"] <= estimate_tokens("echo: one two")
    assert call["cost_micro_usd"] == price(stack, "gated", call["input_tokens"], call["output_tokens"]) > 0
    assert stack.ledger.usage(tenant).total_cost_micro_usd == call["cost_micro_usd"]


@pytest.mark.parametrize(("model", "fault", "code", "status"), [
    pytest.param("stalls", Fault(kind="stall", chunks=2), "deadline_exceeded", "CALL_STATUS_TIMEOUT", id="stalls"),
    pytest.param("cut", Fault(kind="truncate", chunks=2), "unavailable", "CALL_STATUS_ERROR", id="closes"),
    pytest.param("garbage", Fault(kind="garbage", chunks=2), "unavailable", "CALL_STATUS_ERROR", id="malformed"),
])
async def test_a_backend_failing_mid_stream_ends_it_with_an_error_and_bills_the_tokens_received(  # type: ignore[no-untyped-def]
        stack, backend, face, model, fault, code, status) -> None:
    backend.script[model] = [fault]
    tenant = new_tenant()
    events = await face.open(model, tenant)
    received: list[str] = []
    with pytest.raises(StreamFailed) as failed:
        async for kind, value in events:
            if kind == "text":
                received.append(value)
            assert kind == "text", "no finish, no usage: the answer is incomplete"
    assert "".join(received) == "echo: one"  # the two chunks sent before the fault reached the client
    # gRPC's status name; OpenAI's error code in the HTTP face's terminal event.
    expected = code if face.name == "grpc" else {"deadline_exceeded": "timeout",
                                                 "unavailable": "service_unavailable"}[code]
    assert failed.value.code == expected and "broke off mid-stream" in failed.value.message
    [call] = await settled(stack, tenant)
    assert (call["model"], call["status"]) == (model, status)
    # The adapters' account: the prompt and the streamed text, estimated (the backend reported no usage).
    assert call["output_tokens"] == estimate_tokens("echo: one") and call["input_tokens"] > 0
    assert call["cost_micro_usd"] == price(stack, model, call["input_tokens"], call["output_tokens"]) > 0


async def test_a_refusal_before_the_first_chunk_is_a_proper_error(stack, face) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    await asyncio.to_thread(stack.ledger.set_budget, tenant, "month", 1)  # one micro-dollar: refused
    with pytest.raises(StreamFailed) as refused:
        async for kind, _ in await face.open("plain", tenant):
            assert kind != "text", "a refused request streams nothing"
    assert refused.value.code == {"http": "http 429", "grpc": "resource_exhausted"}[face.name]
    assert not ledger_calls(stack, tenant)


async def test_a_backend_failing_before_its_first_chunk_is_a_plain_error(stack, backend, face) -> None:  # type: ignore[no-untyped-def]
    backend.script["fails"] = [Fault(kind="status", status=500)]
    tenant = new_tenant()
    with pytest.raises(StreamFailed) as failed:
        async for kind, _ in await face.open("fails", tenant):
            assert kind != "text"
    assert failed.value.code == {"http": "http 503", "grpc": "unavailable"}[face.name]
    calls = await settled(stack, tenant)
    assert [c["status"] for c in calls] == ["CALL_STATUS_ERROR"] * 2  # the fixed policy tried again


async def test_a_stream_without_a_request_id_is_authorized_as_the_routers_own(  # type: ignore[no-untyped-def]
        stack, face, monkeypatch) -> None:
    """The HTTP face names the stream before routing it, but the id is still the router's own: no
    retry can carry it, so Authorize says so (with in-memory budgets metering then writes no
    reservation row on the way in: tests/test_metering_totals.py). A client's id is not."""
    meter, flags = stack.router_core.meter, []
    real = meter.authorize

    async def spy(*args: Any, **kwargs: Any) -> Any:
        flags.append(kwargs.get("generated"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(meter, "authorize", spy)
    tenant = new_tenant()
    events = await face.open("plain", tenant)
    assert "".join([value async for kind, value in events if kind == "text"]) == ANSWER
    assert [row["status"] for row in await settled(stack, tenant)] == ["CALL_STATUS_OK"]
    assert flags == [True]
