"""Budgets under concurrency, soft and per-model limits, reservations consumed by records, usage
buckets — on SQLite and real PostgreSQL, through the ledger and through a real gRPC server."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import InvalidArgument, ResourceExhausted
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.auth import hash_key
from xrouter.metering.budgets import _outstanding, _spent
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord, Ledger, Settlement
from xrouter.metering.store import make_engine
from xrouter.metering.totals import BudgetTotals

from ledger_clock import NOON, UTC, Clock  # noqa: E402 - tests/ helper module
LIMIT = 10_000_000
ESTIMATE = 100_000


@pytest.fixture()
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture()
def ledger(database_url: str, clock: Clock):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url, pool_size=20) if "postgresql" in database_url else make_engine(database_url)
    ledger = Ledger(engine, 3600.0, clock=clock)
    ledger.create_schema()
    yield ledger
    engine.dispose()


def call(request_id: str, index: int = 0, cost: int = 1_000, model: str = "gpt-4o",
         tenant: str = "acme") -> CallRecord:
    return CallRecord(request_id=request_id, call_index=index, tenant=tenant, model=model, input_tokens=10,
                      output_tokens=5, cost_micro_usd=cost, latency_ms=1.0, status="CALL_STATUS_OK")


def settlement(request_id: str, total: int = 0, calls: int = 0) -> Settlement:
    return Settlement(request_id, "acme", "cascade", "ok", total, calls)


def committed(ledger: Ledger, tenant: str = "acme") -> int:
    """spent today + outstanding reservations, read in one statement (one snapshot)."""
    with ledger.engine.begin() as connection:
        spent, outstanding = connection.execute(sa.select(
            _spent(tenant, "", NOON.replace(hour=0)), _outstanding(tenant, "", ledger.now()))).one()
    return int(spent) + int(outstanding)


def spent(ledger: Ledger, tenant: str = "acme") -> int:
    return ledger.usage(tenant).total_cost_micro_usd


# --- the concurrency proof --------------------------------------------------------------------

def costs_of(rng: random.Random, overrun: bool) -> list[int]:
    """1-3 call costs whose total is 30-100% of the estimate, or up to 150% when ``overrun``."""
    total = rng.randint(ESTIMATE * 3 // 10, ESTIMATE * 3 // 2 if overrun else ESTIMATE)
    parts = rng.randint(1, 3)
    cuts = sorted(rng.randint(0, total) for _ in range(parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]


@pytest.mark.parametrize("overrun", [False, True], ids=["within-estimates", "overrunning-estimates"])
def test_parallel_requests_near_the_limit_never_pass_it_by_more_than_overruns(
        ledger: Ledger, overrun: bool) -> None:
    """64 request flows (Authorize 0.10 → 1-3 Records → Settle) on 16 threads against a tenant
    with $9.00 of its $10.00 daily hard limit already spent.

    The bound: Authorize admits a request only if spent + outstanding + estimate <= limit, with
    authorizations of a tenant serialised and both sums read in one snapshot; outstanding is what
    active reservations have not consumed yet (sum of max(0, estimate - recorded)). A Record moves
    its cost from outstanding to spent, so spent + outstanding does not grow while each request
    stays within its estimate. Hence, at every instant,

        spent <= limit + sum over admitted requests of max(0, actual_i - estimate_i)

    (reservations here never expire: a request recording after its reservation expired would add
    its whole spend to the excess). Within estimates the excess is 0: a sampler checks
    spent + outstanding <= limit throughout the run, and the final spend must not pass the limit.
    With overruns (up to 150% of the estimate) the final excess must stay within the sum of overruns.
    """
    ledger.set_budget("acme", "day", LIMIT)
    ledger.record(call("earlier", cost=9_000_000))
    rng = random.Random(4 + overrun)
    plans = {f"r{i}": costs_of(rng, overrun) for i in range(64)}
    barrier = threading.Barrier(16)
    done = threading.Event()
    samples: list[int] = []

    def sample() -> None:
        while not done.wait(0.005):  # a pause: on SQLite every read takes the write lock
            samples.append(committed(ledger))

    def flow(request_id: str) -> int | None:
        if int(request_id[1:]) < 16:
            barrier.wait()  # the first wave arrives together
        try:
            ledger.authorize(request_id, "acme", ESTIMATE)
        except ResourceExhausted as refusal:
            assert "daily budget exceeded" in refusal.message and refusal.subject == "tenant:acme"
            return None
        for index, cost in enumerate(plans[request_id]):
            ledger.record(call(request_id, index, cost))
        ledger.settle(settlement(request_id, sum(plans[request_id]), len(plans[request_id])))
        return sum(plans[request_id])

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            outcomes = dict(zip(plans, pool.map(flow, plans), strict=True))
    finally:
        done.set()
        sampler.join()
    admitted = [r for r, total in outcomes.items() if total is not None]
    excess_allowed = sum(max(0, sum(plans[r]) - ESTIMATE) for r in admitted)
    final = spent(ledger)
    assert final == 9_000_000 + sum(sum(plans[r]) for r in admitted)  # every record counted once
    # Liveness: after k admissions spent + outstanding <= 9.00 + k * max(estimate, actual), so the
    # first 10 authorizations always fit within estimates (0.10 each), the first 7 with overruns (0.15).
    assert len(admitted) >= (7 if overrun else 10)
    assert len(admitted) < len(plans)  # and the limit did refuse some
    assert final <= LIMIT + excess_allowed
    if not overrun:
        assert excess_allowed == 0 and final <= LIMIT
        assert samples and max(samples) <= LIMIT
    else:
        assert excess_allowed > 0
    # Settled requests hold nothing any more.
    assert committed(ledger) == final


async def test_parallel_grpc_flows_hold_the_limit(ledger: Ledger) -> None:
    """The same bound through a real gRPC server: 48 concurrent Authorize/Record/Settle flows,
    each spending at most its estimate, never take the spend past the limit."""
    server = GrpcServer("metering", metering_server.register(ledger), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    try:
        await stub.SetBudget(metering_pb2.SetBudgetRequest(
            tenant="acme", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=LIMIT))
        ledger.record(call("earlier", cost=9_400_000))
        rng = random.Random(7)
        plans = {f"g{i}": costs_of(rng, overrun=False) for i in range(48)}

        async def flow(request_id: str) -> bool:
            try:
                await stub.Authorize(metering_pb2.AuthorizeRequest(
                    request_id=request_id, tenant="acme", estimate_micro_usd=ESTIMATE))
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            for index, cost in enumerate(plans[request_id]):
                await stub.Record(metering_pb2.RecordRequest(
                    request_id=request_id, call_index=index, tenant="acme", model="gpt-4o",
                    cost_micro_usd=cost, status=common_pb2.CALL_STATUS_OK))
            await stub.Settle(metering_pb2.SettleRequest(request_id=request_id, tenant="acme", strategy="s",
                                                         outcome="ok", calls=len(plans[request_id])))
            return True

        admitted = [r for r, ok in zip(plans, await asyncio.gather(*map(flow, plans)), strict=True) if ok]
    finally:
        await channel.close()
        await server.stop(0)
    final = spent(ledger)
    assert final == 9_400_000 + sum(sum(plans[r]) for r in admitted)
    assert 6 <= len(admitted) < len(plans) and final <= LIMIT


# --- reservations, soft and per-model limits ----------------------------------------------------

def test_records_consume_their_reservation_instead_of_counting_twice(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 1_000_000)
    assert ledger.authorize("r1", "acme", 500_000).remaining_micro_usd == 500_000
    ledger.record(call("r1", 0, 300_000))
    # 0.30 spent + 0.20 still reserved: 0.50 left (not 0.20, as counting both would say).
    assert ledger.authorize("r2", "acme", 100_000).remaining_micro_usd == 400_000
    ledger.record(call("r1", 1, 400_000))  # r1 overruns its estimate by 0.20
    assert ledger.authorize("r3", "acme", 0).remaining_micro_usd == 200_000  # 0.70 spent, 0.10 held by r2
    ledger.record(call("r1", 1, 400_000))  # a retried record consumes nothing twice
    assert ledger.authorize("r3", "acme", 0).remaining_micro_usd == 200_000


def test_soft_limit_allows_and_flags(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 10_000_000, soft_limit_micro_usd=5_000_000)
    ledger.record(call("old", cost=4_900_000))
    quiet = ledger.authorize("r1", "acme", 100_000)
    assert not quiet.soft_limit_exceeded and quiet.warnings == ()
    flagged = ledger.authorize("r2", "acme", 100_000)
    assert flagged.soft_limit_exceeded and flagged.remaining_micro_usd == 4_900_000
    assert flagged.warnings == ("tenant:acme: daily soft limit $5.00 passed ($5.10 spent or reserved)",)
    ledger.set_budget("acme", "month", None, soft_limit_micro_usd=1_000_000)  # soft only: no hard limit
    both = ledger.authorize("r3", "acme", 1)
    assert len(both.warnings) == 2 and both.remaining_micro_usd == 4_899_999
    ledger.set_budget("acme", "day", None, None)  # removed
    assert ledger.authorize("r4", "acme", 50_000_000).remaining_micro_usd == -1


def test_per_model_budgets_apply_to_requests_that_may_call_the_model(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 1_000_000, model="gpt-4o")
    ledger.record(call("old", cost=900_000, model="gpt-4o"))
    ledger.record(call("old", 1, cost=5_000_000, model="small"))  # other models do not count
    assert ledger.authorize("cheap", "acme", 5_000_000, models=["small"]).remaining_micro_usd == -1
    assert ledger.authorize("g1", "acme", 100_000, models=["gpt-4o", "small"]).remaining_micro_usd == 0
    with pytest.raises(ResourceExhausted) as caught:
        ledger.authorize("g2", "acme", 1, models=["gpt-4o"])
    assert caught.value.subject == "tenant:acme/model:gpt-4o"
    assert "daily budget of model gpt-4o exceeded" in caught.value.message
    # A request that does not say which models it may call may call gpt-4o: the budget applies,
    # and the message says how to get past it.
    with pytest.raises(ResourceExhausted, match="list the models it may call to leave gpt-4o out"):
        ledger.authorize("any", "acme", 1)
    # The reservation scoped to "small" did not count against gpt-4o; g1's does until it settles.
    ledger.settle(settlement("g1"))
    assert ledger.authorize("g3", "acme", 100_000, models=["gpt-4o"]).remaining_micro_usd == 0
    with pytest.raises(InvalidArgument, match="^models: "):
        ledger.authorize("bad", "acme", 1, models=[""])


def test_budget_validation(ledger: Ledger) -> None:
    with pytest.raises(InvalidArgument, match="^soft_limit_micro_usd: must not exceed the hard limit"):
        ledger.set_budget("acme", "day", 100, soft_limit_micro_usd=200)
    with pytest.raises(InvalidArgument, match="^soft_limit_micro_usd: must not be negative"):
        ledger.set_budget("acme", "day", None, soft_limit_micro_usd=-1)


# --- through gRPC: details a caller can act on, soft flags, usage buckets -------------------------

@pytest.fixture(params=["database", "memory"])
async def stub(ledger: Ledger, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A real server in each budget mode: the answers below must not depend on it."""
    guard = StoreGuard(ledger, None, BudgetTotals() if request.param == "memory" else None)
    assert guard.check()  # memory mode: the totals load from the ledger, as at start-up
    server = GrpcServer("metering", metering_server.register(ledger, guard=guard), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metering_pb2_grpc.MeteringServiceStub(channel)
    await channel.close()
    await server.stop(0)


async def test_refusal_details_say_what_is_left_and_when_it_resets(stub, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    await stub.SetBudget(metering_pb2.SetBudgetRequest(
        tenant="acme", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=2_000_000))
    await stub.Record(metering_pb2.RecordRequest(request_id="old", tenant="acme", model="gpt-4o",
                                                 cost_micro_usd=1_500_000, status=common_pb2.CALL_STATUS_OK))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="r", tenant="acme",
                                                            estimate_micro_usd=800_000))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "available $0.50" in error.details() and "resets at 2025-03-16T00:00:00Z" in error.details()
    assert "a request estimated at $0.50 or less fits now" in error.details()
    status = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    quota, info, retry = (error_details_pb2.QuotaFailure(), error_details_pb2.ErrorInfo(),
                          error_details_pb2.RetryInfo())
    assert [status.details[0].Unpack(quota), status.details[1].Unpack(info), status.details[2].Unpack(retry)] == [
        True, True, True]
    assert quota.violations[0].subject == "tenant:acme"
    assert info.reason == "BUDGET_EXCEEDED"
    assert {k: info.metadata[k] for k in ("period", "limit_micro_usd", "spent_micro_usd", "available_micro_usd")} == {
        "period": "day", "limit_micro_usd": "2000000", "spent_micro_usd": "1500000", "available_micro_usd": "500000"}
    assert retry.retry_delay.seconds == 12 * 3600  # noon to midnight UTC


