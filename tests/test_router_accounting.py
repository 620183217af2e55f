"""router/accounting.py against a real metering gRPC server (SQLite ledger): a request's Records go
out together (one group-commit batch behind the first), and every one is attempted when one fails."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter.common.errors import InvalidArgument
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import metrics as metering_metrics
from xrouter.metering import server as metering_server
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import Ledger, LedgerCall
from xrouter.metering.store import make_engine
from xrouter.router.accounting import record_all
from xrouter.router.clients import MeteringClient
from xrouter.router.policy import CallOutcome, CallStatus


@pytest.fixture()
async def meter(tmp_path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'metering.db'}")
    ledger = Ledger(engine, 60.0)
    ledger.create_schema()
    guard = StoreGuard(ledger, None)
    assert guard.check()
    server = GrpcServer("metering", metering_server.register(ledger, guard=guard), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield MeteringClient(channel), ledger
    await channel.close()
    await server.stop(0)
    engine.dispose()


def outcome(index: int, cost: int = 1_000) -> CallOutcome:
    return CallOutcome(index, 0, "gpt-4o", "", 0.0, CallStatus.OK, input_tokens=10, output_tokens=5,
                       cost_micro_usd=cost, attempted=True)


def _batches() -> tuple[float, float]:
    """(transactions, records) metering's Record group commit has written so far in this process."""
    samples = {s.name: s.value for m in metering_metrics.RECORD_BATCH.collect() for s in m.samples}
    return samples["xrouter_metering_record_batch_size_count"], samples["xrouter_metering_record_batch_size_sum"]


def _rows(ledger: Ledger) -> int:
    import sqlalchemy as sa

    with ledger._engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(LedgerCall)).scalar_one()


async def test_the_records_of_a_request_go_out_together(meter) -> None:  # type: ignore[no-untyped-def]
    client, ledger = meter
    transactions, records = _batches()
    await record_all(client, "req-1", "acme", [outcome(i) for i in range(6)], "p1", "", 10.0)
    written_in = _batches()[0] - transactions
    assert _batches()[1] - records == 6 and _rows(ledger) == 6
    # One at a time would be 6 transactions; sent together, the first goes alone and the rest
    # queue behind it (fewer than 6; 2 when the server reads them all before the first commit ends).
    assert written_in < 6


async def test_one_refused_record_does_not_stop_the_others_and_is_raised(meter) -> None:  # type: ignore[no-untyped-def]
    client, ledger = meter
    calls = [outcome(0), outcome(1, cost=-5), outcome(2)]  # a negative cost is refused, alone
    with pytest.raises(InvalidArgument, match="cost"):
        await record_all(client, "req-2", "acme", calls, "p1", "", 10.0)
    assert _rows(ledger) == 2
