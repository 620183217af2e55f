"""Requests without a client request_id, of a tenant metering just said has no hard budget on the
pool, are admitted without an Authorize round trip; everything is still settled and billed; a budget
set on such a tenant is enforced within the stated window; a client-sent request_id is always
authorized (its retries must find it). The services are real (InProcessStack, SQLite ledger)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import pytest_asyncio
import sqlalchemy as sa
from prometheus_client import REGISTRY

from xrouter.common.errors import ResourceExhausted
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.core import RouteRequest
from xrouter.router.unbudgeted import UnbudgetedTenants

WINDOW_S = 0.5
ON_THE_STACK = pytest.mark.asyncio(loop_scope="module")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_hard_budget_is_remembered_for_the_window_per_tenant_and_pool() -> None:
    clock = Clock()
    tenants = UnbudgetedTenants(1.0, clock)
    assert not tenants.admits("acme", ["a", "b"])
    tenants.note("acme", ["a", "b"], -1, False)
    assert tenants.admits("acme", ["b", "a"])  # the pool, not its order
    assert not tenants.admits("acme", ["a"]) and not tenants.admits("globex", ["a", "b"])
    clock.now += 0.99
    assert tenants.admits("acme", ["a", "b"])
    clock.now += 0.02
    assert not tenants.admits("acme", ["a", "b"])  # expired: ask again


def test_a_budget_or_a_passed_soft_limit_is_never_remembered_and_a_zero_window_never_admits() -> None:
    clock = Clock()
    tenants = UnbudgetedTenants(1.0, clock)
    tenants.note("acme", ["a"], -1, False)
    tenants.note("acme", ["a"], 0, False)  # a hard limit applies now (even one with nothing left)
    assert not tenants.admits("acme", ["a"])
    tenants.note("globex", ["a"], -1, True)  # no hard limit, but past a soft one: metering counts each
    assert not tenants.admits("globex", ["a"])
    never = UnbudgetedTenants(0.0, clock)
    never.note("acme", ["a"], -1, False)
    assert not never.admits("acme", ["a"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("unbudgeted")),
                                   router_env={"XROUTER_ROUTER_UNBUDGETED_ADMISSION_S": str(WINDOW_S)}).start()
    yield running
    await running.stop()


@pytest.fixture(scope="module")
def prompt(recorded, stack) -> str:  # type: ignore[no-untyped-def]
    """A RouterBench prompt every catalog model has a recorded answer for (the catalog replays them)."""
    return next(row[""] for row in recorded.values() if set(stack.router_core.catalog) <= set(row))


def skipped() -> float:
    return REGISTRY.get_sample_value("xrouter_admitted_without_authorize_total") or 0.0


def reservations(stack: InProcessStack, tenant: str) -> list[str]:
    with stack.ledger.engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT request_id FROM reservations WHERE tenant = :t"),
                                       {"t": tenant}).scalars())


@ON_THE_STACK
async def test_an_unbudgeted_tenant_skips_authorize_and_every_request_is_still_billed(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = f"u-{uuid.uuid4().hex[:8]}"
    before = skipped()
    results = [await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant)) for _ in range(4)]
    assert skipped() - before == 3  # the first asked metering; the next three did not need to
    usage = await asyncio.to_thread(stack.ledger.usage, tenant)
    assert usage.requests == 4
    assert usage.total_cost_micro_usd == sum(r.total_cost_micro_usd for r in results) > 0


@ON_THE_STACK
async def test_a_new_budget_is_enforced_within_the_window(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = f"b-{uuid.uuid4().hex[:8]}"
    await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant))  # learns: no budget
    await asyncio.to_thread(stack.ledger.set_budget, tenant, "month", 1)  # one micro-dollar
    before = skipped()
    await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant))  # inside the stated window
    assert skipped() - before == 1
    await asyncio.sleep(WINDOW_S + 0.05)
    with pytest.raises(ResourceExhausted):
        await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant))


@ON_THE_STACK
async def test_a_client_request_id_is_always_authorized(stack, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = f"c-{uuid.uuid4().hex[:8]}"
    await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant))  # learns: no budget
    before = skipped()
    request_id = f"client-{uuid.uuid4().hex}"
    first = await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant, request_id=request_id))
    again = await stack.router_core.route(RouteRequest([("user", prompt)], tenant=tenant, request_id=request_id))
    assert skipped() == before
    assert request_id in reservations(stack, tenant)
    assert again.answer == first.answer and again.total_cost_micro_usd == first.total_cost_micro_usd
    usage = await asyncio.to_thread(stack.ledger.usage, tenant)
    assert usage.requests == 2  # the retry was answered from the ledger, not billed again