def soft_flags(label: str = "soft-co") -> float:
    return REGISTRY.get_sample_value("xrouter_metering_soft_limit_exceeded_total", {"tenant": label}) or 0.0


async def test_grpc_soft_limits_per_model_and_removal(stub, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    # The metric's tenant label holds tenants whose key was resolved (as the router does), others "other".
    _, key = ledger.create_api_key("soft-co", "budget test")
    assert (await stub.Authenticate(metering_pb2.AuthenticateRequest(key_sha256=hash_key(key)))).tenant == "soft-co"
    await stub.SetBudget(metering_pb2.SetBudgetRequest(
        tenant="soft-co", period=metering_pb2.BUDGET_PERIOD_MONTH, limit_micro_usd=-1, soft_limit_micro_usd=10,
        model="gpt-4o"))
    before = soft_flags()
    reply = await stub.Authorize(metering_pb2.AuthorizeRequest(
        request_id="s1", tenant="soft-co", estimate_micro_usd=11, models=["gpt-4o"]))
    assert reply.remaining_micro_usd == -1 and reply.soft_limit_exceeded
    assert reply.warnings == ["tenant:soft-co/model:gpt-4o: monthly soft limit $0.00001 passed ($0.000011 spent "
                              "or reserved)"]
    assert reply.expires_at.ToDatetime(tzinfo=UTC) == NOON + dt.timedelta(hours=1)
    assert soft_flags() == before + 1
    reply = await stub.Authorize(metering_pb2.AuthorizeRequest(
        request_id="s2", tenant="soft-co", estimate_micro_usd=11, models=["small"]))
    assert not reply.soft_limit_exceeded
    await stub.SetBudget(metering_pb2.SetBudgetRequest(
        tenant="keyless-co", period=metering_pb2.BUDGET_PERIOD_MONTH, limit_micro_usd=-1, soft_limit_micro_usd=10))
    others = soft_flags("other")
    assert (await stub.Authorize(metering_pb2.AuthorizeRequest(
        request_id="k1", tenant="keyless-co", estimate_micro_usd=11))).soft_limit_exceeded
    assert soft_flags("other") == others + 1 and soft_flags("keyless-co") == 0.0
    await stub.SetBudget(metering_pb2.SetBudgetRequest(  # -1 and no soft limit: removed
        tenant="soft-co", period=metering_pb2.BUDGET_PERIOD_MONTH, limit_micro_usd=-1, model="gpt-4o"))
    assert not (await stub.Authorize(metering_pb2.AuthorizeRequest(
        request_id="s3", tenant="soft-co", estimate_micro_usd=11))).soft_limit_exceeded
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SetBudget(metering_pb2.SetBudgetRequest(
            tenant="soft-co", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=-2))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("limit_micro_usd: ")


async def test_grpc_usage_by_model_and_time_bucket(stub, ledger: Ledger, clock: Clock) -> None:  # type: ignore[no-untyped-def]
    for when, request_id, model, cost in [(NOON, "a", "small", 10), (NOON + dt.timedelta(minutes=30), "b", "small", 20),
                                          (NOON + dt.timedelta(hours=1), "c", "large", 300),
                                          (NOON + dt.timedelta(days=1), "d", "small", 4000)]:
        clock.now = when
        ledger.record(call(request_id, cost=cost, model=model))

    async def usage(**fields: object) -> metering_pb2.GetUsageResponse:
        return await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="acme", **fields))

    hourly = await usage(bucket=metering_pb2.TIME_BUCKET_HOUR)
    assert [(b.start.ToDatetime(tzinfo=UTC), b.usage.model, b.usage.calls, b.usage.cost_micro_usd)
            for b in hourly.buckets] == [
        (NOON, "small", 2, 30), (NOON + dt.timedelta(hours=1), "large", 1, 300),
        (NOON + dt.timedelta(days=1), "small", 1, 4000)]
    daily = await usage(bucket=metering_pb2.TIME_BUCKET_DAY, model="small")
    assert [(b.start.ToDatetime(tzinfo=UTC).day, b.usage.cost_micro_usd) for b in daily.buckets] == [
        (15, 30), (16, 4000)]
    assert daily.total_cost_micro_usd == 4030 and [m.model for m in daily.models] == ["small"]
    monthly = await usage(bucket=metering_pb2.TIME_BUCKET_MONTH)
    assert [(b.start.ToDatetime(tzinfo=UTC), b.usage.model) for b in monthly.buckets] == [
        (dt.datetime(2025, 3, 1, tzinfo=UTC), "large"), (dt.datetime(2025, 3, 1, tzinfo=UTC), "small")]
    end = Timestamp()
    end.FromDatetime(NOON + dt.timedelta(hours=2))
    assert (await usage(end=end)).total_cost_micro_usd == 330
    assert not (await usage()).buckets  # none unless asked for
