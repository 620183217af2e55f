"""The router's concurrent Settles, coalesced: settlements that arrive while metering is busy with
earlier ones travel together in one SettleMany round trip.

Metering's side already writes concurrent Settles in one transaction (group commit); what is left
at high concurrency is one gRPC round trip per request, and that per-call work is most of
metering's CPU. This is the same group commit one hop earlier, and like it it adds no waiting: a
settlement goes out at once while fewer than ``max_in_flight`` round trips are under way, alone,
as a plain Settle; only settlements that queued behind those share the next SettleMany. Each one
still gets its own answer (or its own refusal) and keeps its own deadline; a caller that gives up
before its settlement was sent takes it out of the queue, so nothing is sent for a caller that
has already been told it failed. A metering that predates SettleMany (UNIMPLEMENTED) gets plain
Settles from then on.

Where nobody waits on the answer (the journal's deliveries, behind the answers already sent),
``lone_settles=False`` drops the lone fast path: every settlement queues, so a batch handed over at
once travels as one SettleMany instead of one Settle and a SettleMany of the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

import grpc

from xrouter.api.metering.v1 import metering_pb2
from xrouter.common import metrics
from xrouter.common.errors import STATUS_CODES

log = logging.getLogger(__name__)
MAX_BATCH = 256
MAX_BATCH_BYTES = 1 << 20  # well under gRPC's default 4 MiB message limit; a bigger settle goes alone
MAX_IN_FLIGHT = 2  # one round trip in the database while the next is on the wire

SettleOne = Callable[[metering_pb2.SettleRequest, float], Awaitable[metering_pb2.SettleResponse]]
SettleMany = Callable[[metering_pb2.SettleManyRequest, float], Awaitable[metering_pb2.SettleManyResponse]]


class SettleRefused(Exception):
    """Metering refused one settlement inside a SettleMany: the status a lone Settle would have had."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass(eq=False)
class _Waiting:
    request: metering_pb2.SettleRequest
    size: int
    deadline: float
    answer: asyncio.Future[metering_pb2.SettleResponse]


class SettleCoalescer:
    """One attempt per settlement: returns metering's SettleResponse, raises ``grpc.aio.AioRpcError``
    when the round trip failed and :class:`SettleRefused` when metering refused this settlement."""

    def __init__(self, settle_one: SettleOne, settle_many: SettleMany, *, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES, max_in_flight: int = MAX_IN_FLIGHT,
                 lone_settles: bool = True) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._settle_one = settle_one
        self._settle_many = settle_many
        self._max_batch = max_batch
        self._max_bytes = max_batch_bytes
        self._max_in_flight = max_in_flight
        self._lone_settles = lone_settles
        self._in_flight = 0
        self._waiting: list[_Waiting] = []
        self._senders: set[asyncio.Task[None]] = set()
        self.many_supported = True

    async def settle(self, request: metering_pb2.SettleRequest, timeout: float) -> metering_pb2.SettleResponse:
        if self._lone_settles and self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1  # room on the wire: go now, alone, in this task (no hand-over)
            try:
                metrics.SETTLES_PER_CALL.observe(1)
                return await self._settle_one(request, timeout)
            finally:
                self._in_flight -= 1
                self._start_sender()
        size = request.ByteSize()
        if size >= self._max_bytes or not self.many_supported:
            metrics.SETTLES_PER_CALL.observe(1)
            return await self._settle_one(request, timeout)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, size, loop.time() + timeout, loop.create_future())
        self._waiting.append(waiting)
        self._start_sender()
        try:
            return await asyncio.wait_for(asyncio.shield(waiting.answer), timeout)
        except (TimeoutError, asyncio.CancelledError):
            if waiting in self._waiting:  # never sent: nothing will be, for a caller who has given up
                self._waiting.remove(waiting)
            # Sent already: its answer comes with nobody waiting for it; read it so it is not
            # reported as never retrieved.
            waiting.answer.add_done_callback(lambda answer: answer.cancelled() or answer.exception())
            raise

    def _start_sender(self) -> None:
        if self._waiting and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            sender = asyncio.create_task(self._send_waiting())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                await self._send(self._take_batch())
        finally:
            self._in_flight -= 1

    def _take_batch(self) -> list[_Waiting]:
        count, size = 0, 0
        for waiting in self._waiting:
            if count == self._max_batch or (count and size + waiting.size > self._max_bytes):
                break
            count, size = count + 1, size + waiting.size
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        return batch

    async def _send(self, batch: list[_Waiting]) -> None:
        now = asyncio.get_running_loop().time()
        timeout = max(0.001, max(w.deadline for w in batch) - now)
        if len(batch) == 1 or not self.many_supported:
            await asyncio.gather(*(self._send_one(w, max(0.001, w.deadline - now)) for w in batch))
            return
        metrics.SETTLES_PER_CALL.observe(len(batch))
        try:
            reply = await self._settle_many(
                metering_pb2.SettleManyRequest(settles=[w.request for w in batch]), timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("metering does not know SettleMany (an older version?): settling one call each")
                self.many_supported = False
                await asyncio.gather(*(self._send_one(w, max(0.001, w.deadline - now)) for w in batch))
                return
            for waiting in batch:
                _answer(waiting.answer, error)
            return
        if len(reply.outcomes) != len(batch):  # a broken peer: fail loudly, never guess whose answer is whose
            error = SettleRefused(grpc.StatusCode.INTERNAL, f"SettleMany answered {len(reply.outcomes)} "
                                                            f"outcomes for {len(batch)} settles")
            for waiting in batch:
                _answer(waiting.answer, error)
            return
        for waiting, outcome in zip(batch, reply.outcomes, strict=True):
            if outcome.HasField("settled"):
                _answer(waiting.answer, outcome.settled)
            else:
                code = STATUS_CODES.get(outcome.refused.code, grpc.StatusCode.UNKNOWN)
                _answer(waiting.answer, SettleRefused(code, outcome.refused.message))

    async def _send_one(self, waiting: _Waiting, timeout: float) -> None:
        metrics.SETTLES_PER_CALL.observe(1)
        try:
            _answer(waiting.answer, await self._settle_one(waiting.request, timeout))
        except grpc.aio.AioRpcError as error:
            _answer(waiting.answer, error)


def _answer(future: asyncio.Future[metering_pb2.SettleResponse],
            outcome: metering_pb2.SettleResponse | BaseException) -> None:
    if future.done():  # the caller went away after its settlement was sent; it was settled all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
