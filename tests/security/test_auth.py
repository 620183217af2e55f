"""API keys → tenants on both public faces (issue 15, item 1), over a real stack on Postgres: no key
or a wrong key is 401 / UNAUTHENTICATED and bills nothing; the tenant comes from the key, a tenant
key naming another tenant is 403 / PERMISSION_DENIED; an admin key may act for a named tenant
(audited); a revoked key stops working within the router's cache bound."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import openai
import pytest

from security.conftest import bearer, billed_requests, chat, new_tenant, post_chat
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import metrics
from xrouter.common.errors import Unavailable
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.auth import Authenticator, hash_key
from xrouter.metering.ledger import Ledger
from xrouter.metering.store import make_engine
from xrouter.router.auth import Caller, bearer_metadata
from xrouter.router.clients import MeteringClient

pytestmark = pytest.mark.asyncio(loop_scope="module")


def route_request(prompt: str, tenant: str = "") -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                                   tenant=tenant, policy="cheapest")


async def grpc_route(stack, request: router_pb2.RouteRequest, key: str | None, stream: bool = False):  # type: ignore[no-untyped-def]
    metadata = bearer_metadata(key) if key is not None else None
    async with grpc.aio.insecure_channel(stack.router_target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        if stream:
            return [event async for event in stub.RouteStream(request, metadata=metadata, timeout=30)]
        return await stub.Route(request, metadata=metadata, timeout=30)


# --- the row: "X-Tenant: acme-corp, no key" → was 200 and billed; now 401 -----------------

async def test_x_tenant_without_a_key_is_401_and_bills_nobody(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant("acme-corp")
    status, body, headers = await post_chat(stack, chat(prompt), headers={"X-Tenant": tenant})
    assert status == 401
    assert body["error"]["message"].startswith("missing API key")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert billed_requests(stack, tenant) == 0


@pytest.mark.parametrize("authorization", ["Bearer xrk_not-a-key", "Basic dXNlcjpwYXNz", "Bearer ", "xrk_bare"])
async def test_a_wrong_or_malformed_key_is_401(stack, prompt, authorization: str) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    status, body, _ = await post_chat(stack, chat(prompt, tenant=tenant), headers={"Authorization": authorization})
    assert status == 401, body
    assert billed_requests(stack, tenant) == 0


async def test_the_models_list_needs_a_key_too(stack) -> None:  # type: ignore[no-untyped-def]
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(stack.http_url + "/v1/models") as response:
            assert response.status == 401
        async with http.get(stack.http_url + "/v1/models", headers=bearer(stack.tenant_key(new_tenant()))) as response:
            assert response.status == 200 and (await response.json())["data"][0]["id"] == "xrouter"


async def test_the_tenant_comes_from_the_key_with_the_official_openai_client(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant("acme")
    async with openai.AsyncOpenAI(base_url=stack.http_url + "/v1", api_key=stack.tenant_key(tenant),
                                  max_retries=0, timeout=30.0) as client:
        reply = await client.chat.completions.create(
            model="xrouter", messages=[{"role": "user", "content": prompt}],
            extra_body={"xrouter": {"policy": "cheapest"}})
    assert reply.choices[0].message.content
    assert billed_requests(stack, tenant) == 1


@pytest.mark.parametrize("where", ["header", "body"])
async def test_a_tenant_key_naming_another_tenant_is_403_and_bills_neither(stack, prompt, where: str) -> None:  # type: ignore[no-untyped-def]
    own, other = new_tenant("own"), new_tenant("victim")
    headers = bearer(stack.tenant_key(own))
    body = chat(prompt)
    if where == "header":
        headers["X-Tenant"] = other
    else:
        body["xrouter"]["tenant"] = other
    status, reply, _ = await post_chat(stack, body, headers)
    assert status == 403
    assert reply["error"]["message"] == f"tenant: this API key belongs to tenant {own!r} and may not act for {other!r}"
    assert billed_requests(stack, own) == 0 and billed_requests(stack, other) == 0


async def test_naming_its_own_tenant_is_allowed(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    status, _, _ = await post_chat(stack, chat(prompt), {**bearer(stack.tenant_key(tenant)), "X-Tenant": tenant})
    assert status == 200 and billed_requests(stack, tenant) == 1


async def test_a_tenant_named_twice_differently_is_400_and_bills_nobody(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    """X-Tenant and xrouter.tenant naming two tenants: neither is silently dropped, even for an admin."""
    first, second = new_tenant("first"), new_tenant("second")
    status, reply, _ = await post_chat(stack, chat(prompt, tenant=first), {**bearer(stack.admin_key), "X-Tenant": second})
    assert status == 400
    assert reply["error"]["param"] == "xrouter.tenant"
    assert reply["error"]["message"] == (f"xrouter.tenant: names tenant {first!r} but the X-Tenant header names "
                                         f"{second!r}; name it once")
    assert billed_requests(stack, first) == 0 and billed_requests(stack, second) == 0
    status, _, _ = await post_chat(stack, chat(prompt, tenant=first), {**bearer(stack.admin_key), "X-Tenant": first})
    assert status == 200 and billed_requests(stack, first) == 1  # the same tenant twice is one tenant


async def test_grpc_x_tenant_metadata_is_the_header_honoured_checked_and_never_ignored(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    own, other = new_tenant("own"), new_tenant("victim")

    async def route(request: router_pb2.RouteRequest, key: str, tenant: str):  # type: ignore[no-untyped-def]
        async with grpc.aio.insecure_channel(stack.router_target) as channel:
            return await router_pb2_grpc.RouterServiceStub(channel).Route(
                request, metadata=(*bearer_metadata(key), ("x-tenant", tenant)), timeout=30)

    assert (await route(route_request(prompt), stack.admin_key, own)).answer  # an admin acts for it
    assert billed_requests(stack, own) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:  # a tenant key may not name another here either
        await route(route_request(prompt), stack.tenant_key(own), other)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await route(route_request(prompt, own), stack.admin_key, other)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"tenant: names tenant {own!r} but the x-tenant header names {other!r}")
    assert billed_requests(stack, own) == 1 and billed_requests(stack, other) == 0


async def test_grpc_route_and_stream_without_a_key_are_unauthenticated(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    for stream in (False, True):
        for key in (None, "xrk_wrong"):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await grpc_route(stack, route_request(prompt, tenant), key, stream)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, (stream, key)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async with grpc.aio.insecure_channel(stack.router_target) as channel:
            await router_pb2_grpc.RouterServiceStub(channel).GetPolicy(router_pb2.GetPolicyRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert billed_requests(stack, tenant) == 0


async def test_grpc_bills_the_keys_tenant_and_refuses_another(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    own, other = new_tenant("own"), new_tenant("victim")
    key = stack.tenant_key(own)
    reply = await grpc_route(stack, route_request(prompt), key)
    assert reply.answer and billed_requests(stack, own) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await grpc_route(stack, route_request(prompt, other), key, stream=True)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details().startswith("tenant: this API key belongs to tenant")
    assert billed_requests(stack, other) == 0 and billed_requests(stack, own) == 1


async def test_an_admin_key_acts_for_a_named_tenant_and_is_audited(stack, prompt, caplog) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant("customer")
    admin_id = stack.ledger.list_api_keys("stack-admin")[0].key_id
    counted = metrics.ADMIN_ACTING.labels(admin_id)._value.get()  # noqa: SLF001 - the counter's value
    with caplog.at_level(logging.WARNING, logger="xrouter.router.auth"):
        status, _, _ = await post_chat(stack, chat(prompt, tenant=tenant), bearer(stack.admin_key))
        events = [e async for e in grpc_route_events(stack, prompt, tenant)]
    assert status == 200 and events[-1].HasField("done")
    assert billed_requests(stack, tenant) == 2
    audit = [r.getMessage() for r in caplog.records if "acts for tenant" in r.getMessage()]
    assert audit == [f"audit: admin key {admin_id} acts for tenant {tenant!r}"] * 2
    assert metrics.ADMIN_ACTING.labels(admin_id)._value.get() == counted + 2  # noqa: SLF001


async def grpc_route_events(stack, prompt: str, tenant: str):  # type: ignore[no-untyped-def]
    for event in await grpc_route(stack, route_request(prompt, tenant), stack.admin_key, stream=True):
        yield event


async def test_a_revoked_key_stops_working_within_the_cache_bound(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    """The stack's router caches keys for 1 s (XROUTER_ROUTER_KEY_CACHE_S): after that a revoked
    key is refused on both faces."""
    tenant = new_tenant()
    key = stack.tenant_key(tenant)
    assert (await post_chat(stack, chat(prompt), bearer(key)))[0] == 200
    key_id = stack.ledger.list_api_keys(tenant)[0].key_id
    stack.ledger.revoke_api_key(key_id)
    await asyncio.sleep(1.2)
    status, body, _ = await post_chat(stack, chat(prompt), bearer(key))
    assert status == 401 and body["error"]["message"] == "unknown or revoked API key"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await grpc_route(stack, route_request(prompt), key)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert billed_requests(stack, tenant) == 1


async def test_a_rotated_key_replaces_the_old_one(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    old = stack.tenant_key(tenant)
    old_id = stack.ledger.list_api_keys(tenant)[0].key_id
    new_id, new = stack.ledger.rotate_api_key(old_id)
    assert [k.key_id for k in stack.ledger.list_api_keys(tenant)] == [new_id]
    assert (await post_chat(stack, chat(prompt), bearer(new)))[0] == 200
    assert (await post_chat(stack, chat(prompt), bearer(old)))[0] == 401
    assert billed_requests(stack, tenant) == 1


async def test_metering_resolves_keys_only_for_the_router_and_never_the_service_key(postgres_url) -> None:  # type: ignore[no-untyped-def]
    """Metering with auth required: the router's client resolves tenant and admin keys; the
    service key is no client's key; a router with a wrong service key gets UNAVAILABLE (its
    operator's problem), never a caller's 401."""
    service, admin = "svc-" + uuid.uuid4().hex, "adm-" + uuid.uuid4().hex
    ledger = Ledger(make_engine(postgres_url), reservation_ttl_s=300)
    await asyncio.to_thread(ledger.create_schema)
    tenant_id, tenant_key = ledger.create_api_key("acme", "t")
    authenticator = Authenticator(True, frozenset({hash_key(service)}), frozenset({hash_key(admin)}),
                                  ledger.find_tenant_key)
    server = GrpcServer("metering", metering_server.register(ledger, authenticator), TracerProvider())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            router_side = MeteringClient(channel, service)
            assert await router_side.authenticate(hash_key(tenant_key)) == Caller("acme", False, tenant_id)
            assert await router_side.authenticate(hash_key(admin)) == Caller("", True, "configured-admin")
            assert await router_side.authenticate(hash_key(service)) is None
            assert await router_side.authenticate(hash_key("xrk_unknown")) is None
            for wrong in ("", tenant_key, "not-the-service-key"):
                with pytest.raises(Unavailable, match="metering refused the router's service key"):
                    await MeteringClient(channel, wrong).authenticate(hash_key(tenant_key))
    finally:
        await server.stop(0)
        ledger.engine.dispose()
