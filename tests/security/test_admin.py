"""Admin separated from the public faces (issue 15, item 2), over a real stack on Postgres:
LoadPolicy needs an admin key; ``/metrics`` is not on the public HTTP port; the tenant label of
the cost metric holds only tenants known by their keys, everything else folded into "other"."""

from __future__ import annotations

import aiohttp
import grpc
import prometheus_client
import pytest

from security.conftest import bearer, chat, new_tenant, post_chat
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.router.auth import bearer_metadata

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def load_policy(stack, source: str, key: str | None) -> router_pb2.PolicyInfo:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(stack.router_target) as channel:
        return await router_pb2_grpc.RouterServiceStub(channel).LoadPolicy(
            router_pb2.LoadPolicyRequest(source=source), timeout=30,
            metadata=bearer_metadata(key) if key is not None else None)


async def serving(stack) -> str:  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(stack.router_target) as channel:
        info = await router_pb2_grpc.RouterServiceStub(channel).GetPolicy(
            router_pb2.GetPolicyRequest(), timeout=10, metadata=bearer_metadata(stack.admin_key))
    return f"{info.kind}@{info.source}"


# --- the row: "LoadPolicy" on the unauthenticated port → now refused --------------------

async def test_load_policy_without_an_admin_key_is_refused_and_changes_nothing(stack) -> None:  # type: ignore[no-untyped-def]
    before = await serving(stack)
    for key, code in ((None, grpc.StatusCode.UNAUTHENTICATED), ("xrk_forged", grpc.StatusCode.UNAUTHENTICATED),
                      (stack.tenant_key(new_tenant()), grpc.StatusCode.PERMISSION_DENIED)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await load_policy(stack, "cheapest", key)
        assert error.value.code() == code
    assert "LoadPolicy needs an admin key" in error.value.details()
    assert await serving(stack) == before


async def test_an_admin_key_loads_a_policy(stack) -> None:  # type: ignore[no-untyped-def]
    before = await serving(stack)
    try:
        info = await load_policy(stack, "cheapest", stack.admin_key)
        assert info.kind == "cheapest" and await serving(stack) == "cheapest@cheapest"
    finally:
        await load_policy(stack, before.split("@", 1)[1], stack.admin_key)
    assert await serving(stack) == before


# --- the row: "/metrics on the public HTTP port" → not there -----------------------------

async def test_metrics_are_not_served_on_the_public_http_port(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant("spender")
    assert (await post_chat(stack, chat(prompt), bearer(stack.tenant_key(tenant))))[0] == 200
    async with aiohttp.ClientSession() as http:
        for headers in ({}, bearer(stack.admin_key)):
            async with http.get(stack.http_url + "/metrics", headers=headers) as response:
                assert response.status == 404
                assert "xrouter_cost_usd" not in await response.text()
    # What the metrics port (XROUTER_ROUTER_METRICS_PORT) serves does hold the spend.
    assert f'tenant="{tenant}"' in prometheus_client.generate_latest().decode()


def cost_by_tenant() -> dict[str, float]:
    totals: dict[str, float] = {}
    for metric in prometheus_client.REGISTRY.collect():
        if metric.name == "xrouter_cost_usd":
            for sample in metric.samples:
                if sample.name == "xrouter_cost_usd_total":
                    totals[sample.labels["tenant"]] = totals.get(sample.labels["tenant"], 0.0) + sample.value
    return totals


async def test_tenant_labels_are_bounded_to_tenants_known_by_their_keys(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    before = cost_by_tenant()
    # An admin may name any tenant: such names must not become label values (unbounded series).
    named = [new_tenant("named") for _ in range(3)]
    for tenant in named:
        status, body, _ = await post_chat(stack, chat(prompt, tenant=tenant), bearer(stack.admin_key))
        assert status == 200
    after = cost_by_tenant()
    assert not set(named) & set(after)
    assert after["other"] == pytest.approx(before.get("other", 0.0) + 3 * body["xrouter"]["total_cost_usd"])
    keyed = new_tenant("keyed")
    assert (await post_chat(stack, chat(prompt), bearer(stack.tenant_key(keyed))))[0] == 200
    assert cost_by_tenant()[keyed] == pytest.approx(body["xrouter"]["total_cost_usd"])
