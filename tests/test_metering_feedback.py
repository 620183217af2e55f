"""Feedback in the ledger (issue 17), on SQLite and real PostgreSQL, through the real metering gRPC
service: one verdict per settled request, idempotent, owned by the request's tenant — and those
rules hold in the database itself, not only in Python."""

from __future__ import annotations

import concurrent.futures
import math

import grpc
import pytest
import pytest_asyncio
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import AlreadyExists, InvalidArgument
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.ledger import FeedbackRecord, Ledger, Settlement
from xrouter.metering.store import make_engine

from ledger_clock import NOON, Clock  # noqa: E402 - tests/ helper module

USER = metering_pb2.FEEDBACK_SOURCE_USER


@pytest.fixture()
def ledger(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    ledger = Ledger(engine, 60.0, clock=Clock(NOON))
    ledger.create_schema()
    ledger.settle(Settlement("answered", "acme", "STRATEGY_SELECT", "ok", 30, 1, returned_call_index=0))
    ledger.settle(Settlement("failed", "acme", "", "error:UNAVAILABLE", 0, 1))
    ledger.record_score("scored-early", "acme", 1.0, 0.9)  # a score before its request settled
    yield ledger
    engine.dispose()


@pytest_asyncio.fixture()
async def stub(ledger: Ledger):  # type: ignore[no-untyped-def]
    server = GrpcServer("metering", metering_server.register(ledger), TracerProvider())
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield metering_pb2_grpc.MeteringServiceStub(channel)
    await server.stop(0)


def rows(ledger: Ledger) -> list[tuple]:
    with ledger.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.text(
            "SELECT tenant, request_id, score, source, comment FROM feedback ORDER BY request_id"))]


def verdict(request_id: str = "answered", tenant: str = "acme", score: float = 1.0, comment: str = "",
            source: int = USER) -> metering_pb2.RecordFeedbackRequest:
    return metering_pb2.RecordFeedbackRequest(request_id=request_id, tenant=tenant, score=score, source=source,
                                              comment=comment)


