"""The metering ledger on SQLite and PostgreSQL, and its gRPC face through a real server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import AlreadyExists, InvalidArgument, PermissionDenied, ResourceExhausted
from xrouter.common.grpc_server import GrpcServer
from xrouter.common.settings import SettingsError, load
from xrouter.metering import server as metering_server
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord, Ledger, LedgerCall, Reservation, Settlement, usd
from xrouter.metering.settings import MeteringSettings
from xrouter.metering.store import make_engine
from xrouter.metering.totals import BudgetTotals

from ledger_clock import NOON, UTC, Clock  # noqa: E402 - tests/ helper module
TTL_S = 60.0


@pytest.fixture()
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture()
def ledger(database_url: str, clock: Clock):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    ledger = Ledger(engine, TTL_S, clock=clock)
    ledger.create_schema()
    yield ledger
    engine.dispose()


@pytest.fixture()
def sqlite_ledger(tmp_path, clock: Clock):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'metering.db'}")
    ledger = Ledger(engine, TTL_S, clock=clock)
    ledger.create_schema()
    yield ledger
    engine.dispose()


def call(request_id: str = "req-1", index: int = 0, **changes: object) -> CallRecord:
    base = CallRecord(request_id=request_id, call_index=index, tenant="acme", model="gpt-4o",
                      input_tokens=100, output_tokens=20, cost_micro_usd=1_000, latency_ms=12.5,
                      status="CALL_STATUS_OK", policy_version="p1", trace_id="ab" * 16)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def count(ledger: Ledger, table: type) -> int:
    with ledger._engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# --- the ledger -------------------------------------------------------------------------------

def test_record_is_idempotent_and_rejects_changed_duplicates(ledger: Ledger) -> None:
    assert ledger.record(call()) is False
    assert ledger.record(call()) is True
    assert count(ledger, LedgerCall) == 1
    with pytest.raises(AlreadyExists) as caught:
        ledger.record(call(cost_micro_usd=2_000, model="other"))
    assert "cost_micro_usd" in caught.value.message and "model" in caught.value.message
    assert "tenant" not in caught.value.message
    assert count(ledger, LedgerCall) == 1
    assert ledger.record(call(index=1)) is False
    assert count(ledger, LedgerCall) == 2



def test_one_batch_of_many_calls_is_written_exactly_once_each(ledger: Ledger, clock: Clock) -> None:
    """A group commit of any size (PostgreSQL writes it as one array per column): new calls
    inserted with their own times, retries answered as duplicates, a changed retry refused alone,
    and the receipt time kept in UTC whatever zone it came in."""
    ledger.record(call("old", 0))
    east = dt.timezone(dt.timedelta(hours=5))
    batch = [call(f"b{n // 3}", n % 3, latency_ms=n + 0.25) for n in range(300)]
    times = [NOON.astimezone(east) + dt.timedelta(seconds=n) for n in range(300)]
    outcomes = ledger.record_many([*batch, call("old", 0), call("old", 0, model="changed"), batch[7]],
                                  [*times, NOON, NOON, NOON])
    assert outcomes[:300] == [False] * 300 and outcomes[300] is True and outcomes[302] is True
    assert isinstance(outcomes[301], AlreadyExists)
    assert count(ledger, LedgerCall) == 301
    assert ledger.record_many([call("lone", 0)]) == [False]  # a batch of one, after one of 303
    with ledger._engine.connect() as connection:
        stored = connection.execute(sa.select(LedgerCall.latency_ms, LedgerCall.created_at)
                                    .where(LedgerCall.request_id == "b33", LedgerCall.call_index == 1)).one()
    assert stored.latency_ms == 100.25 and stored.created_at == NOON + dt.timedelta(seconds=100)


def test_concurrent_retries_record_exactly_once(ledger: Ledger) -> None:
    with ThreadPoolExecutor(6) as pool:
        duplicates = list(pool.map(lambda _: ledger.record(call()), range(6)))
    assert sorted(duplicates) == [False] + [True] * 5
    assert count(ledger, LedgerCall) == 1


def test_authorize_without_budget_is_unlimited_and_idempotent(ledger: Ledger) -> None:
    first = ledger.authorize("req-1", "acme", 5_000_000)
    assert first.remaining_micro_usd == -1 and first.state == "new"
    again = ledger.authorize("req-1", "acme", 5_000_000)
    # A repeat reserves nothing new and says the first is still running (the router then waits).
    assert again.reservation_id == first.reservation_id and again.state == "in_flight"
    assert count(ledger, Reservation) == 1
    # Another tenant's id is refused for good (403: retrying cannot help), not ALREADY_EXISTS.
    with pytest.raises(PermissionDenied):
        ledger.authorize("req-1", "other-tenant", 1)


def test_budget_counts_spend_and_reservations_and_settle_releases(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 10_000_000)
    ledger.record(call("old", cost_micro_usd=9_000_000))
    granted = ledger.authorize("req-1", "acme", 500_000)
    assert granted.remaining_micro_usd == 500_000
    with pytest.raises(ResourceExhausted) as caught:
        ledger.authorize("req-2", "acme", 1_000_000)
    message = caught.value.message
    for number in ("limit $10.00", "spent $9.00", "reserved $0.50", "requested $1.00", "available $0.50"):
        assert number in message
    assert caught.value.subject == "tenant:acme"
    assert count(ledger, Reservation) == 1  # a refusal reserves nothing
    # Settling releases the 0.50 reservation, so 1.00 now fits exactly.
    ledger.settle(Settlement("req-1", "acme", "cascade", "ok", 0, 0))
    assert ledger.authorize("req-2", "acme", 1_000_000).remaining_micro_usd == 0
    # Repeating a granted Authorize returns the reservation even though the budget is full.
    assert ledger.authorize("req-2", "acme", 1_000_000).remaining_micro_usd == 0
    with pytest.raises(ResourceExhausted):
        ledger.authorize("req-3", "acme", 1)


def test_expired_reservations_stop_counting(ledger: Ledger, clock: Clock) -> None:
    ledger.set_budget("acme", "month", 1_000_000)
    ledger.authorize("req-1", "acme", 800_000)
    with pytest.raises(ResourceExhausted):
        ledger.authorize("req-2", "acme", 300_000)
    clock.now += dt.timedelta(seconds=TTL_S - 1)
    with pytest.raises(ResourceExhausted):
        ledger.authorize("req-2", "acme", 300_000)
    clock.now += dt.timedelta(seconds=2)
    assert ledger.authorize("req-2", "acme", 300_000).remaining_micro_usd == 700_000


def test_budget_periods_are_utc_calendar_day_and_month(ledger: Ledger, clock: Clock) -> None:
    clock.now = NOON - dt.timedelta(days=1)
    ledger.record(call("yesterday", cost_micro_usd=600_000))
    clock.now = dt.datetime(2025, 2, 28, 23, 59, tzinfo=UTC)
    ledger.record(call("last-month", cost_micro_usd=5_000_000))
    clock.now = NOON
    ledger.set_budget("acme", "day", 1_000_000)
    assert ledger.authorize("a", "acme", 1_000_000).remaining_micro_usd == 0  # yesterday not counted
    ledger.settle(Settlement("a", "acme", "s", "ok", 0, 0))
    ledger.set_budget("acme", "month", 1_000_000)  # both budgets apply; the month counts yesterday
    with pytest.raises(ResourceExhausted, match="monthly budget exceeded.*spent \\$0.60"):
        ledger.authorize("b", "acme", 500_000)
    assert ledger.authorize("c", "acme", 400_000).remaining_micro_usd == 0


def test_concurrent_authorizations_never_overspend(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 5_000_000)
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        try:
            ledger.authorize(f"req-{i}", "acme", 1_000_000)
            return True
        except ResourceExhausted:
            return False

    with ThreadPoolExecutor(8) as pool:
        granted = list(pool.map(attempt, range(8)))
    assert granted.count(True) == 5


def test_settle_twice_is_harmless(ledger: Ledger) -> None:
    ledger.authorize("req-1", "acme", 100)
    ledger.settle(Settlement("req-1", "acme", "cascade", "ok", 1_000, 1))
    ledger.settle(Settlement("req-1", "acme", "cascade", "ok", 1_000, 1))
    ledger.settle(Settlement("never-authorized", "acme", "single", "error:UNAVAILABLE", 0, 0))
    with ledger._engine.connect() as connection:
        rows = connection.execute(sa.text(
            "select request_id, total_cost_micro_usd, calls from request_summaries order by request_id")).all()
        released = connection.execute(sa.text("select released from reservations")).scalar_one()
    assert [tuple(r) for r in rows] == [("never-authorized", 0, 0), ("req-1", 1_000, 1)]
    assert bool(released) is True


def test_usage_sums_by_model_and_time_range(ledger: Ledger, clock: Clock) -> None:
    ledger.record(call("r1", 0, model="small", cost_micro_usd=10, input_tokens=1, output_tokens=2))
    ledger.record(call("r1", 1, model="large", cost_micro_usd=300, input_tokens=10, output_tokens=20))
    clock.now = NOON + dt.timedelta(hours=1)
    ledger.record(call("r2", 0, model="small", cost_micro_usd=20, input_tokens=3, output_tokens=4))
    ledger.record(call("r3", 0, tenant="other", cost_micro_usd=9_999))

    everything = ledger.usage("acme")
    assert everything.total_cost_micro_usd == 330 and everything.requests == 2
    assert [(m.model, m.calls, m.input_tokens, m.output_tokens, m.cost_micro_usd) for m in everything.models] == [
        ("large", 1, 10, 20, 300), ("small", 2, 4, 6, 30)]

    later = ledger.usage("acme", start=NOON + dt.timedelta(minutes=30))
    assert [(m.model, m.cost_micro_usd) for m in later.models] == [("small", 20)] and later.requests == 1
    earlier = ledger.usage("acme", end=NOON + dt.timedelta(minutes=30))
    assert earlier.total_cost_micro_usd == 310 and earlier.requests == 1
    # Half-open range: a call exactly at `end` belongs to the next range.
    assert ledger.usage("acme", start=NOON - dt.timedelta(hours=1), end=NOON).requests == 0
    assert ledger.usage("nobody").models == () and ledger.usage("nobody").total_cost_micro_usd == 0


@pytest.mark.parametrize("action, field", [
    (lambda l: l.record(call(request_id="")), "request_id"),
    (lambda l: l.record(call(input_tokens=-1)), "input_tokens"),
    (lambda l: l.record(call(cost_micro_usd=-5)), "cost_micro_usd"),
    (lambda l: l.record(call(status="CALL_STATUS_UNSPECIFIED")), "status"),
    (lambda l: l.record(call(role="judge")), "role"),
    (lambda l: l.authorize("r", "", 1), "tenant"),
    (lambda l: l.authorize("r", "acme", -1), "estimate_micro_usd"),
    (lambda l: l.set_budget("acme", "week", 1), "period"),
    (lambda l: l.set_budget("acme", "day", -1), "limit_micro_usd"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", -1, 0)), "total_cost_micro_usd"),
    (lambda l: l.usage("acme", NOON, NOON - dt.timedelta(seconds=1)), "end"),
    # Found by probing a running metering service (2026-12-07): each was stored, or failed inside the
    # database. Two calls of 2^63 − 1 tokens overflowed SQLite's SUM, the usage query failed, and the
    # ledger was marked down: Authorize refused every tenant until it recovered.
    (lambda l: l.record(call(input_tokens=2**63 - 1)), "input_tokens"),
    (lambda l: l.record(call(output_tokens=10**10)), "output_tokens"),
    (lambda l: l.record(call(latency_ms=float("nan"))), "latency_ms"),
    (lambda l: l.record(call(latency_ms=float("inf"))), "latency_ms"),
    (lambda l: l.record(call(model="a\x00b")), "model"),
    (lambda l: l.record(call(model="m" * 300)), "model"),
    (lambda l: l.record(call(trace_id="\x1b[31m")), "trace_id"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "", 0, 0)), "outcome"),  # would read as unsettled
    (lambda l: l.settle(Settlement("r", "acme", "s", "banana", 0, 0)), "outcome"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 2**62, 0)), "total_cost_micro_usd"),
    (lambda l: l.settle(Settlement("r", "acme", "s" * 65, "ok", 0, 0)), "strategy"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 0, 0, cost_lambda=float("nan"))), "cost_lambda"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 0, 0, cost_lambda=1e7)), "cost_lambda"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 0, 0, prompt_id="p\x00")), "prompt_id"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 0, 0, messages=(("wizard", "hi"),))), "messages[0].role"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 5, 0, call_records=(call("r", tenant="acme"),))), "calls"),
    (lambda l: l.settle(Settlement("r", "acme", "s", "ok", 5, 1, returned_call_index=7,
                                   call_records=(call("r", tenant="acme"),))), "returned_call_index"),
    (lambda l: l.record_score("r", "acme", 1.0, float("inf")), "reward"),
    (lambda l: l.set_budget("acme", "day", 1, model="a\x00b"), "model"),
    (lambda l: l.set_budget("acme", "day", 2**63 - 1), "limit_micro_usd"),
    (lambda l: l.create_api_key("a b"), "tenant"),
    (lambda l: l.create_api_key("acme", label="\x1b[2J"), "label"),
])
def test_validation_errors_name_the_field(sqlite_ledger: Ledger, action, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as caught:
        action(sqlite_ledger)
    assert caught.value.field == field and caught.value.message.startswith(f"{field}: ")
    assert count(sqlite_ledger, LedgerCall) == 0


def test_usd_formatting() -> None:
    assert [usd(1_500_000), usd(1_234), usd(0), usd(12_000_000)] == ["$1.50", "$0.001234", "$0.00", "$12.00"]


# --- settings ---------------------------------------------------------------------------------

def test_settings_require_a_database_url() -> None:
    with pytest.raises(SettingsError, match="XROUTER_METERING_DATABASE_URL is required"):
        load(MeteringSettings, {})
    loaded = load(MeteringSettings, {"XROUTER_METERING_DATABASE_URL": "sqlite:///x.db",
                                     "XROUTER_METERING_RESERVATION_TTL_S": "30"})
    assert (loaded.port, loaded.reservation_ttl_s, loaded.grace_s) == (50053, 30.0, 5.0)
    assert loaded.budgets == "memory"


@pytest.mark.parametrize("changes, variable", [
    ({"XROUTER_METERING_DATABASE_URL": "mysql://u:secret@h/db"}, "XROUTER_METERING_DATABASE_URL"),
    ({"XROUTER_METERING_DATABASE_URL": "not a url"}, "XROUTER_METERING_DATABASE_URL"),
    ({"XROUTER_METERING_RESERVATION_TTL_S": "0"}, "XROUTER_METERING_RESERVATION_TTL_S"),
    ({"XROUTER_METERING_PORT": "70000"}, "XROUTER_METERING_PORT"),
    ({"XROUTER_METERING_GRACE_S": "-1"}, "XROUTER_METERING_GRACE_S"),
    ({"XROUTER_METERING_BUDGETS": "cache"}, "XROUTER_METERING_BUDGETS"),
])
def test_settings_reject_bad_values(changes: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        load(MeteringSettings, {"XROUTER_METERING_DATABASE_URL": "sqlite:///x.db", **changes})
    assert "secret" not in str(caught.value)


def test_main_exits_2_on_bad_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("XROUTER_METERING_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as caught:
        metering_server.main()
    assert caught.value.code == 2
    assert "XROUTER_METERING_DATABASE_URL" in capsys.readouterr().err


# --- gRPC through a real server ---------------------------------------------------------------

@pytest.fixture(params=["database", "memory"])
async def served(ledger: Ledger, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A real server in each budget mode (XROUTER_METERING_BUDGETS)."""
    guard = StoreGuard(ledger, None, BudgetTotals() if request.param == "memory" else None)
    assert guard.check()
    server = GrpcServer("metering", metering_server.register(ledger, guard=guard), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, metering_pb2_grpc.MeteringServiceStub(channel), channel
    await channel.close()
    await server.stop(0)


def record_request(**changes: object) -> metering_pb2.RecordRequest:
    request = metering_pb2.RecordRequest(
        request_id="req-1", call_index=0, tenant="acme", model="gpt-4o", input_tokens=100,
        output_tokens=20, cost_micro_usd=1_000, latency_ms=12.5, status=common_pb2.CALL_STATUS_OK,
        policy_version="p1", trace_id="ab" * 16)
    for name, value in changes.items():
        setattr(request, name, value)
    return request


async def test_grpc_record_usage_and_settle(served) -> None:  # type: ignore[no-untyped-def]
    _, stub, _ = served
    assert (await stub.Record(record_request())).duplicate is False
    assert (await stub.Record(record_request())).duplicate is True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Record(record_request(output_tokens=21))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS and "output_tokens" in caught.value.details()

    start, end = Timestamp(), Timestamp()
    start.FromDatetime(NOON - dt.timedelta(minutes=1))
    end.FromDatetime(NOON + dt.timedelta(minutes=1))
    usage = await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="acme", start=start, end=end))
    assert (usage.tenant, usage.total_cost_micro_usd, usage.requests) == ("acme", 1_000, 1)
    assert [(m.model, m.calls, m.input_tokens) for m in usage.models] == [("gpt-4o", 1, 100)]
    start.FromDatetime(NOON + dt.timedelta(seconds=1))
    assert (await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="acme", start=start))).requests == 0

    granted = await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="req-1", tenant="acme",
                                                                 estimate_micro_usd=5))
    assert granted.reservation_id and granted.remaining_micro_usd == -1
    await stub.Settle(metering_pb2.SettleRequest(request_id="req-1", tenant="acme", strategy="single",
                                                 outcome="ok", total_cost_micro_usd=1_000, calls=1))


