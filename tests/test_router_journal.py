"""The router's settlement journal (router/journal.py): a settlement is on disk before settle()
returns, is delivered to metering behind it (through a real metering server on SQLite and
PostgreSQL, including after metering was down and after the router process that wrote it is
gone), is counted once however often it is delivered, and the journal refuses new work when full."""

from __future__ import annotations

import asyncio
import time
import pathlib

import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.metering.v1 import metering_pb2
from xrouter.common.errors import InvalidArgument, Unavailable
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import server as metering_server
from xrouter.metering.ledger import Ledger, LedgerCall
from xrouter.metering.schema import RequestSummary
from xrouter.router import journal as journal_module
from xrouter.router.clients import MeteringClient
from xrouter.router.journal import JournalFull, SettleJournal, read_segment

from test_metering_settle_calls import outcome, rows  # noqa: E402
from test_metering_totals import Service, assert_same, ledger  # noqa: E402,F401 - fixture and helpers


def request(n: int) -> metering_pb2.SettleRequest:
    return metering_pb2.SettleRequest(request_id=f"r{n:03d}", tenant="acme", strategy="fixed", outcome="ok")


def segments(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(directory.glob("*.journal"))


async def test_a_settlement_is_on_disk_when_append_returns_and_delivered_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    delivered: list[str] = []
    gate = asyncio.Event()

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        await gate.wait()
        delivered.append(settle.request_id)

    journal = SettleJournal(tmp_path, deliver, segment_records=4)
    assert await journal.start() == 0
    await asyncio.gather(*(journal.append(request(n)) for n in range(10)))
    on_disk = [r.request_id for path in segments(tmp_path) for r in read_segment(path)]
    assert on_disk == [f"r{n:03d}" for n in range(10)] and journal.pending == 10
    gate.set()
    assert await journal.drain(5.0)
    assert delivered == on_disk and journal.pending == 0
    assert len(segments(tmp_path)) == 1  # full segments go once delivered; the active one stays
    await journal.close()
    assert segments(tmp_path) == []  # an empty active segment is not kept


async def test_what_a_stopped_router_left_is_delivered_by_the_next_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def down(settle: metering_pb2.SettleRequest) -> None:
        raise Unavailable("metering: down")

    first = SettleJournal(tmp_path, down)
    await first.start()
    for n in range(5):
        await first.append(request(n))
    await first.close()  # as a killed process leaves it: nothing delivered
    delivered: list[str] = []

    async def up(settle: metering_pb2.SettleRequest) -> None:
        delivered.append(settle.request_id)

    second = SettleJournal(tmp_path, up)
    assert await second.start() == 5
    assert await second.drain(5.0) and delivered == [f"r{n:03d}" for n in range(5)]
    await second.close()
    assert segments(tmp_path) == []


def test_a_torn_tail_ends_the_replay_of_its_segment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "000000000001.journal"
    good = b"".join(journal_module.HEADER.pack(len(p), journal_module.zlib.crc32(p)) + p
                    for p in (request(n).SerializeToString() for n in range(3)))
    path.write_bytes(good + journal_module.HEADER.pack(50, 0) + b"torn")
    assert [r.request_id for r in read_segment(path)] == ["r000", "r001", "r002"]
    path.write_bytes(good[:-3])  # a record cut short
    assert [r.request_id for r in read_segment(path)] == ["r000", "r001"]


async def test_one_journal_directory_has_one_writer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        return None

    first = SettleJournal(tmp_path, deliver)
    await first.start()
    with pytest.raises(RuntimeError, match="another router process holds this journal"):
        await SettleJournal(tmp_path, deliver).start()
    await first.close()


async def test_a_full_journal_refuses_new_work_and_a_final_refusal_is_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        await gate.wait()
        if settle.request_id == "r001":
            raise InvalidArgument("outcome", "not a known outcome")  # final: resending cannot help

    journal = SettleJournal(tmp_path, deliver, max_pending=3)
    await journal.start()
    for n in range(3):
        journal.check_room()
        await journal.append(request(n))
    with pytest.raises(JournalFull):
        journal.check_room()
    refused = journal_module.REFUSED._value.get()
    gate.set()
    assert await journal.drain(5.0)
    journal.check_room()
    assert journal_module.REFUSED._value.get() == refused + 1
    await journal.close()


async def test_settlements_journaled_while_metering_was_down_reach_the_ledger_once(ledger: Ledger,  # noqa: F811
                                                                                   tmp_path) -> None:
    service = Service(ledger)
    port = await service.server.start()
    await service.server.stop(0)  # metering is down while the router answers
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    client = MeteringClient(channel)
    client.journal = SettleJournal(tmp_path, lambda settle: client.deliver(settle, timeout=0.5))
    await client.journal.start()
    held = await asyncio.gather(*(client.settle(f"j{n}", "acme", "fixed", "ok", 300, 1, 1.0,
                                                call_records=[outcome(0, 300)]) for n in range(6)))
    assert held == [1] * 6 and client.journal.pending == 6  # answered: durable on the router's disk
    assert rows(ledger, LedgerCall) == []
    await client.journal.close()  # the router process goes away before metering is back
    await channel.close()

    service.server = GrpcServer("metering", metering_server.register(ledger, guard=service.guard), TracerProvider(),
                                port=port)
    async with service:
        client = MeteringClient(service.channel)
        client.journal = SettleJournal(tmp_path, client.deliver)
        assert await client.journal.start() == 6
        assert await client.journal.drain(10.0)
        await client.settle("j0", "acme", "fixed", "ok", 300, 1, 1.0, call_records=[outcome(0, 300)])  # a retry
        assert await client.journal.drain(10.0)
        await client.journal.close()
        assert rows(ledger, LedgerCall) == [(f"j{n}", 0, 300) for n in range(6)]
        assert sorted(r[0] for r in rows(ledger, RequestSummary)) == [f"j{n}" for n in range(6)]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]