async def test_one_verdict_is_stored_and_a_repeat_is_a_duplicate(stub, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    first = await stub.RecordFeedback(verdict(score=0.25, comment="close, but no"))
    assert (first.duplicate, first.score) == (False, 0.25)
    again = await stub.RecordFeedback(verdict(score=0.25, comment="close, but no"))
    assert (again.duplicate, again.score) == (True, 0.25)
    assert rows(ledger) == [("acme", "answered", 0.25, "user", "close, but no")]


@pytest.mark.parametrize(("change", "differs"), [({"score": 1.0}, "score"), ({"comment": "other"}, "comment"),
                                                 ({"source": metering_pb2.FEEDBACK_SOURCE_REFERENCE}, "source")])
async def test_a_different_verdict_for_a_rated_request_is_refused(stub, ledger: Ledger, change, differs) -> None:  # type: ignore[no-untyped-def]
    await stub.RecordFeedback(verdict(score=0.0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordFeedback(verdict(**{"score": 0.0, **change}))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS and f"differs in {differs}" in caught.value.details()
    assert rows(ledger) == [("acme", "answered", 0.0, "user", "")]


@pytest.mark.parametrize(("request_id", "tenant", "code"), [
    ("never-seen", "acme", grpc.StatusCode.NOT_FOUND),
    ("scored-early", "acme", grpc.StatusCode.NOT_FOUND),  # a summary without an outcome has not settled
    ("answered", "globex", grpc.StatusCode.PERMISSION_DENIED),  # another tenant's request
    ("failed", "acme", grpc.StatusCode.INVALID_ARGUMENT),  # it returned no answer to rate
])
async def test_a_verdict_needs_a_settled_answer_of_the_same_tenant(stub, ledger: Ledger, request_id, tenant,  # type: ignore[no-untyped-def]
                                                                  code) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordFeedback(verdict(request_id, tenant))
    assert caught.value.code() == code and caught.value.details().startswith("request_id: ")
    assert rows(ledger) == []


@pytest.mark.parametrize(("bad", "field"), [
    ({"score": 1.5}, "score"), ({"score": -0.01}, "score"), ({"score": math.nan}, "score"),
    ({"score": math.inf}, "score"), ({"source": metering_pb2.FEEDBACK_SOURCE_UNSPECIFIED}, "source"),
    ({"comment": "x" * 2_001}, "comment"), ({"comment": "nul \x00 byte"}, "comment"),
    ({"request_id": ""}, "request_id"), ({"tenant": "a b"}, "tenant"),
])
async def test_bad_input_is_refused_naming_its_field(stub, ledger: Ledger, bad, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordFeedback(verdict(**bad))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith(f"{field}: ")
    assert rows(ledger) == []


def test_concurrent_identical_verdicts_store_one_row(ledger: Ledger) -> None:
    """The key's race: every caller but one learns it sent a duplicate."""
    item = FeedbackRecord("answered", "acme", 1.0, comment="twice at once")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda _: ledger.record_feedback(item), range(8)))
    assert sorted(outcomes) == [(False, 1.0)] + [(True, 1.0)] * 7
    assert rows(ledger) == [("acme", "answered", 1.0, "user", "twice at once")]


def test_the_database_itself_keeps_one_verdict_per_request_and_its_rules(ledger: Ledger) -> None:
    """Written past the ledger's code: a second row, a score out of range or an unknown source are
    refused by the database; a verdict filed under another tenant too, where foreign keys are
    enforced (PostgreSQL; SQLite runs without them, and the ledger's conditional insert covers it)."""
    ledger.record_feedback(FeedbackRecord("answered", "acme", 1.0))
    insert = sa.text("INSERT INTO feedback (tenant, request_id, score, source, comment, created_at) "
                     "VALUES (:tenant, :request_id, :score, :source, '', :at)")
    cases = [dict(tenant="acme", request_id="answered", score=0.0, source="user"),
             dict(tenant="acme", request_id="failed", score=2.0, source="user"),
             dict(tenant="acme", request_id="failed", score=1.0, source="gut feeling")]
    if ledger.engine.dialect.name == "postgresql":
        cases.append(dict(tenant="globex", request_id="answered", score=1.0, source="user"))
    for values in cases:
        with pytest.raises(sa.exc.IntegrityError), ledger.engine.begin() as connection:
            connection.execute(insert, {**values, "at": NOON})
    assert rows(ledger) == [("acme", "answered", 1.0, "user", "")]


def test_a_settlement_keeps_the_returned_call_and_the_exploration(ledger: Ledger) -> None:
    ledger.settle(Settlement("explored", "acme", "STRATEGY_SELECT", "ok", 40, 2, returned_call_index=1,
                             exploration_epsilon=0.1, first_call_probability=0.1 / 11, first_call_explored=True))
    with ledger.engine.connect() as connection:
        row = connection.execute(sa.text(
            "SELECT returned_call_index, exploration_epsilon, first_call_probability, first_call_explored "
            "FROM request_summaries WHERE request_id = 'explored'")).one()
    assert tuple(row) == (1, 0.1, pytest.approx(0.1 / 11), True)
    with pytest.raises(InvalidArgument, match="exploration.first_call_probability"):
        Settlement("bad", "acme", "", "ok", 0, 1, exploration_epsilon=0.1, first_call_probability=0.0).validate()


def test_a_rated_request_cannot_change_tenant(ledger: Ledger) -> None:
    """A re-settlement under another tenant would orphan the verdict: the foreign key refuses it
    (PostgreSQL), reported as a conflict."""
    if ledger.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs without foreign keys")
    ledger.record_feedback(FeedbackRecord("answered", "acme", 1.0))
    with pytest.raises((AlreadyExists, sa.exc.IntegrityError)):
        ledger.settle(Settlement("answered", "globex", "STRATEGY_SELECT", "ok", 30, 1))
