"""The HTTP face against the official ``openai`` client, field by field: each chat-completions field
is honoured (it reaches the backend, and the answer shows it) or refused with a 400 whose ``param``
names it — never dropped. A real stack (gRPC services, a Postgres ledger) in front of a local server
that speaks OpenAI's protocol; the serving policy is a cascade (it compares two models' answers), and
a catalog model named as ``model`` is called directly."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import grpc
import openai
import pytest
import pytest_asyncio
import sqlalchemy
from adapters_openai_server import OpenAIProtocolServer
from test_adapters_openai import entry

from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import parse_catalog
from xrouter.adapters.core import AdapterCore
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.local_stack import InProcessStack
from xrouter.router.auth import bearer_interceptors
from xrouter.router.openai_request import PRESETS

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

PROMPT = "one two three four five"
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look a word up",
                                           "parameters": {"type": "object",
                                                          "properties": {"query": {"type": "string"}}}}}]


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
    catalog = parse_catalog({"models": [entry(model, backend.url) for model in ("alpha", "beta")]})
    core = AdapterCore(catalog, {"openai": OpenAIBackend()})
    running = await InProcessStack(f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}",
                                   policy="cascade:alpha,beta", adapter_core=core).start()
    yield running
    await running.stop()
    await core.aclose()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(stack):  # type: ignore[no-untyped-def]
    async with openai.AsyncOpenAI(base_url=stack.http_url + "/v1", api_key=stack.admin_key, max_retries=0,
                                  timeout=30.0) as running:
        yield running


def ask(tenant: str, **fields: Any) -> dict[str, Any]:
    """The create() arguments for one request of ``tenant`` (the admin key acts for it)."""
    extra = fields.pop("extra_body", {})
    return {"model": "xrouter", "messages": [{"role": "user", "content": PROMPT}], **fields,
            "extra_body": {**extra, "xrouter": {"tenant": tenant}}}


def new_tenant() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


async def test_a_plain_completion_through_the_cascade(stack, backend, client) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    reply = await client.chat.completions.create(**ask(tenant))
    assert reply.choices[0].message.content == f"echo: {PROMPT}"
    assert reply.choices[0].finish_reason == "stop" and reply.model == "xrouter"
    assert reply.usage is not None and reply.usage.completion_tokens == 2 * len(f"echo: {PROMPT}".split())
    assert stack.ledger.usage(tenant).requests == 1


async def test_sampling_fields_reach_every_call_and_the_answer_shows_the_stop(stack, backend, client) -> None:  # type: ignore[no-untyped-def]
    before = len(backend.bodies)
    reply = await client.chat.completions.create(**ask(
        new_tenant(), temperature=0.25, top_p=0.5, stop=[" three"], seed=7, user="end-user-1",
        max_completion_tokens=50))
    assert reply.choices[0].message.content == "echo: one two"  # cut before the stop sequence
    sent = backend.bodies[before:]
    assert len(sent) == 2  # the cascade's two cheap calls, both with every field
    for body in sent:
        assert (body["temperature"], body["top_p"], body["stop"], body["seed"], body["user"], body["max_tokens"]) \
            == (0.25, 0.5, [" three"], 7, "end-user-1", 50)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_finish_reason_is_the_backends(client, stream) -> None:  # type: ignore[no-untyped-def]
    create = ask(new_tenant(), model="alpha", max_tokens=2, stream=stream)
    if not stream:
        reply = await client.chat.completions.create(**create)
        assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("echo: one", "length")
        return
    chunks = [chunk async for chunk in await client.chat.completions.create(**create)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


async def test_streaming_with_usage(client) -> None:  # type: ignore[no-untyped-def]
    chunks = [chunk async for chunk in await client.chat.completions.create(
        **ask(new_tenant(), stream=True, stream_options={"include_usage": True}))]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {PROMPT}"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


async def test_a_catalog_model_is_called_directly_and_metered(stack, backend, client) -> None:  # type: ignore[no-untyped-def]
    tenant, before = new_tenant(), len(backend.bodies)
    reply = await client.chat.completions.create(**ask(tenant, model="beta"))
    assert reply.model == "beta" and reply.choices[0].message.content == f"echo: {PROMPT}"
    assert [body["model"] for body in backend.bodies[before:]] == ["beta"]
    usage = stack.ledger.usage(tenant)
    assert [m.model for m in usage.models] == ["beta"] and usage.total_cost_micro_usd > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_tools_pass_through_to_a_directly_called_model(backend, client, stream) -> None:  # type: ignore[no-untyped-def]
    before = len(backend.bodies)
    create = ask(new_tenant(), model="alpha", tools=TOOLS,
                 tool_choice={"type": "function", "function": {"name": "lookup"}}, stream=stream)
    if stream:
        chunks = [chunk async for chunk in await client.chat.completions.create(**create)]
        pieces = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
        name = "".join(p.function.name or "" for p in pieces if p.function)
        arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        reply = await client.chat.completions.create(**create)
        [call] = reply.choices[0].message.tool_calls or []
        assert call.id == "call_test_1" and reply.choices[0].message.content is None
        name, arguments, finish = call.function.name, call.function.arguments, [reply.choices[0].finish_reason]
    assert (name, json.loads(arguments), finish) == ("lookup", {"query": PROMPT}, ["tool_calls"])
    [body] = backend.bodies[before:]
    assert body["tools"] == TOOLS and body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}


async def test_the_grpc_face_takes_the_same_options(stack, backend) -> None:  # type: ignore[no-untyped-def]
    before = len(backend.bodies)
    async with grpc.aio.insecure_channel(stack.router_target,
                                         interceptors=bearer_interceptors(stack.admin_key)) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=PROMPT)], tenant=new_tenant(), policy="fixed:beta",
            temperature=0.5, seed=11, stop=["x"], user="u-2", tools_json=json.dumps(TOOLS)), timeout=30)
    [call] = reply.calls
    assert (call.finish_reason, json.loads(call.tool_calls_json)[0]["function"]["name"]) == ("tool_calls", "lookup")
    [body] = backend.bodies[before:]
    assert (body["temperature"], body["seed"], body["stop"], body["user"], body["tools"]) == (0.5, 11, ["x"], "u-2", TOOLS)


async def test_response_format_passes_through_to_a_directly_called_model(client) -> None:  # type: ignore[no-untyped-def]
    reply = await client.chat.completions.create(**ask(new_tenant(), model="alpha",
                                                       response_format={"type": "json_object"}))
    assert json.loads(reply.choices[0].message.content or "") == {"echo": PROMPT}


async def test_sdk_defaults_are_accepted(client) -> None:  # type: ignore[no-untyped-def]
    reply = await client.chat.completions.create(**ask(
        new_tenant(), n=1, store=False, presence_penalty=0, frequency_penalty=0, logprobs=False,
        response_format={"type": "text"},
        messages=[{"role": "developer", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "one two "}, {"type": "text", "text": "three"}]}]))
    assert reply.choices[0].message.content == "echo: one two three"


@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"store": True}, "store"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"extra_body": {"colour": "blue"}}, "colour"),
    ({"tools": TOOLS}, "tools"),  # the cascade compares answers: it cannot return tool calls unchanged
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"stream": True, "stream_options": {"include_obfuscation": False}}, "stream_options.include_obfuscation"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": 3}, "temperature"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages[0].name"),
])
async def test_a_field_not_honoured_is_refused_naming_it(stack, backend, client, fields, param) -> None:  # type: ignore[no-untyped-def]
    tenant, before = new_tenant(), len(backend.bodies)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(**ask(tenant, **fields))
    assert raised.value.param == param and raised.value.type == "invalid_request_error"
    assert raised.value.code in ("unsupported_parameter", "invalid_value")
    assert raised.value.message.startswith(f"{param}: ") or param in raised.value.message
    assert len(backend.bodies) == before and stack.ledger.usage(tenant).requests == 0  # nothing called or billed


async def test_an_unknown_model_is_not_found(client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(**ask(new_tenant(), model="gpt-9"))
    assert (raised.value.code, raised.value.param) == ("model_not_found", "model")


async def test_the_models_list_has_the_router_its_presets_and_the_catalog(client) -> None:  # type: ignore[no-untyped-def]
    ids = [model.id async for model in client.models.list()]
    assert ids == ["xrouter", *(f"xrouter-{p}" for p in PRESETS), "alpha", "beta"]
    assert (await client.models.retrieve("xrouter-cheap")).owned_by == "xrouter"
    assert (await client.models.retrieve("beta")).id == "beta"
    with pytest.raises(openai.NotFoundError) as raised:
        await client.models.retrieve("gpt-9")
    assert raised.value.code == "model_not_found"


@pytest.mark.parametrize("preset", list(PRESETS))
async def test_a_preset_routes_at_its_lambda(stack, client, preset) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    reply = await client.chat.completions.create(**ask(tenant, model=f"xrouter-{preset}"))
    assert reply.model == f"xrouter-{preset}"
    with stack.ledger.engine.connect() as connection:  # the λ the request was settled (and exported) with
        [cost_lambda] = connection.execute(sqlalchemy.text(
            "select cost_lambda from request_summaries where tenant = :tenant"), {"tenant": tenant}).scalars()
    assert cost_lambda == PRESETS[preset]


async def test_a_bad_key_is_invalid_api_key(stack) -> None:  # type: ignore[no-untyped-def]
    async with openai.AsyncOpenAI(base_url=stack.http_url + "/v1", api_key="sk-wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as raised:
            await stranger.chat.completions.create(**ask(new_tenant()))
    assert raised.value.code == "invalid_api_key"


async def test_a_spent_budget_is_429_insufficient_quota_with_when_it_resets(stack, client) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    await asyncio.to_thread(stack.ledger.set_budget, tenant, "month", 1)  # one micro-dollar: refused
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(**ask(tenant))
    assert raised.value.code == "insufficient_quota" and raised.value.status_code == 429
    assert 0 < int(raised.value.response.headers["Retry-After"]) <= 32 * 86_400  # the month's end


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nope", 404, "unknown_url"),
    ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
    ("DELETE", "/v1/models", 405, "method_not_allowed"),
])
async def test_framework_errors_carry_openai_codes(stack, method, path, status, code) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, session.request(
            method, stack.http_url + path, headers={"Authorization": f"Bearer {stack.admin_key}"}) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["code"] == code and error["message"]
