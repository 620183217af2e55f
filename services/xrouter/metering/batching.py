"""Group commit for the ledger's writes (Record, Settle, RecordScore, and Authorize's reservations
in memory mode): writes of one kind that arrive while a batch of that kind is being written share
the next transaction (or, while the database is down, the next spool fsync).

A commit costs a WAL flush whatever it carries, so under load one transaction per write caps the
service at the disk's flush rate; batching lets throughput grow with concurrency instead. No
waiting is added: a lone write goes out at once, and a batch forms only from writes that queued
behind the one being written. Every caller gets its own answer: its own result (new, duplicate,
spooled) or its own refusal. A batch that fails as a whole for a reason other than an outage (a
value the database refuses) is written again one write at a time, so one bad write cannot fail
the others; an outage (UNAVAILABLE) is every caller's answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Histogram

from xrouter.common.errors import Unavailable
from xrouter.metering import metrics
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord

log = logging.getLogger(__name__)
MAX_BATCH = 500
Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Queues writes of one kind on one event loop and hands them to ``write_many`` (blocking, run
    in a worker thread) a batch at a time. ``write_many`` returns one outcome per item, in order:
    its result, or the exception that is that item's own refusal."""

    def __init__(self, write_many: Callable[[list[Item]], Sequence[Result | BaseException]],
                 histogram: Histogram, max_batch: int = MAX_BATCH) -> None:
        self._write_many = write_many
        self._histogram = histogram
        self._max = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Write ``item`` with whatever else is waiting; its own result, or its own refusal raised."""
        return await self.enqueue(item)

    def enqueue(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item`` without waiting: its future holds its result or its refusal. Items
        enqueued together (one caller's several writes) share the next batch."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
            self._histogram.observe(len(batch))
            try:
                outcomes = await asyncio.to_thread(self._write_many, [item for item, _ in batch])
            except Exception as error:  # noqa: BLE001 - handed to its callers, never dropped
                if len(batch) == 1 or isinstance(error, Unavailable):
                    for _, future in batch:
                        _answer(future, error)
                    continue
                log.warning("a batch of %d ledger writes failed as a whole (%s); writing them one by one",
                            len(batch), type(error).__name__)
                for item, future in batch:  # so that only the bad write gets the refusal
                    try:
                        _answer(future, (await asyncio.to_thread(self._write_many, [item]))[0])
                    except Exception as own:  # noqa: BLE001 - this caller's own refusal
                        _answer(future, own)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                _answer(future, outcome)


def _answer(future: asyncio.Future[Result], outcome: Result | BaseException) -> None:
    if future.done():  # the caller went away; the write was made all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RecordBatcher(GroupCommit[CallRecord, tuple[bool, bool]]):
    """Records through ``guard``: each caller gets (duplicate, spooled) or its own refusal."""

    def __init__(self, guard: StoreGuard, max_batch: int = MAX_BATCH) -> None:
        super().__init__(guard.record_many, metrics.RECORD_BATCH, max_batch)

    async def record(self, call: CallRecord) -> tuple[bool, bool]:
        """Record ``call``: (duplicate, spooled). Raises the call's own refusal."""
        call.validate()  # a bad call is refused alone, not with its batch
        return await self.submit(call)
