"""Group commit for Record: calls that arrive while a batch is being written share the next
transaction (or, while the database is down, the next spool fsync).

A commit costs a WAL flush whatever it carries, so under load one transaction per call caps the
service at the disk's flush rate; batching lets throughput grow with concurrency instead. No
waiting is added: a lone call is written at once, and a batch forms only from calls that queued
behind the one being written. Every caller still gets its own answer (new, duplicate, spooled, or
its own refusal).
"""

from __future__ import annotations

import asyncio
import logging

from xrouter.metering import metrics
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord

log = logging.getLogger(__name__)
MAX_BATCH = 500


class RecordBatcher:
    """Queues Records of one event loop and writes them through ``guard`` a batch at a time."""

    def __init__(self, guard: StoreGuard, max_batch: int = MAX_BATCH) -> None:
        self._guard = guard
        self._max = max_batch
        self._waiting: list[tuple[CallRecord, asyncio.Future[tuple[bool, bool]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, call: CallRecord) -> tuple[bool, bool]:
        """Record ``call``: (duplicate, spooled). Raises the call's own refusal."""
        call.validate()  # a bad call is refused alone, not with its batch
        future: asyncio.Future[tuple[bool, bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self._max], self._waiting[self._max:]
            metrics.RECORD_BATCH.observe(len(batch))
            try:
                outcomes = await asyncio.to_thread(self._guard.record_many, [call for call, _ in batch])
            except Exception as error:  # noqa: BLE001 - handed to every caller of the batch, never dropped
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # the caller went away; the call is written all the same
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
