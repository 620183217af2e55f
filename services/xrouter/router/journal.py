"""The router's settlement journal: a request's accounting made durable on the router's own disk
before its answer goes out, and delivered to metering behind the answer.

Without it the answer waits for metering to commit the request's Settle: a gRPC round trip, a
PostgreSQL transaction and its WAL flush, most of the time the router adds to a request at low
concurrency. With it the answer waits for an append and an ``fdatasync`` of the router's own
journal file (~0.2 ms here), concurrent requests sharing one flush; a shipper sends the journaled
settlements to metering (coalesced into SettleMany) and, once metering holds a segment's every
settlement, deletes the segment. The guarantee is the same — no answered request unbilled, none
billed twice — because a settlement is durable before its answer and Settle is idempotent: a
router killed after answering replays its journal when it starts again, and a settlement shipped
twice is counted once.

What it changes for the rest of the system:
- metering learns of a request a few milliseconds after its answer (longer while metering is
  down): budgets count the request's reservation until then, a retry of its request_id meanwhile
  waits for it as for one in flight, and feedback on it is NOT_FOUND until it lands;
- while metering is unreachable the journal grows; past ``max_pending`` settlements the router
  refuses new requests (UNAVAILABLE) rather than serve work it could not account;
- the journal must outlive the pod (a PersistentVolume: the chart's router is then a StatefulSet),
  or an answered request's settlement can be lost with it.

Format: segments ``<number>.journal`` of records ``[u32 length][u32 crc32][SettleRequest]``. A
torn tail (a crash mid-append: that request was never answered) ends a segment's replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pathlib
import struct
import time
import zlib
from collections.abc import Awaitable, Callable

from prometheus_client import Counter, Gauge

from xrouter.api.metering.v1 import metering_pb2
from xrouter.common.durable import fsync_path
from xrouter.common.errors import AlreadyExists, InvalidArgument, PermissionDenied, Unavailable

log = logging.getLogger(__name__)
HEADER = struct.Struct("<II")
SEGMENT_RECORDS = 4096  # a segment is deleted once metering holds all of its settlements
MAX_PENDING = 100_000
SHIP_BATCH = 256
LINGER_S = 0.005
# A segment's delivered mark is rewritten at most this often while shipping (and at close): it is a
# file write on the event loop, once per SettleMany it was, ~3% of the router's CPU under load. A
# mark lost to a crash only means up to this much delivered again, and metering counts it once.
MARK_INTERVAL_S = 0.5
LOCK = ".lock"

PENDING = Gauge("xrouter_journal_pending", "Settlements journaled by the router and not yet held by metering")
REFUSED = Counter("xrouter_journal_refused", "Journaled settlements metering refused for good (logged, not retried)")

Deliver = Callable[[metering_pb2.SettleRequest], Awaitable[None]]
# Metering's answers that no resend can change (a malformed settlement, a changed duplicate, another
# tenant's request): logged, counted and dropped. Every other failure is retried.
FINAL = (InvalidArgument, AlreadyExists, PermissionDenied)


class JournalFull(Unavailable):
    pass


class _Segment:
    def __init__(self, directory: pathlib.Path, number: int) -> None:
        self.number, self.path = number, directory / f"{number:012d}.journal"
        self.records = self.delivered = 0
        # ``delivered`` counts out of order within a batch being retried; ``held`` only after a whole
        # batch is held, so it is always a prefix: what the mark may say. ``written``: what it says.
        self.held = self.written = 0
        self.marked_at = float("-inf")

    @property
    def mark(self) -> pathlib.Path:
        """How many of the segment's first records metering holds: skipped on replay. Written
        without a flush (a lost mark only means settlements delivered again, counted once)."""
        return self.path.with_suffix(".delivered")


class SettleJournal:
    """``deliver(request)`` sends one settlement to metering until it is held, or raises: a
    refusal in FINAL drops the settlement (logged, counted); any other failure is retried here."""

    def __init__(self, directory: pathlib.Path, deliver: Deliver, max_pending: int = MAX_PENDING,
                 segment_records: int = SEGMENT_RECORDS) -> None:
        self.directory = directory
        self._deliver = deliver
        self.max_pending = max_pending
        self._segment_records = segment_records
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._file: int | None = None
        self._lock: int | None = None
        self._appending: list[tuple[bytes, metering_pb2.SettleRequest, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[tuple[int, metering_pb2.SettleRequest]] = asyncio.Queue()
        self._shipper: asyncio.Task[None] | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        return self._pending

    async def start(self) -> int:
        """Lock the directory, queue every settlement a previous run left for delivery, open a new
        segment and start shipping; returns how many were left."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{self.directory}: another router process holds this journal") from None
        left = 0
        for number, path in sorted((int(p.stem), p) for p in self.directory.glob("*.journal")):
            segment = _Segment(self.directory, number)
            self._segments[number] = segment
            requests = read_segment(path)
            segment.records = len(requests)
            segment.delivered = segment.held = segment.written = min(_read_mark(segment.mark), segment.records)
            for request in requests[segment.delivered:]:
                self._queued(number, request)
                left += 1
            if segment.delivered >= segment.records:
                self._forget(number)
        self._open(max(self._segments, default=0) + 1)
        self._shipper = asyncio.create_task(self._ship())
        if left:
            log.warning("journal %s: %d settlements from a previous run to deliver to metering", self.directory, left)
        return left

    def check_room(self) -> None:
        """Refuse new work while too much is waiting for metering (the work could not be accounted)."""
        if self._pending >= self.max_pending:
            raise JournalFull(f"metering has not taken the router's last {self._pending} settlements (is it down?): "
                              "new requests are refused until it does")

    async def append(self, request: metering_pb2.SettleRequest) -> None:
        """Durable when this returns (written and flushed to disk, with whatever else was waiting)."""
        payload = request.SerializeToString()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._appending.append((HEADER.pack(len(payload), zlib.crc32(payload)) + payload, request, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await future

    async def _write(self) -> None:
        while self._appending:
            batch, self._appending = self._appending, []
            assert self._active is not None and self._file is not None
            number, fd = self._active.number, self._file
            try:
                await asyncio.to_thread(_write_and_sync, fd, b"".join(record for record, _, _ in batch))
            except OSError as error:  # the disk failed: these requests cannot be answered as accounted
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(Unavailable(f"the router's journal could not be written: {error}"))
                continue
            self._active.records += len(batch)
            for _, request, future in batch:
                self._queued(number, request)
                if not future.done():
                    future.set_result(None)
            if self._active.records >= self._segment_records:
                self._open(number + 1)

    def _queued(self, number: int, request: metering_pb2.SettleRequest) -> None:
        self._pending += 1
        PENDING.inc()
        self._idle.clear()
        self._queue.put_nowait((number, request))

    async def _ship(self) -> None:
        """Deliver in arrival order, a batch at a time (concurrently, so they share SettleMany
        round trips); while metering is unreachable, wait and send the batch again."""
        delay = 0.05
        while True:
            batch = [await self._queue.get()]
            if self._queue.qsize() < SHIP_BATCH - 1:
                await asyncio.sleep(LINGER_S)  # let a few more gather: one SettleMany for them costs less
            while len(batch) < SHIP_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            while batch:
                outcomes = await asyncio.gather(*(self._deliver(request) for _, request in batch),
                                                return_exceptions=True)
                retry = []
                touched = {number for number, _ in batch}
                for (number, request), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException) and not isinstance(outcome, FINAL):
                        # Metering unreachable, slow, or anything unforeseen: kept and sent again
                        # (a journal that cannot drain fills and refuses new work; nothing is dropped).
                        retry.append((number, request))
                        continue
                    if isinstance(outcome, BaseException):  # final: resending cannot change metering's answer
                        REFUSED.inc()
                        log.error("metering refused journaled settlement of request %s for good (%s): dropped from "
                                  "the journal", request.request_id, outcome)
                    self._delivered(number)
                batch = retry
                if batch:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                else:  # the queue is delivered in order, a batch at a time: each segment's progress is a prefix
                    self._mark(touched)
                    delay = 0.05

    def _delivered(self, number: int) -> None:
        self._pending -= 1
        PENDING.dec()
        segment = self._segments[number]
        segment.delivered += 1
        if segment is not self._active and segment.delivered >= segment.records:
            self._forget(number)
        if self._pending == 0:
            self._idle.set()

    def _mark(self, numbers: set[int]) -> None:
        """After a whole batch is held: its segments' progress is a prefix, marked when due."""
        for number in numbers:
            segment = self._segments.get(number)
            if segment is not None:
                segment.held = segment.delivered
        self._write_marks(due_only=True)

    def _write_marks(self, due_only: bool) -> None:
        clock = time.monotonic()
        for segment in self._segments.values():
            if segment.held > segment.written and (not due_only or clock - segment.marked_at >= MARK_INTERVAL_S):
                segment.mark.write_text(str(segment.held))
                segment.written, segment.marked_at = segment.held, clock

    def _open(self, number: int) -> None:
        """Start segment ``number`` (the previous active one is deleted once all of it is delivered)."""
        previous = self._active
        if self._file is not None:
            os.close(self._file)
        segment = _Segment(self.directory, number)
        self._file = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fsync_path(self.directory)  # the new file's name survives a crash too
        self._active = self._segments[number] = segment
        if previous is not None and previous.delivered >= previous.records:
            self._forget(previous.number)

    def _forget(self, number: int) -> None:
        segment = self._segments.pop(number)
        for path in (segment.path, segment.mark):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def drain(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until metering holds every journaled settlement; True if it does."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop shipping; what is not delivered stays on disk for the next start."""
        if self._writer is not None:
            await self._writer
        if self._shipper is not None:
            self._shipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._shipper
        if self._pending:
            log.warning("journal %s: %d settlements not yet delivered stay for the next start", self.directory,
                        self._pending)
        if self._active is not None and self._active.delivered >= self._active.records:
            self._forget(self._active.number)  # nothing in it left to deliver
        self._write_marks(due_only=False)
        for fd in (self._file, self._lock):
            if fd is not None:
                os.close(fd)
        self._file = self._lock = None


def read_segment(path: pathlib.Path) -> list[metering_pb2.SettleRequest]:
    """The settlements of a segment, up to its end or to a torn or corrupt record (a crash
    mid-append, never acknowledged: the rest of the segment is not trusted either)."""
    data = path.read_bytes()
    requests, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, checksum = HEADER.unpack_from(data, offset)
        payload = data[offset + HEADER.size:offset + HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != checksum:
            log.warning("journal %s: a torn or corrupt record at byte %d ends its replay", path, offset)
            break
        requests.append(metering_pb2.SettleRequest.FromString(payload))
        offset += HEADER.size + length
    return requests


def _read_mark(path: pathlib.Path) -> int:
    try:
        return max(0, int(path.read_text() or 0))
    except (FileNotFoundError, ValueError):  # none yet, or torn by a crash: deliver the whole segment again
        return 0


def _write_and_sync(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fdatasync(fd)
