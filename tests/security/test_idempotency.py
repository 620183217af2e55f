"""Issue 15 item 4: idempotent retries end to end, over both faces, on a Postgres ledger.

Before: the same request_id twice paid every model call again, then answered 409 (money spent,
answer lost), and a reused id skipped the budget check. Now a retry from the same tenant gets the
first response back (stored with the settled request) without any model call; while the first is
in flight it waits (bounded), then 409 before spending; another tenant's id is 403 (a refusal that
no retry can change, so not a 409, which OpenAI clients retry); new work is always budget-checked.
Model calls are counted at the adapters service, where the money would be spent."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from security.ledger_stack import arc_prompt, ledger_rows, postgres_stack
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.router.auth import bearer_interceptors

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

UNRECORDED = "a prompt nobody recorded, so every replayed model call fails"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(postgres_server_url):  # type: ignore[no-untyped-def]
    async with postgres_stack(postgres_server_url) as (stack, counting):
        yield stack, counting


@pytest_asyncio.fixture(loop_scope="module")
async def faces(running):  # type: ignore[no-untyped-def]
    """route(face, tenant, request_id, prompt) → (status, answer or error message, replayed)."""
    stack, _ = running
    # The stack's admin key acting for each test's tenants (tenants are named per request).
    async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key)) as channel, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                  headers={"Authorization": f"Bearer {stack.admin_key}"}) as http:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def route(face: str, tenant: str, request_id: str, prompt: str | None = None) -> tuple[Any, str, bool]:
            prompt = prompt or arc_prompt()
            if face == "grpc":
                try:
                    reply = await stub.Route(router_pb2.RouteRequest(
                        messages=[common_pb2.ChatMessage(role="user", content=prompt)], tenant=tenant,
                        request_id=request_id), timeout=60)
                except grpc.aio.AioRpcError as error:
                    return error.code(), error.details(), False
                return grpc.StatusCode.OK, reply.answer, reply.replayed
            async with http.post(stack.http_url + "/v1/chat/completions", json={
                    "model": "xrouter", "messages": [{"role": "user", "content": prompt}],
                    "xrouter": {"tenant": tenant, "request_id": request_id}}) as response:
                body = await response.json()
            if response.status != 200:
                return response.status, body["error"]["message"], False
            return 200, body["choices"][0]["message"]["content"], body["xrouter"]["replayed"]
        yield route


def ids() -> tuple[str, str]:
    return f"t-{uuid.uuid4().hex[:8]}", f"req-{uuid.uuid4().hex}"


OK = {"http": 200, "grpc": grpc.StatusCode.OK}
CONFLICT = {"http": 409, "grpc": grpc.StatusCode.ALREADY_EXISTS}
FORBIDDEN = {"http": 403, "grpc": grpc.StatusCode.PERMISSION_DENIED}


@pytest.mark.parametrize(("first", "retry"), [("http", "http"), ("grpc", "grpc"), ("http", "grpc")])
async def test_a_retry_returns_the_first_answer_without_calling_a_model(running, faces, first, retry) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    tenant, request_id = ids()
    status, answer, replayed = await faces(first, tenant, request_id)
    assert status == OK[first] and answer and not replayed
    rows, calls = ledger_rows(stack), counting.calls
    for _ in range(2):
        again = await faces(retry, tenant, request_id)
        assert again == (OK[retry], answer, True)
    assert (ledger_rows(stack), counting.calls) == (rows, calls)  # nothing called, billed or reserved
    assert stack.ledger.usage(tenant).requests == 1


@pytest.mark.parametrize("face", ["http", "grpc"])
async def test_another_tenant_reusing_an_id_is_refused_before_spending(running, faces, face) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    owner, request_id = ids()
    assert (await faces(face, owner, request_id))[0] == OK[face]
    rows, calls = ledger_rows(stack), counting.calls
    status, message, _ = await faces(face, "globex", request_id)
    assert status == FORBIDDEN[face] and "another tenant" in message and owner not in message
    assert (ledger_rows(stack), counting.calls) == (rows, calls)


@pytest.mark.parametrize("face", ["http", "grpc"])
async def test_the_same_id_for_a_different_request_is_refused_before_spending(running, faces, face) -> None:  # type: ignore[no-untyped-def]
    # Returning the first answer to a different question would be wrong; so would paying again.
    stack, counting = running
    tenant, request_id = ids()
    assert (await faces(face, tenant, request_id))[0] == OK[face]
    rows, calls = ledger_rows(stack), counting.calls
    status, message, _ = await faces(face, tenant, request_id, prompt="a different question")
    assert status == CONFLICT[face] and "different request" in message
    assert (ledger_rows(stack), counting.calls) == (rows, calls)


async def test_a_retry_while_the_first_is_in_flight_waits_for_its_answer(running, faces) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    tenant, request_id = ids()
    calls = counting.calls
    counting.delay_s = 1.0  # the first attempt's model call takes a second
    try:
        first = asyncio.create_task(faces("http", tenant, request_id))
        await asyncio.sleep(0.3)
        retried = await faces("grpc", tenant, request_id)
        original = await first
    finally:
        counting.delay_s = 0.0
    assert original[0] == 200 and retried == (grpc.StatusCode.OK, original[1], True)
    assert counting.calls == calls + 1  # one model call for both


@pytest.mark.parametrize("face", ["http", "grpc"])
async def test_a_retry_that_waited_long_enough_is_409_before_spending(running, faces, face) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    tenant, request_id = ids()
    limits = stack.router_core.limits
    stack.router_core.limits = dataclasses.replace(limits, in_flight_wait_s=0.2)
    counting.delay_s = 1.5
    try:
        first = asyncio.create_task(faces("http", tenant, request_id))
        await asyncio.sleep(0.3)
        calls = counting.calls
        status, message, _ = await faces(face, tenant, request_id)
        assert status == CONFLICT[face] and "still being answered" in message
        assert counting.calls == calls  # refused before spending
        original = await first
    finally:
        counting.delay_s = 0.0
        stack.router_core.limits = limits
    assert await faces(face, tenant, request_id) == (OK[face], original[1], True)  # later: the answer


async def test_new_work_is_always_budget_checked_and_a_replay_spends_nothing(running, faces) -> None:  # type: ignore[no-untyped-def]
    stack, counting = running
    tenant, request_id = ids()
    assert (await faces("http", tenant, request_id))[0] == 200
    stack.ledger.set_budget(tenant, "day", 0)  # the tenant may spend nothing more today
    calls = counting.calls
    status, message, _ = await faces("http", tenant, f"req-{uuid.uuid4().hex}")
    assert status == 429 and "budget exceeded" in message
    # A reused id cannot sneak new work past the budget: a different request is refused, the same
    # one is answered from the ledger, and neither calls a model.
    assert (await faces("http", tenant, request_id, prompt="something new"))[0] == 409
    assert (await faces("grpc", tenant, request_id))[:1] == (grpc.StatusCode.OK,)
    assert counting.calls == calls


@pytest.mark.parametrize("face", ["http", "grpc"])
async def test_a_failed_request_is_replayed_as_its_error_not_run_again(running, faces, face) -> None:  # type: ignore[no-untyped-def]
    # Its calls were made (and recorded) under this id; running it again under the same id would
    # collide with them. The client learns what happened and uses a new id to try again.
    stack, counting = running
    tenant, request_id = ids()
    status, message, _ = await faces(face, tenant, request_id, prompt=UNRECORDED)
    assert status in (503, grpc.StatusCode.UNAVAILABLE) and "no recording" in message
    rows, calls = ledger_rows(stack), counting.calls
    again, replayed_message, _ = await faces(face, tenant, request_id, prompt=UNRECORDED)
    assert again == status and "already failed" in replayed_message and "no recording" in replayed_message
    assert (ledger_rows(stack), counting.calls) == (rows, calls)


async def test_an_abandoned_attempt_is_refused_not_re_run(running, faces, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # An attempt that died without settling (a router crash) leaves a reservation that expires.
    stack, counting = running
    tenant, request_id = ids()
    stack.ledger.authorize(request_id, tenant, 1_000)
    later = stack.ledger.now() + dt.timedelta(hours=1)
    monkeypatch.setattr(stack.ledger, "now", lambda: later)
    rows, calls = ledger_rows(stack), counting.calls
    status, message, _ = await faces("grpc", tenant, request_id)
    assert status == grpc.StatusCode.ALREADY_EXISTS and "never finished" in message
    assert (ledger_rows(stack), counting.calls) == (rows, calls)


async def test_answers_are_kept_only_under_a_client_chosen_id(running, faces) -> None:  # type: ignore[no-untyped-def]
    # A request without request_id gets a generated one; its answer is not stored (only a client
    # that chose an id retries with it), so sending the generated id back is refused, not re-run.
    stack, counting = running
    tenant, _ = ids()
    async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key)) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=arc_prompt())], tenant=tenant), timeout=60)
    rows, calls = ledger_rows(stack), counting.calls
    status, message, _ = await faces("http", tenant, reply.request_id)
    assert status == 409 and "not kept" in message
    assert (ledger_rows(stack), counting.calls) == (rows, calls)
