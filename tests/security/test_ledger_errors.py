"""Issue 15 item 5, metering's side: a database error that is not an outage is not reported as one.

psycopg raises OperationalError for statements PostgreSQL refuses (an index row over its size
limit: the 3 KB tenant of the issue), and metering used to read every OperationalError as "the
database is unreachable": 503 to the caller, the store marked down, health NOT_SERVING. These tests
make real PostgreSQL refuse real statements, through the guard and through metering's gRPC server,
and check that the refusal is a client error while the ledger keeps serving, and that a real
outage (nothing listening) is still one."""

from __future__ import annotations

import secrets

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import AlreadyExists, InvalidArgument, Unavailable
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import metrics
from xrouter.metering import server as metering_server
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import Ledger
from xrouter.metering.store import make_engine

pytestmark = pytest.mark.postgres


@pytest.fixture()
def guard(postgres_url: str):  # type: ignore[no-untyped-def]
    ledger = Ledger(make_engine(postgres_url), reservation_ttl_s=60)
    ledger.create_schema()
    yield StoreGuard(ledger, None)
    ledger.engine.dispose()


def incompressible(chars: int) -> str:
    # PostgreSQL compresses index entries: a repeated letter would fit; random text does not.
    return secrets.token_urlsafe(chars)[:chars]


def execute(engine: sa.Engine, sql: str, params: dict[str, object]) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(sql), params)


BUDGET = "insert into budgets (tenant, model, period, updated_at) values (:tenant, '', 'day', now())"


# (statement, its parameters, the client error, the psycopg error PostgreSQL's SQLSTATE becomes)
@pytest.mark.parametrize(("sql", "params", "refusal", "driver_error"), [
    pytest.param(BUDGET, {"tenant": incompressible(6000)}, InvalidArgument, "ProgramLimitExceeded",  # 54000
                 id="index-row-too-big"),
    pytest.param("select 1 / 0", {}, InvalidArgument, "DivisionByZero", id="data-exception"),  # 22012
    pytest.param(BUDGET, {"tenant": "acme"}, AlreadyExists, "UniqueViolation", id="integrity"),  # 23505
])
def test_a_refused_statement_is_a_client_error_and_the_ledger_stays_up(  # type: ignore[no-untyped-def]
        guard, sql, params, refusal, driver_error) -> None:
    engine = guard.ledger.engine
    if refusal is AlreadyExists:
        execute(engine, sql, params)  # the row the second insert collides with
    with pytest.raises(refusal) as raised:
        guard.call(execute, engine, sql, params)
    assert driver_error in raised.value.message
    assert guard.serving and metrics.STORE_UP._value.get() == 1  # not marked down
    assert guard.call(guard.ledger.authorize, "next", "acme", 1).state == "new"  # and still authorizing
    assert guard.check()  # the health round agrees


def test_an_unreachable_database_is_still_an_outage() -> None:
    ledger = Ledger(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"), 60)
    guard = StoreGuard(ledger, None)
    with pytest.raises(Unavailable, match="unreachable"):
        guard.call(ledger.authorize, "r", "acme", 1)
    assert not guard.serving
    ledger.engine.dispose()


async def test_metering_refuses_oversized_values_over_grpc_and_keeps_serving(guard) -> None:  # type: ignore[no-untyped-def]
    # Metering is its own edge too: a caller other than the router (or a router bug) sending a
    # 3 KB tenant gets INVALID_ARGUMENT, and a value only PostgreSQL can refuse (a model name over
    # the index limit) is INVALID_ARGUMENT as well, never UNAVAILABLE.
    server = GrpcServer("metering", metering_server.register(guard.ledger, guard=guard), TracerProvider())
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = metering_pb2_grpc.MeteringServiceStub(channel)
            for request, field in (
                    (metering_pb2.AuthorizeRequest(request_id="r1", tenant="t" + incompressible(3000),
                                                   estimate_micro_usd=1), "tenant"),
                    (metering_pb2.AuthorizeRequest(request_id="r2", tenant="acme", estimate_micro_usd=1,
                                                   models=[incompressible(6000)]), "request"),
                    (metering_pb2.AuthorizeRequest(request_id="r3", tenant="acme",
                                                   estimate_micro_usd=2**62), "estimate_micro_usd")):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await stub.Authorize(request, timeout=10)
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
                assert raised.value.details().startswith(f"{field}: ")
            granted = await stub.Authorize(metering_pb2.AuthorizeRequest(
                request_id="r4", tenant="acme", estimate_micro_usd=1), timeout=10)
            assert granted.state == metering_pb2.REQUEST_STATE_NEW and guard.serving
    finally:
        await server.stop(grace=1)
