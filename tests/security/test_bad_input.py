"""Issue 15 item 5: every client error is a 4xx / INVALID_ARGUMENT naming its field, checked at the
edge before anything is reserved or spent. One table feeds every field of a routed request its bad
values over both faces (gRPC Route and the OpenAI HTTP face) against a stack whose ledger is real
PostgreSQL (where a 3 KB tenant used to fail the index and read as a database outage), and asserts
the status, the field named, no model called and no ledger row written."""

from __future__ import annotations

import math
import secrets
import uuid
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from security.ledger_stack import arc_prompt, ledger_rows, postgres_stack
from xrouter.api.common.v1 import common_pb2
from xrouter.api.reward.v1 import reward_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.router.auth import bearer_interceptors

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

GPT4 = "gpt-4-1106-preview"
HI = [("user", "hi")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(postgres_server_url):  # type: ignore[no-untyped-def]
    async with postgres_stack(postgres_server_url) as (stack, counting):
        yield stack, counting


@pytest_asyncio.fixture(loop_scope="module")
async def router(running):  # type: ignore[no-untyped-def]
    # The stack's admin key acting for each case's tenant: a well-authenticated caller's bad fields.
    async with grpc.aio.insecure_channel(running[0].router_target,
                                         interceptors=bearer_interceptors(running[0].admin_key)) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="module")
async def http(running):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers={"Authorization": f"Bearer {running[0].admin_key}"}) as session:
        yield session


def case(case_id: str, names: str | tuple[str, ...], **fields: Any):  # type: ignore[no-untyped-def]
    """One bad request: ``fields`` override a good one; ``names`` are the acceptable field names
    (the HTTP face may name its own spelling, e.g. the ``model`` that carries lambda)."""
    return pytest.param(fields, (names,) if isinstance(names, str) else names, id=case_id)


CASES = [
    # the table's rows
    case("tenant-3kb", "tenant", tenant="t" + secrets.token_hex(1500)),
    case("max-cost-1e13", "max_cost_usd", max_cost_usd=1e13),
    case("max-tokens-above-catalog", "max_tokens", max_tokens=100_000),
    # messages
    case("no-messages", "messages", messages=[]),
    case("too-many-messages", "messages", messages=HI * 1001),
    case("unknown-role", "messages[0].role", messages=[("robot", "hi")]),
    case("empty-content", "messages[0].content", messages=[("user", "  ")]),
    case("no-user-message", "messages", messages=[("system", "be brief")]),
    case("oversize-conversation", "messages", messages=[("user", "x" * 200_001)]),
    # tenant and request id: 1-128 characters of letters, digits and . _ : @ -
    case("tenant-129-chars", "tenant", tenant="t" * 129),
    case("tenant-with-space", "tenant", tenant="acme corp"),
    case("tenant-with-slash", "tenant", tenant="acme/../globex"),
    case("tenant-non-ascii", "tenant", tenant="acmé"),
    case("tenant-newline", "tenant", tenant="acme\nX-Tenant: globex"),
    case("request-id-129-chars", "request_id", request_id="r" * 129),
    case("request-id-with-space", "request_id", request_id="bad id"),
    # money: [0.000001, 1000000] dollars (micro-dollars in an int64 ledger), finite
    case("max-cost-negative", "max_cost_usd", max_cost_usd=-0.5),
    case("max-cost-zero", "max_cost_usd", max_cost_usd=0.0),
    case("max-cost-below-a-micro-dollar", "max_cost_usd", max_cost_usd=1e-9),
    case("max-cost-just-over-a-million", "max_cost_usd", max_cost_usd=1_000_000.01),
    case("max-cost-nan", "max_cost_usd", max_cost_usd=math.nan),
    case("max-cost-inf", "max_cost_usd", max_cost_usd=math.inf),
    # lambda: finite, [0, 1e6]
    case("lambda-negative", ("cost_lambda", "model"), cost_lambda=-1.0),
    case("lambda-huge", ("cost_lambda", "model"), cost_lambda=1e7),
    case("lambda-nan", ("cost_lambda", "model"), cost_lambda=math.nan),
    case("lambda-inf", ("cost_lambda", "model"), cost_lambda=math.inf),
    # tokens: [0, the largest max_output_tokens of the allowed models]
    case("max-tokens-negative", "max_tokens", max_tokens=-1),
    case("max-tokens-above-the-allowed-models", "max_tokens", max_tokens=4097, allowed_models=[GPT4]),
    # turns, models, policy
    case("max-turns-99", "max_turns", max_turns=99),
    case("max-turns-negative", "max_turns", max_turns=-1),
    case("unknown-allowed-model", "allowed_models[0]", allowed_models=["gpt-9"]),
    case("more-allowed-models-than-the-catalog", "allowed_models", allowed_models=[GPT4] * 12),
    case("unknown-policy", "policy", policy="smartest"),
    case("policy-300-chars", "policy", policy="p" * 300),
    case("fixed-policy-unknown-model", "policy", policy="fixed:nope"),
    # the reference (scored online): refused before the calls are paid for
    case("reference-unknown-task", "reference.task_type", reference={"task_type": "vibes"}),
    case("reference-choice-without-gold", "reference.gold", reference={"task_type": "multiple_choice"}),
    case("reference-label-without-prompt-id", "reference.prompt_id",
         reference={"task_type": "recorded_label", "dataset": "routerbench"}),
    case("reference-gold-too-long", "reference.gold", reference={"task_type": "exact_match", "gold": "g" * 100_001}),
    case("reference-dataset-too-long", "reference.dataset",
         reference={"task_type": "recorded_label", "dataset": "d" * 300, "prompt_id": "p"}),
    case("reference-prompt-id-with-nul", "reference.prompt_id",  # PostgreSQL text cannot hold NUL
         reference={"task_type": "recorded_label", "dataset": "routerbench", "prompt_id": "p\x00"}),
]