async def test_a_mark_never_claims_a_settlement_still_being_retried(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Marks are written lazily (MARK_INTERVAL_S) and at close; a batch whose middle settlement metering
    keeps refusing for now must not be marked past it, even though the ones after it were held."""
    delivered: list[str] = []
    stuck = True

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        if settle.request_id == "r002" and stuck:
            raise Unavailable("metering is restarting")
        delivered.append(settle.request_id)

    first = SettleJournal(tmp_path, deliver)
    await first.start()
    await asyncio.gather(*(first.append(request(n)) for n in range(5)))  # one flush, one batch
    for _ in range(200):
        if len(delivered) >= 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(delivered) == ["r000", "r001", "r003", "r004"] and first.pending == 1
    await first.close()
    stuck = False
    delivered.clear()
    second = SettleJournal(tmp_path, deliver)
    await second.start()
    assert await second.drain(5.0) and "r002" in delivered  # the others again too: metering counts them once
    await second.close()


async def test_a_restart_delivers_only_what_metering_does_not_hold_yet(tmp_path) -> None:  # type: ignore[no-untyped-def]
    delivered: list[str] = []
    gate = asyncio.Event()

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        if settle.request_id >= "r005":
            await gate.wait()  # metering stops answering after the first five
        delivered.append(settle.request_id)

    first = SettleJournal(tmp_path, deliver)
    await first.start()
    for n in range(5):
        await first.append(request(n))
    assert await first.drain(5.0)
    for n in range(5, 8):
        await first.append(request(n))
    await first.close()  # killed with three not delivered
    delivered.clear()
    gate.set()
    second = SettleJournal(tmp_path, deliver)
    assert await second.start() == 3
    assert await second.drain(5.0) and delivered == ["r005", "r006", "r007"]
    await second.close()


async def test_worker_zero_adopts_the_journals_of_workers_that_no_longer_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pod restarted with fewer router processes: what the missing workers answered is delivered too."""
    import types

    from xrouter.router.server import open_journal

    async def down(settle: metering_pb2.SettleRequest) -> None:
        raise Unavailable("metering: down")

    for worker, ids in ((0, range(2)), (3, range(10, 13))):
        left = SettleJournal(tmp_path / f"worker-{worker}", down)
        await left.start()
        for n in ids:
            await left.append(request(n))
        await left.close()
    delivered: list[str] = []

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        delivered.append(settle.request_id)

    meter = types.SimpleNamespace(deliver=deliver, journal=None)
    config = types.SimpleNamespace(journal_dir=str(tmp_path), journal_max_pending=100, processes=1)
    own = await open_journal(config, meter, None)  # type: ignore[arg-type]
    assert own is meter.journal and own is not None
    for _ in range(100):
        if not (tmp_path / "worker-3").exists():
            break
        await asyncio.sleep(0.05)
    assert sorted(delivered) == ["r000", "r001", "r010", "r011", "r012"]
    assert not (tmp_path / "worker-3").exists()  # the orphan's directory goes once delivered
    await own.close()


async def test_an_unforeseen_delivery_failure_is_retried_not_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    attempts: list[str] = []

    async def deliver(settle: metering_pb2.SettleRequest) -> None:
        attempts.append(settle.request_id)
        if len(attempts) < 3:
            raise RuntimeError("a bug, or an error nobody foresaw")

    journal = SettleJournal(tmp_path, deliver)
    await journal.start()
    refused = journal_module.REFUSED._value.get()
    await journal.append(request(0))
    assert await journal.drain(5.0)
    assert attempts == ["r000"] * 3 and journal_module.REFUSED._value.get() == refused
    await journal.close()


async def test_a_journaled_settlement_reaching_a_metering_older_than_call_records_is_billed(ledger: Ledger,  # noqa: F811
                                                                                         tmp_path) -> None:
    """Such a metering ignores the calls a Settle carries and says it holds none: the journal's
    delivery then records them one by one and settles again, as the direct path does."""
    from test_metering_settle_calls import OlderMetering

    async with Service(ledger, servicer=OlderMetering) as service:
        client = MeteringClient(service.channel)
        client.journal = SettleJournal(tmp_path, client.deliver)
        await client.journal.start()
        assert await client.settle("old1", "acme", "cascade", "ok", 700, 2, 1.0,
                                   call_records=[outcome(0, 300), outcome(1, 400)]) == 2
        assert await client.journal.drain(10.0)
        await client.journal.close()
        assert rows(ledger, LedgerCall) == [("old1", 0, 300), ("old1", 1, 400)]
        assert rows(ledger, RequestSummary) == [("old1", 2, 700)]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]


