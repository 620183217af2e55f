"""Settle carrying the request's calls (SettleRequest.call_records), on SQLite and real PostgreSQL,
through a real metering gRPC server with in-memory budget totals: the calls and the settlement are
written in one transaction (a database refusal mid-way leaves neither), a resent Settle is a no-op,
a call recorded earlier by Record is counted once, bad calls are refused naming their field, and
the router's client falls back to Records against a metering that ignores call_records, and a
Settle spooled in an outage replays with its calls."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2
from xrouter.metering import server as metering_server
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord, Ledger, LedgerCall, Reservation, Settlement
from xrouter.metering.schema import RequestSummary
from xrouter.metering.spool import Spool
from xrouter.metering.store import make_engine
from xrouter.metering.totals import BudgetTotals
from xrouter.router.accounting import settle_with_calls
from xrouter.router.clients import MeteringClient
from xrouter.router.policy import CallOutcome, CallStatus

from test_metering_durability import FlakyLedger, a_call  # noqa: E402
from test_metering_totals import Service, assert_same, fresh_load, ledger  # noqa: E402,F401 - fixture and helpers

ESTIMATE = 50_000


def carried(*costs: int, request_id: str = "", tenant: str = "") -> list[metering_pb2.RecordRequest]:
    return [metering_pb2.RecordRequest(request_id=request_id, tenant=tenant, call_index=index, model="gpt-4o",
                                       input_tokens=10, output_tokens=5, cost_micro_usd=cost,
                                       status=common_pb2.CALL_STATUS_OK) for index, cost in enumerate(costs)]


def settle(request_id: str, calls: list[metering_pb2.RecordRequest]) -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(request_id=request_id, tenant="acme", strategy="cascade", outcome="ok",
                                      total_cost_micro_usd=sum(c.cost_micro_usd for c in calls), calls=len(calls),
                                      call_records=calls)


def rows(ledger: Ledger, table: type) -> list[tuple]:  # type: ignore[type-arg]
    with ledger.engine.connect() as connection:
        if table is LedgerCall:
            return [tuple(r) for r in connection.execute(sa.select(
                LedgerCall.request_id, LedgerCall.call_index, LedgerCall.cost_micro_usd).order_by(
                LedgerCall.request_id, LedgerCall.call_index))]
        if table is RequestSummary:
            return [tuple(r) for r in connection.execute(sa.select(
                RequestSummary.request_id, RequestSummary.calls, RequestSummary.total_cost_micro_usd))]
        return [tuple(r) for r in connection.execute(sa.select(
            Reservation.request_id, Reservation.consumed_micro_usd, Reservation.released))]


def spent_today(totals: BudgetTotals, ledger: Ledger) -> int:
    return totals.spent("acme", "", "day", ledger.now())


async def authorize(service: Service, request_id: str) -> metering_pb2.AuthorizeResponse:
    return await service.stub.Authorize(metering_pb2.AuthorizeRequest(
        request_id=request_id, tenant="acme", estimate_micro_usd=ESTIMATE))


def refuse_summaries(ledger: Ledger) -> None:
    """Make the database itself refuse every summary row: a failure after the calls were inserted,
    inside the same transaction."""
    with ledger.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text(
                "CREATE FUNCTION refuse_summary() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'summary refused' USING ERRCODE = '22023'; END $$ LANGUAGE plpgsql"))
            connection.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON request_summaries "
                                       "FOR EACH ROW EXECUTE FUNCTION refuse_summary()"))
        else:
            connection.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON request_summaries "
                                       "BEGIN SELECT RAISE(ABORT, 'summary refused'); END"))


async def test_calls_and_settlement_are_one_transaction(ledger: Ledger) -> None:
    async with Service(ledger) as service:
        await authorize(service, "r1")
        refuse_summaries(ledger)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.Settle(settle("r1", carried(300, 400)))
        assert refused.value.code() != grpc.StatusCode.OK
        # Neither the calls nor the settlement: the reservation still holds its full estimate.
        assert rows(ledger, LedgerCall) == [] and rows(ledger, RequestSummary) == []
        assert rows(ledger, Reservation) == [("r1", 0, False)]
        assert spent_today(service.guard.totals, ledger) == 0  # type: ignore[arg-type]
        assert service.guard.totals.outstanding("acme") == {"r1": ESTIMATE}  # type: ignore[union-attr]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]


async def test_a_resent_settle_is_a_no_op(ledger: Ledger) -> None:
    async with Service(ledger) as service:
        await authorize(service, "r1")
        for _ in range(3):
            reply = await service.stub.Settle(settle("r1", carried(300, 400)))
            assert reply.recorded_calls == 2 and not reply.spooled
        assert rows(ledger, LedgerCall) == [("r1", 0, 300), ("r1", 1, 400)]
        assert rows(ledger, RequestSummary) == [("r1", 2, 700)]
        assert rows(ledger, Reservation) == [("r1", 700, True)]
        assert spent_today(service.guard.totals, ledger) == 700  # type: ignore[arg-type]
        assert service.guard.totals.outstanding("acme") == {}  # type: ignore[union-attr]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]
        probe = await authorize(service, "probe")
        assert probe.remaining_micro_usd == -1  # no hard limit set: nothing else to compare


async def test_a_call_recorded_before_the_settle_counts_once(ledger: Ledger) -> None:
    ledger.set_budget("acme", "day", 1_000_000)
    async with Service(ledger) as service:
        await authorize(service, "r1")
        first = carried(300, 400, request_id="r1", tenant="acme")
        assert not (await service.stub.Record(first[0])).duplicate
        reply = await service.stub.Settle(settle("r1", carried(300, 400)))
        assert reply.recorded_calls == 2
        assert rows(ledger, LedgerCall) == [("r1", 0, 300), ("r1", 1, 400)]
        assert rows(ledger, Reservation) == [("r1", 700, True)]
        assert spent_today(service.guard.totals, ledger) == 700  # type: ignore[arg-type]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]
        probe = await authorize(service, "probe")
        assert probe.remaining_micro_usd == 1_000_000 - 700 - ESTIMATE


async def test_a_changed_call_refuses_the_whole_settle(ledger: Ledger) -> None:
    async with Service(ledger) as service:
        await authorize(service, "r1")
        await service.stub.Record(carried(300, request_id="r1", tenant="acme")[0])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.Settle(settle("r1", carried(999, 400)))  # call 0 with another cost
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "cost_micro_usd" in (refused.value.details() or "")
        assert rows(ledger, LedgerCall) == [("r1", 0, 300)] and rows(ledger, RequestSummary) == []
        assert spent_today(service.guard.totals, ledger) == 300  # type: ignore[arg-type]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]


@pytest.mark.parametrize(("calls", "field"), [
    (carried(300, -5), "call_records[1].cost_micro_usd"),
    (carried(300, tenant="globex"), "call_records[0].tenant"),
    (carried(300, request_id="other"), "call_records[0].request_id"),
    (carried(300, 400)[:1] * 2, "call_records[1].call_index"),
    ([metering_pb2.RecordRequest(call_index=0, status=common_pb2.CALL_STATUS_OK)], "call_records[0].model"),
])
async def test_bad_calls_are_refused_naming_their_field(ledger: Ledger, calls: list[metering_pb2.RecordRequest],
                                                        field: str) -> None:
    async with Service(ledger) as service:
        await authorize(service, "r1")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await service.stub.Settle(settle("r1", calls))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(f"{field}:")
        assert rows(ledger, LedgerCall) == [] and rows(ledger, RequestSummary) == []


class OlderMetering(metering_server.MeteringServicer):
    """What a metering that predates call_records does with them: nothing (an unknown proto field)."""

    async def Settle(self, request, context):  # type: ignore[no-untyped-def]
        request.ClearField("call_records")
        return await super().Settle(request, context)


def outcome(index: int, cost: int) -> CallOutcome:
    return CallOutcome(index, 0, "gpt-4o", "", 0.0, CallStatus.OK, input_tokens=10, output_tokens=5,
                       cost_micro_usd=cost, attempted=True)


@pytest.mark.parametrize("older", [False, True], ids=["current-metering", "older-metering"])
async def test_the_router_bills_its_calls_whatever_metering_version(ledger: Ledger, older: bool) -> None:
    service = Service(ledger, servicer=OlderMetering if older else None)
    async with service:
        client = MeteringClient(service.channel)
        await authorize(service, "r1")
        await settle_with_calls(client, "r1", "acme", [outcome(0, 300), outcome(1, 400)], "p1", "", 10.0,
                                strategy="cascade", outcome="ok", total_cost_micro_usd=700, calls=2)
        assert rows(ledger, LedgerCall) == [("r1", 0, 300), ("r1", 1, 400)]
        assert rows(ledger, RequestSummary) == [("r1", 2, 700)]
        assert rows(ledger, Reservation)[0][2] is True
        assert spent_today(service.guard.totals, ledger) == 700  # type: ignore[arg-type]
        assert fresh_load(ledger).spent("acme", "", "day", ledger.now()) == 700


def test_a_settle_spooled_in_an_outage_replays_with_its_calls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    flaky = FlakyLedger(engine, 60.0)
    flaky.create_schema()
    guard = StoreGuard(flaky, Spool(tmp_path / "spool", max_entries=10))
    flaky.down = True
    summary = Settlement("req", "acme", "single", "ok", 20, 2, call_records=(a_call(0), a_call(1)))
    assert guard.settle_many([summary]) == [(True, 2)]
    flaky.down = False
    assert guard.check() is True and guard.pending == 0
    assert rows(flaky, LedgerCall) == [("req", 0, 10), ("req", 1, 10)]
    assert rows(flaky, RequestSummary) == [("req", 2, 20)]
    engine.dispose()


def test_a_batch_of_settlements_is_written_as_each_alone_would_be(ledger: Ledger) -> None:
    """Several settlements in one transaction (the group commit; on PostgreSQL one statement per
    table for the whole batch): every field stored, a request settled twice in the batch keeps the
    later settlement but the earlier stored response, reservations consume only their new calls,
    and a second batch changes nothing."""
    for request_id in ("a", "b"):
        ledger.authorize(request_id, "acme", ESTIMATE)

    def call(request_id: str, index: int, cost: int) -> CallRecord:
        return CallRecord(request_id=request_id, call_index=index, tenant="acme", model="gpt-4o", input_tokens=10,
                          output_tokens=5, cost_micro_usd=cost, latency_ms=1.5, status="CALL_STATUS_OK")

    batch = [
        Settlement("a", "acme", "cascade", "ok", 700, 2, policy_version="p1", cost_lambda=2.5, dataset="d",
                   prompt_id="q1", messages=(("user", "hi"),), response_json='{"a": 1}', returned_call_index=1,
                   exploration_epsilon=0.1, first_call_probability=0.05, first_call_explored=True,
                   call_records=(call("a", 0, 300), call("a", 1, 400))),
        Settlement("b", "acme", "fixed", "error:UNAVAILABLE", 50, 1, call_records=(call("b", 0, 50),)),
        Settlement("c", "acme", "fixed", "ok", 0, 0),  # no reservation row, no calls
        Settlement("a", "acme", "cascade", "ok", 700, 2, policy_version="p2", call_records=(call("a", 1, 400),)),
    ]
    expected_summaries = [("a", 2, 700), ("b", 1, 50), ("c", 0, 0)]
    for _ in range(2):
        ledger.settle_many(batch)
        assert rows(ledger, LedgerCall) == [("a", 0, 300), ("a", 1, 400), ("b", 0, 50)]
        assert sorted(rows(ledger, RequestSummary)) == expected_summaries
        assert sorted(rows(ledger, Reservation)) == [("a", 700, True), ("b", 50, True)]
    with ledger.engine.connect() as connection:
        stored = connection.execute(sa.select(RequestSummary).where(RequestSummary.request_id == "a")).one()
    assert (stored.policy_version, stored.response_json, stored.cost_lambda, stored.returned_call_index) == \
        ("p2", '{"a": 1}', None, None)  # the later settlement wins; the stored response survives it
    ledger.settle_many([Settlement("a", "acme", "cascade", "ok", 700, 2, policy_version="p3"), batch[2]])
    with ledger.engine.connect() as connection:
        stored = connection.execute(sa.select(RequestSummary).where(RequestSummary.request_id == "a")).one()
    assert (stored.policy_version, stored.response_json) == ("p3", '{"a": 1}')  # kept across transactions too
    assert stored.settled_at is not None and stored.settled_at.tzinfo is not None


def test_a_settlement_naming_another_tenant_is_refused_and_writes_nothing(ledger: Ledger) -> None:  # noqa: F811
    """A request reserved or settled for one tenant cannot be settled for another (the upsert
    overwrote the summary's tenant and released the other tenant's reservation): ALREADY_EXISTS,
    nothing of the batch written, and the owner's own settlement still lands."""
    from xrouter.common.errors import AlreadyExists

    def call(request_id: str, tenant: str, cost: int) -> CallRecord:
        return CallRecord(request_id=request_id, call_index=0, tenant=tenant, model="gpt-4o", input_tokens=10,
                          output_tokens=5, cost_micro_usd=cost, latency_ms=1.5, status="CALL_STATUS_OK")

    ledger.authorize("reserved", "acme", ESTIMATE)
    ledger.settle(Settlement("settled", "acme", "fixed", "ok", 100, 1, call_records=(call("settled", "acme", 100),)))
    before = (rows(ledger, LedgerCall), sorted(rows(ledger, RequestSummary)), rows(ledger, Reservation))
    attempts = [
        [Settlement("reserved", "globex", "fixed", "ok", 300, 1, call_records=(call("reserved", "globex", 300),))],
        [Settlement("settled", "globex", "fixed", "ok", 0, 0)],
        [Settlement("fresh", "globex", "fixed", "ok", 0, 0), Settlement("settled", "globex", "fixed", "ok", 0, 0)],
        [Settlement("twice", "acme", "fixed", "ok", 0, 0), Settlement("twice", "globex", "fixed", "ok", 0, 0)],
    ]
    for batch in attempts:
        with pytest.raises(AlreadyExists, match="belongs to another tenant"):
            ledger.settle_many(batch)
        assert (rows(ledger, LedgerCall), sorted(rows(ledger, RequestSummary)), rows(ledger, Reservation)) == before
    with ledger.engine.connect() as connection:
        tenants = dict(connection.execute(sa.select(RequestSummary.request_id, RequestSummary.tenant)).all())
    assert tenants == {"settled": "acme"}
    ledger.settle(Settlement("reserved", "acme", "fixed", "ok", 300, 1, call_records=(call("reserved", "acme", 300),)))
    assert sorted(rows(ledger, RequestSummary)) == [("reserved", 1, 300), ("settled", 1, 100)]
    assert rows(ledger, Reservation) == [("reserved", 300, True)]