def grpc_request(tenant: str, fields: dict[str, Any]) -> router_pb2.RouteRequest:
    fields = {"messages": HI, "tenant": tenant, **fields}
    message = router_pb2.RouteRequest(
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in fields.pop("messages")])
    if "reference" in fields:
        message.reference.CopyFrom(reward_pb2.Reference(**fields.pop("reference")))
    message.MergeFrom(router_pb2.RouteRequest(**fields))
    return message


def http_body(tenant: str, fields: dict[str, Any]) -> dict[str, Any]:
    fields = {"messages": HI, "tenant": tenant, **fields}
    lam = fields.pop("cost_lambda", None)
    body: dict[str, Any] = {"model": "xrouter" if lam is None else f"xrouter:{lam}",
                            "messages": [{"role": r, "content": c} for r, c in fields.pop("messages")]}
    if "max_tokens" in fields:
        body["max_tokens"] = fields.pop("max_tokens")
    body["xrouter"] = fields  # the router's controls, as the OpenAI client's extra_body sends them
    return body


@pytest.mark.parametrize(("fields", "names"), CASES)
async def test_grpc_refuses_the_field_before_spending(running, router, fields, names) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    before, calls = ledger_rows(stack), counting.calls
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await router.Route(grpc_request(f"t-{uuid.uuid4().hex[:8]}", fields), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert raised.value.details().split(": ", 1)[0] in names, raised.value.details()
    assert len(raised.value.details()) < 1_000  # the bad value is not echoed back whole
    assert (ledger_rows(stack), counting.calls) == (before, calls)


@pytest.mark.parametrize(("fields", "names"), CASES)
async def test_http_refuses_the_field_before_spending(running, http, fields, names) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    before, calls = ledger_rows(stack), counting.calls
    async with http.post(stack.http_url + "/v1/chat/completions",
                         json=http_body(f"t-{uuid.uuid4().hex[:8]}", fields)) as response:
        assert response.status == 400 and response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    accepted = {*names, *(f"xrouter.{name}" for name in names)}
    assert error["param"] in accepted and error["message"].startswith(f"{error['param']}: "), error
    assert (ledger_rows(stack), counting.calls) == (before, calls)


async def test_a_3kb_tenant_in_the_header_is_a_400_and_the_next_request_is_served(running, http) -> None:  # type: ignore[no-untyped-def]
    # The row: Postgres refused the index row, metering called it an outage (503) and the
    # replica stopped authorizing. Now the edge refuses it, and the ledger keeps serving.
    stack, counting = running
    before, calls = ledger_rows(stack), counting.calls
    url = stack.http_url + "/v1/chat/completions"
    body = {"model": "xrouter", "messages": [{"role": "user", "content": arc_prompt()}]}
    async with http.post(url, json=body, headers={"X-Tenant": "t" + secrets.token_hex(1500)}) as response:
        assert response.status == 400 and (await response.json())["error"]["param"] == "tenant"
    assert (ledger_rows(stack), counting.calls) == (before, calls)
    async with http.post(url, json=body, headers={"X-Tenant": "acme"}) as response:
        assert response.status == 200, await response.text()


async def test_the_largest_allowed_values_are_served(running, router) -> None:  # type: ignore[no-untyped-def]
    # The bounds are not off by one: each limit itself is accepted (and a cap of a million dollars
    # fits the ledger's int64 micro-dollars).
    stack, _ = running
    tenant = "T" * 64 + ".example_corp:eu-1@acme"
    reply = await router.Route(grpc_request(tenant, {
        "messages": [("user", arc_prompt())], "max_cost_usd": 1_000_000.0, "max_tokens": 4096,
        "allowed_models": [GPT4], "cost_lambda": 1e6, "request_id": "r" * 128}), timeout=30)
    assert reply.answer and reply.request_id == "r" * 128
    assert stack.ledger.usage(tenant).requests == 1


async def test_framework_errors_are_openai_shaped_json(running, http) -> None:  # type: ignore[no-untyped-def]
    stack, _ = running
    async with http.get(stack.http_url + "/v1/nope") as response:
        assert response.status == 404 and (await response.json())["error"]["type"] == "invalid_request_error"
    async with http.get(stack.http_url + "/v1/chat/completions") as response:
        assert response.status == 405 and "POST" in response.headers["Allow"]
        assert (await response.json())["error"]["message"]
    async with http.post(stack.http_url + "/v1/chat/completions", data=b"x" * (9 * 1024 * 1024),
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413 and (await response.json())["error"]["param"] == "body"


async def test_an_uncaught_exception_is_a_json_500_without_internals(running, http, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A bug anywhere under the handler (here: the core raising what no code expects) must still
    # answer in OpenAI's shape, and say nothing of the exception's message.
    stack, _ = running

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(stack.router_core, "route", broken)
    async with http.post(stack.http_url + "/v1/chat/completions",
                         json={"model": "xrouter", "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status == 500 and response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "secret" not in error["message"]