def test_a_router_whose_journal_is_full_refuses_new_requests_and_bills_what_it_answered(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The router as a process with a journal of at most 2 undelivered settlements: while metering
    is down it answers (a tenant without a budget is admitted without asking) until the journal is
    full, then refuses with UNAVAILABLE; once metering is back every answered request is billed."""
    import grpc
    import sqlalchemy as sa

    from xrouter.api.common.v1 import common_pb2
    from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
    from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
    from xrouter.supervisor import local_keys, stack_env

    from test_billing_faults import Process

    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    envs = stack_env(tmp_path)
    envs["metering"]["XROUTER_METERING_DATABASE_URL"] = ledger_url
    envs["router"].update({"XROUTER_ROUTER_POLICY": "cheapest", "XROUTER_ROUTER_REWARD_TARGET": "",
                           "XROUTER_ROUTER_HTTP_PORT": "0", "XROUTER_ROUTER_JOURNAL_DIR": str(tmp_path / "journal"),
                           "XROUTER_ROUTER_JOURNAL_MAX_PENDING": "2"})
    services = {name: Process(name, envs[name], tmp_path) for name in ("adapters", "metering", "router")}
    prompt = next(iter(read_outcomes(ROUTERBENCH))).prompt  # the replay backend answers recorded prompts
    answered: list[str] = []
    try:
        for service in services.values():
            service.start()
        metadata = (("authorization", f"Bearer {local_keys(tmp_path, services['metering'].target)['api_key']}"),)

        def route() -> grpc.StatusCode:
            with grpc.insecure_channel(services["router"].target) as channel:
                try:
                    reply = router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
                        messages=[common_pb2.ChatMessage(role="user", content=prompt)]),
                        timeout=20, metadata=metadata)
                except grpc.RpcError as error:
                    assert "new requests are refused" in error.details(), error.details()
                    return error.code()
            answered.append(reply.request_id)
            return grpc.StatusCode.OK

        def settled() -> set[str]:
            engine = sa.create_engine(ledger_url)
            with engine.connect() as connection:
                ids = set(connection.scalars(sa.text("SELECT request_id FROM request_summaries")))
            engine.dispose()
            return ids

        assert route() == grpc.StatusCode.OK  # metering says this tenant has no budget
        for _ in range(100):  # delivered behind the answer: the journal is empty again
            if answered[0] in settled():
                break
            time.sleep(0.05)
        services["metering"].kill9()
        assert [route() for _ in range(4)] == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.UNAVAILABLE] * 2
        services["metering"].start()
        for _ in range(100):  # the journal drains once metering is back, and new work is taken again
            if route() == grpc.StatusCode.OK:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the router never took new work after metering came back")
    finally:
        for service in reversed(services.values()):
            service.stop()  # the router delivers what it holds within its grace
    assert len(answered) == 4 and settled() == set(answered)
