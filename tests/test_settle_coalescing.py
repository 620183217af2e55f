"""The router's concurrent Settles share SettleMany round trips (router/settle_coalescing.py), on
SQLite and real PostgreSQL through a real metering gRPC server: each request is settled once with
its own calls, one settlement's refusal stays its own, a resend of them all changes nothing, a
metering without SettleMany still gets every settlement, and a caller that gave up before its
settlement was sent has nothing sent for it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2
from xrouter.common import metrics
from xrouter.common.errors import AlreadyExists, InvalidArgument
from xrouter.metering import server as metering_server
from xrouter.metering.ledger import Ledger, LedgerCall
from xrouter.metering.schema import RequestSummary
from xrouter.router.clients import MeteringClient
from xrouter.router.settle_coalescing import SettleCoalescer, SettleRefused

from test_metering_settle_calls import outcome, rows  # noqa: E402
from test_metering_totals import Service, assert_same, ledger  # noqa: E402,F401 - fixture and helpers

REQUESTS = 40


def served(method: str, code: str = "OK") -> float:
    return metrics.RPC_REQUESTS.labels("metering", method, code)._value.get()


async def settle_all(client: MeteringClient, request_ids: list[str]) -> list[object]:
    """Settle every request at once, each with two calls (costs 100·n and 100·n + 1)."""
    return await asyncio.gather(*(
        client.settle(rid, "acme", "cascade", "ok", 200 * n + 1, 2, 10.0,
                      call_records=[outcome(0, 100 * n), outcome(1, 100 * n + 1)])
        for n, rid in enumerate(request_ids, start=1)), return_exceptions=True)


async def test_concurrent_settles_share_round_trips_and_each_gets_its_own_answer(ledger: Ledger) -> None:
    async with Service(ledger) as service:
        ids = [f"r{n:02d}" for n in range(1, REQUESTS + 1)]
        # r07's first call was recorded before, with another cost: its Settle must be refused, alone.
        await service.stub.Record(metering_pb2.RecordRequest(request_id="r07", call_index=0, tenant="acme",
                                                             model="gpt-4o", cost_micro_usd=5,
                                                             status=common_pb2.CALL_STATUS_OK))
        settle_many_before, settle_before = served("SettleMany"), served("Settle")
        client = MeteringClient(service.channel)

        answers = await settle_all(client, ids)

        assert isinstance(answers[6], AlreadyExists)
        assert all(answer == 2 for n, answer in enumerate(answers) if n != 6)  # both calls held
        round_trips = served("SettleMany") - settle_many_before + served("Settle") - settle_before
        assert served("SettleMany") > settle_many_before and round_trips < REQUESTS / 4
        expected = sorted([(rid, 0, 100 * n) for n, rid in enumerate(ids, 1) if rid != "r07"]
                          + [(rid, 1, 100 * n + 1) for n, rid in enumerate(ids, 1) if rid != "r07"]
                          + [("r07", 0, 5)])
        assert rows(ledger, LedgerCall) == expected
        assert sorted(rows(ledger, RequestSummary)) == [(rid, 2, 200 * n + 1) for n, rid in enumerate(ids, 1)
                                                        if rid != "r07"]
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]

        again = await settle_all(client, ids)  # every router retry at once: nothing counted twice

        assert isinstance(again[6], AlreadyExists) and all(a == 2 for n, a in enumerate(again) if n != 6)
        assert rows(ledger, LedgerCall) == expected
        assert_same(service.guard.totals, ledger)  # type: ignore[arg-type]


async def test_a_bad_settlement_is_refused_naming_its_field_and_the_others_are_settled(ledger: Ledger) -> None:
    async with Service(ledger) as service:
        good = [metering_pb2.SettleRequest(request_id=f"g{n}", tenant="acme", strategy="fixed", outcome="ok")
                for n in range(3)]
        bad = metering_pb2.SettleRequest(request_id="", tenant="acme", strategy="fixed", outcome="ok")
        reply = await service.stub.SettleMany(metering_pb2.SettleManyRequest(settles=[good[0], bad, *good[1:]]))
        refused = reply.outcomes[1].refused
        assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == refused.code and refused.message.startswith("request_id")
        assert [o.HasField("settled") for o in reply.outcomes] == [True, False, True, True]
        assert sorted(r[0] for r in rows(ledger, RequestSummary)) == ["g0", "g1", "g2"]

        too_many = metering_pb2.SettleManyRequest(settles=good * 334)
        with pytest.raises(grpc.aio.AioRpcError) as refusal:
            await service.stub.SettleMany(too_many)
        assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refusal.value.details().startswith("settles: at most 1000")


class MeteringWithoutSettleMany(metering_server.MeteringServicer):
    """A metering from before SettleMany: what gRPC answers for a method a server does not have."""

    async def SettleMany(self, request, context):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


async def test_a_metering_without_settle_many_gets_every_settlement_one_by_one(ledger: Ledger) -> None:
    async with Service(ledger, servicer=MeteringWithoutSettleMany) as service:
        client = MeteringClient(service.channel)
        ids = [f"old{n:02d}" for n in range(1, 21)]
        answers = await settle_all(client, ids)
        assert answers == [2] * len(ids)
        assert len(rows(ledger, LedgerCall)) == 2 * len(ids) and len(rows(ledger, RequestSummary)) == len(ids)


def refused_many(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="")


async def test_a_caller_that_gave_up_before_its_settlement_was_sent_has_nothing_sent() -> None:
    release, sent = asyncio.Event(), []

    async def settle_one(request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        sent.append(request.request_id)
        await release.wait()
        return metering_pb2.SettleResponse()

    async def settle_many(request: metering_pb2.SettleManyRequest, timeout: float) -> metering_pb2.SettleManyResponse:
        sent.extend(s.request_id for s in request.settles)
        return metering_pb2.SettleManyResponse(outcomes=[metering_pb2.SettleOutcome(
            settled=metering_pb2.SettleResponse(recorded_calls=1)) for _ in request.settles])

    coalescer = SettleCoalescer(settle_one, settle_many, max_in_flight=1)
    first = asyncio.create_task(coalescer.settle(metering_pb2.SettleRequest(request_id="first"), 5.0))
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):  # queued behind "first", and gone before it could be sent
        await coalescer.settle(metering_pb2.SettleRequest(request_id="impatient"), 0.05)
    kept = [asyncio.create_task(coalescer.settle(metering_pb2.SettleRequest(request_id=f"k{n}"), 5.0))
            for n in range(2)]
    await asyncio.sleep(0)
    release.set()
    await first
    assert [reply.recorded_calls for reply in await asyncio.gather(*kept)] == [1, 1]
    assert sent == ["first", "k0", "k1"]


async def test_without_lone_settles_a_batch_handed_over_at_once_is_one_settle_many() -> None:
    """The journal's deliveries: nobody waits on them, so the first of a batch does not go alone."""
    sent: list[list[str]] = []

    async def settle_one(request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        sent.append([request.request_id])
        return metering_pb2.SettleResponse(recorded_calls=1)

    async def settle_many(request: metering_pb2.SettleManyRequest, timeout: float) -> metering_pb2.SettleManyResponse:
        sent.append([s.request_id for s in request.settles])
        return metering_pb2.SettleManyResponse(outcomes=[metering_pb2.SettleOutcome(
            settled=metering_pb2.SettleResponse(recorded_calls=1)) for _ in request.settles])

    ids = [f"r{n}" for n in range(5)]
    for lone_settles in (True, False):
        sent.clear()
        coalescer = SettleCoalescer(settle_one, settle_many, max_in_flight=1, lone_settles=lone_settles)
        answers = await asyncio.gather(*(coalescer.settle(metering_pb2.SettleRequest(request_id=i), 5.0)
                                         for i in ids))
        assert [a.recorded_calls for a in answers] == [1] * len(ids)
        if lone_settles:
            assert sent[0] == ["r0"]  # the first goes at once, alone
        else:
            assert sent == [ids]


async def test_a_peer_that_answers_the_wrong_number_of_outcomes_fails_every_settlement_loudly() -> None:
    async def settle_one(request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        await asyncio.sleep(0.01)
        return metering_pb2.SettleResponse()

    async def settle_many(request: metering_pb2.SettleManyRequest, timeout: float) -> metering_pb2.SettleManyResponse:
        return metering_pb2.SettleManyResponse(outcomes=[metering_pb2.SettleOutcome()])

    coalescer = SettleCoalescer(settle_one, settle_many, max_in_flight=1)
    answers = await asyncio.gather(*(coalescer.settle(metering_pb2.SettleRequest(request_id=f"r{n}"), 5.0)
                                     for n in range(4)), return_exceptions=True)
    assert isinstance(answers[0], metering_pb2.SettleResponse)
    assert all(isinstance(a, SettleRefused) and a.code == grpc.StatusCode.INTERNAL for a in answers[1:])


async def test_an_unavailable_metering_is_retried_per_settlement_until_it_answers() -> None:
    attempts: list[int] = []

    async def settle_one(request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        await asyncio.sleep(0.01)
        return metering_pb2.SettleResponse(recorded_calls=3)

    async def settle_many(request: metering_pb2.SettleManyRequest, timeout: float) -> metering_pb2.SettleManyResponse:
        attempts.append(len(request.settles))
        if len(attempts) == 1:
            raise refused_many(grpc.StatusCode.UNAVAILABLE)
        return metering_pb2.SettleManyResponse(outcomes=[metering_pb2.SettleOutcome(
            settled=metering_pb2.SettleResponse(recorded_calls=3)) for _ in request.settles])

    class Client(MeteringClient):
        def __init__(self) -> None:
            self._settles, self.journal = SettleCoalescer(settle_one, settle_many, max_in_flight=1), None

    answers = await asyncio.gather(*(Client.settle(client, f"r{n}", "acme", "fixed", "ok", 0, 3, 5.0)
                                     for client in [Client()] for n in range(5)))
    assert attempts[0] == 4 and answers == [3] * 5  # the failed batch was resent, its settlements answered


async def test_invalid_argument_inside_a_batch_becomes_the_field_error() -> None:
    async def settle_one(request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        await asyncio.sleep(0.01)
        return metering_pb2.SettleResponse()

    async def settle_many(request: metering_pb2.SettleManyRequest, timeout: float) -> metering_pb2.SettleManyResponse:
        return metering_pb2.SettleManyResponse(outcomes=[metering_pb2.SettleOutcome(
            refused=metering_pb2.SettleRefusal(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                               message="outcome: must be ok or error:<code>"))
            for _ in request.settles])

    class Client(MeteringClient):
        def __init__(self) -> None:
            self._settles, self.journal = SettleCoalescer(settle_one, settle_many, max_in_flight=1), None

    client = Client()
    answers = await asyncio.gather(*(client.settle(f"r{n}", "acme", "fixed", "bad", 0, 0, 5.0) for n in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(a, InvalidArgument) and a.field == "outcome" for a in answers[1:])