async def test_grpc_budget_refusal_carries_quota_failure(served) -> None:  # type: ignore[no-untyped-def]
    _, stub, _ = served
    await stub.SetBudget(metering_pb2.SetBudgetRequest(
        tenant="acme", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=2_000_000))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="r", tenant="acme",
                                                            estimate_micro_usd=3_000_000))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit $2.00" in error.details() and "requested $3.00" in error.details()
    details = dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    quota = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(quota)
    assert quota.violations[0].subject == "tenant:acme"
    assert "limit $2.00" in quota.violations[0].description


@pytest.mark.parametrize("rpc, message, field", [
    ("Record", record_request(request_id=""), "request_id"),
    ("Record", record_request(status=common_pb2.CALL_STATUS_UNSPECIFIED), "status"),
    ("Record", record_request(role="planner"), "role"),
    ("Authorize", metering_pb2.AuthorizeRequest(request_id="r", tenant="acme", estimate_micro_usd=-1),
     "estimate_micro_usd"),
    ("SetBudget", metering_pb2.SetBudgetRequest(tenant="acme", limit_micro_usd=1), "period"),
    ("GetUsage", metering_pb2.GetUsageRequest(), "tenant"),
    # An out-of-range Timestamp was INTERNAL (a ValueError converting it).
    ("GetUsage", metering_pb2.GetUsageRequest(tenant="acme", start=Timestamp(seconds=10**15)), "start"),
    ("GetUsage", metering_pb2.GetUsageRequest(tenant="acme", end=Timestamp(seconds=0, nanos=-1)), "end"),
    ("Record", record_request(input_tokens=2**63 - 1), "input_tokens"),
    ("Settle", metering_pb2.SettleRequest(request_id="r", tenant="acme", strategy="s"), "outcome"),
])
async def test_grpc_invalid_argument_names_the_field(served, rpc: str, message, field: str) -> None:  # type: ignore[no-untyped-def]
    _, stub, _ = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, rpc)(message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")


async def test_health_serving_then_not_serving_after_stop(served) -> None:  # type: ignore[no-untyped-def]
    server, stub, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", metering_server.SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    await server.stop(0)
    # The port is closed now, so ask the health servicer directly (context is unused for known names).
    for service in ("", metering_server.SERVICE):
        response = await server.health.Check(health_pb2.HealthCheckRequest(service=service), None)
        assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Record(record_request(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
