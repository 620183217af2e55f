"""What the service does when the ledger's database goes away.

:class:`StoreGuard` sits between the servicer and the :class:`Ledger`:

- Writes from the router (Record, Settle, RecordScore) go straight to the database while it is up
  and the spool is empty. When the database is unreachable they go to the on-disk :class:`Spool`
  (``spooled`` in the reply) and are replayed in order once it is back; without a spool, or with
  the spool full, they fail with UNAVAILABLE. Never dropped silently. A write whose commit was
  lost in a crash is spooled too: the ledger's idempotency makes the replay count it once.
- Budget decisions (Authorize) and reads fail closed with UNAVAILABLE while the database is down
  or spooled writes are not replayed yet: a budget is checked only against a complete ledger.
- :meth:`StoreGuard.watch` pings the database, replays the spool when it is back, and reports
  health: SERVING exactly when the database answers and the spool is empty.
- With in-memory budget totals (``totals.py``) every committed write updates them, inside the
  totals' write gate; an outage or a spooled write marks them stale, and the health check reloads
  them from the ledger once the spool is replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy.exc as sa_exc

from xrouter.common.errors import AlreadyExists, InvalidArgument, Unavailable, XRouterError
from xrouter.metering import metrics
from xrouter.metering.ledger import CallRecord, Ledger, Settlement, is_transient, validate_score
from xrouter.metering.spool import Entry, Spool
from xrouter.metering.store import session_factory, session_scope
from xrouter.metering.totals import BudgetTotals, Held

log = logging.getLogger(__name__)
T = TypeVar("T")


# SQLSTATE classes that mean the server cannot serve at all: connection exceptions (08),
# insufficient resources (53: too many connections, disk full, out of memory), system errors
# (58: I/O), and operator intervention's shutdown states (57P01-57P05). Everything else with a
# SQLSTATE came from a server that answered, so it is about this statement, not an outage.
_OUTAGE_CLASSES = ("08", "53", "58")


def _sqlstate(error: sa_exc.DBAPIError) -> str:
    return str(getattr(error.orig, "sqlstate", "") or "")


def is_store_down(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached (as opposed to refusing a write,
    or aborting a transaction in a deadlock, which drivers also report as operational errors).

    psycopg reports a refused statement as OperationalError too (program_limit_exceeded: an
    index row over PostgreSQL's size limit, a 3 KB tenant), so a SQLSTATE decides first: a server
    that answered with a statement-level error is up. Errors without a SQLSTATE (a refused TCP
    connection, SQLite's I/O errors) keep the driver's classification."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa_exc.DBAPIError) and (state := _sqlstate(error)):
        return state[:2] in _OUTAGE_CLASSES or state.startswith("57P")
    if isinstance(error, sa_exc.DBAPIError) and is_transient(error):
        return False
    return isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError))


def refusal(error: BaseException) -> XRouterError | None:
    """The client error for a statement the database refused because of its values (SQLSTATE 22:
    data exception, 54: program limit, 23: integrity), so that the caller gets a 4xx-class status
    instead of INTERNAL or, worse, an outage; None for anything else. Edge validation should make
    these unreachable: this is the backstop, and it must not mark the database down."""
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    state = _sqlstate(error)
    what = f"{type(error.orig).__name__}: {str(error.orig).strip().splitlines()[0][:200]}"
    if state[:2] in ("22", "54") or isinstance(error, sa_exc.DataError):
        return InvalidArgument("request", f"the ledger refused a value ({what})")
    if state[:2] == "23" or isinstance(error, sa_exc.IntegrityError):
        return AlreadyExists(f"the ledger refused a conflicting write ({what})")
    return None


class StoreGuard:
    """Routes ledger calls around database outages (see the module docstring). Thread-safe; the
    blocking methods run in worker threads."""

    def __init__(self, ledger: Ledger, spool: Spool | None, totals: BudgetTotals | None = None) -> None:
        self.ledger = ledger
        self.spool = spool
        self.totals = totals  # None: budgets are checked in the database (budgets.py)
        self._up = True
        metrics.STORE_UP.set(1)
        metrics.SPOOL_ENTRIES.set(self.pending)

    @property
    def pending(self) -> int:
        """Writes waiting in the spool."""
        return len(self.spool) if self.spool is not None else 0

    @property
    def serving(self) -> bool:
        """The database answered last time, and nothing waits in the spool."""
        return self._up and not self.pending

    def _mark_down(self, error: BaseException) -> None:
        if self._up:
            log.error("ledger database unreachable (%s: %s); %s", type(error).__name__, str(error).strip()[:200],
                      "ledger writes go to the spool" if self.spool else "ledger writes FAIL (no spool configured)")
        self._up = False
        self._stale()
        metrics.STORE_UP.set(0)

    def _stale(self) -> None:
        if self.totals is not None:
            self.totals.valid = False  # reloaded by check() once the ledger is complete again

    def _mark_up(self) -> None:
        if not self._up:
            log.info("ledger database reachable again")
            self._up = True
            metrics.STORE_UP.set(1)

    # --- reads and budget decisions: fail closed ------------------------------------------------

    def call(self, method: Callable[..., T], *args: Any) -> T:
        """Run a ledger read or budget decision; Unavailable while the database is down or the
        spool not yet replayed."""
        if self.pending:
            raise Unavailable(f"metering: {self.pending} ledger writes made while the database was down are "
                              "being replayed; budgets and usage are answered only from a complete ledger: "
                              "retry shortly")
        try:
            return method(*args)
        except Exception as error:
            if not is_store_down(error):
                raise refusal(error) or error from None
            self._mark_down(error)
            raise Unavailable(f"metering: the ledger database is unreachable ({type(error).__name__}); "
                              "retry shortly") from None

    # --- writes: direct, or spooled -------------------------------------------------------------

    def _write(self, entries: Callable[[], list[Entry]], direct: Callable[[], T]) -> tuple[T | None, bool]:
        """(result of ``direct``, False), or (None, True) when the writes were spooled. With a spool,
        writes go to it while the database is known down (the health watch replays them in order);
        without one, every write tries the database, so nothing waits on the watch to recover."""
        if not self.pending and (self._up or self.spool is None):
            try:
                result = direct()
            except Exception as error:
                if not is_store_down(error):
                    raise refusal(error) or error from None
                self._mark_down(error)
            else:
                self._mark_up()
                return result, False
        if self.spool is None:
            raise Unavailable("metering: the ledger database is unreachable and no spool is configured "
                              "(XROUTER_METERING_SPOOL_DIR): this write was NOT stored; retry")
        self._stale()  # the totals miss these writes until the replay and a reload
        spooled = entries()  # built only now: most writes never need them
        self.spool.append_many(spooled)
        metrics.SPOOLED.labels(spooled[0]["op"]).inc(len(spooled))
        metrics.SPOOL_ENTRIES.set(self.pending)
        return None, True

    def record(self, call: CallRecord) -> tuple[bool, bool]:
        """Record a call: (duplicate, spooled)."""
        outcome = self.record_many([call])[0]
        if isinstance(outcome, XRouterError):
            raise outcome
        return outcome

    def record_many(self, records: list[CallRecord]) -> list[tuple[bool, bool] | XRouterError]:
        """Record calls in one transaction (or one spool fsync): per call (duplicate, spooled), or
        the refusal of a changed duplicate."""
        for call in records:
            call.validate()  # bad input is refused now, not discovered on replay
        at = self.ledger.now()

        def direct() -> list[bool | AlreadyExists]:
            with self._committing():
                outcomes = self.ledger.record_many(records, at=at)
                if self.totals is not None:  # new calls only: a duplicate was counted when first recorded
                    self.totals.consume([(c.request_id, c.tenant, c.model, c.cost_micro_usd, at)
                                         for c, o in zip(records, outcomes, strict=True) if o is False])
                return outcomes

        outcomes, spooled = self._write(
            lambda: [{"op": "record", "at": at.isoformat(), "call": dataclasses.asdict(c)} for c in records], direct)
        if spooled or outcomes is None:
            return [(False, True)] * len(records)
        return [o if isinstance(o, XRouterError) else (o, False) for o in outcomes]

    def settle(self, summary: Settlement) -> bool:
        """Settle a request (with the calls it carries); True when spooled."""
        return self.settle_many([summary])[0][0]

    def settle_many(self, summaries: list[Settlement]) -> list[tuple[bool, int]]:
        """Settle requests, with the calls they carry, in one transaction (or one spool fsync); per
        request (spooled, how many of its calls the ledger or the spool holds now). The totals see
        each new call once, after the commit, before its reservation is released."""
        for summary in summaries:
            summary.validate()  # refused now, not discovered on replay
        at = self.ledger.now()

        def direct() -> None:
            with self._committing():
                rowless = (self.totals.without_rows([s.request_id for s in summaries])
                           if self.totals is not None else frozenset())
                duplicates = self.ledger.settle_many(summaries, at=at, without_reservation_rows=rowless)
                if self.totals is not None:  # new calls only: a duplicate was counted when first recorded
                    self.totals.consume([(c.request_id, c.tenant, c.model, c.cost_micro_usd, at)
                                         for s, seen in zip(summaries, duplicates, strict=True)
                                         for c, before in zip(s.call_records, seen, strict=True) if not before])
                    self.totals.release([s.request_id for s in summaries])

        spooled = self._write(lambda: [{"op": "settle", "at": at.isoformat(), "summary": dataclasses.asdict(s)}
                                       for s in summaries], direct)[1]
        return [(spooled, len(s.call_records)) for s in summaries]

    def reserve_many(self, held: list[Held]) -> list[bool]:
        """Write reservations admitted by the in-memory totals: per reservation True (new work) or
        False (its request_id was seen before; memory forgets it). Never spooled: like every
        budget decision, this fails closed (UNAVAILABLE) while the ledger is not complete."""
        def work() -> list[bool]:
            with self._committing():
                written = self.ledger.reserve_many([(h.reservation_id, h.request_id, h.tenant, h.estimate,
                                                     sorted(h.models), h.created_at, h.expires_at) for h in held])
                assert self.totals is not None
                for item, new in zip(held, written, strict=True):
                    if new:
                        self.totals.confirm(item)
                    else:
                        self.totals.forget(item)
                return written

        self.require_complete()
        return self.call(work)

    def require_complete(self) -> None:
        """Unavailable unless the in-memory totals match a complete ledger (memory mode)."""
        if self.totals is not None and not (self.totals.valid and self._up and not self.pending):
            raise Unavailable("metering: the budget totals are being reloaded from the ledger (after an outage or "
                              "a restart); budgets are answered only from a complete ledger: retry shortly")

    def _committing(self):  # type: ignore[no-untyped-def]
        """A ledger commit and its update of the totals, never interleaved with a reload."""
        return self.totals.gate.writing() if self.totals is not None else contextlib.nullcontext()

    def reload_totals(self) -> None:
        """Read the budget totals back from the ledger (blocking; writers wait)."""
        if self.totals is None:
            return
        with self.totals.gate.reloading(), session_scope(session_factory(self.ledger.engine)) as session:
            self.totals.load(session, self.ledger.now())
        log.info("budget totals loaded from the ledger")

    def record_score(self, request_id: str, tenant: str, score: float, reward: float) -> bool:
        """Attach a score to a request; True when spooled."""
        outcome = self.record_score_many([(request_id, tenant, score, reward)])[0]
        if isinstance(outcome, XRouterError):
            raise outcome
        return outcome

    def record_score_many(self, scores: list[tuple[str, str, float, float]]) -> list[bool | XRouterError]:
        """Attach scores, (request_id, tenant, score, reward), in one transaction (or one spool
        fsync): per score whether spooled, or its refusal (a request of another tenant)."""
        for request_id, tenant, score, reward in scores:
            validate_score(request_id, tenant, score, reward)  # refused now, not discovered on replay
        at = self.ledger.now()
        outcomes, spooled = self._write(
            lambda: [{"op": "score", "at": at.isoformat(), "request_id": r, "tenant": t, "score": s, "reward": w}
                     for r, t, s, w in scores],
            lambda: self.ledger.record_score_many(scores, at=at))
        if spooled or outcomes is None:
            return [True] * len(scores)
        return [o if o is not None else False for o in outcomes]

    def _apply(self, entries: list[Entry]) -> list[str | None]:
        """Replay spooled writes in order, at the times they were received, runs of records in one
        transaction each; per entry None, or why the ledger refused it."""
        refusals: list[str | None] = []
        start = 0
        while start < len(entries):
            end = start + 1
            while end < len(entries) and entries[start]["op"] == entries[end]["op"] == "record":
                end += 1
            run = entries[start:end]
            if entries[start]["op"] == "record" and len(run) > 1:
                try:
                    outcomes = self.ledger.record_many([CallRecord(**e["call"]) for e in run],
                                                       at=[dt.datetime.fromisoformat(e["at"]) for e in run])
                    refusals += [o.message if isinstance(o, XRouterError) else None for o in outcomes]
                except XRouterError:  # one bad entry: replay them one by one to find it
                    refusals += [self._apply_one(entry) for entry in run]
            else:
                refusals += [self._apply_one(entry) for entry in run]
            start = end
        return refusals

    def _apply_one(self, entry: Entry) -> str | None:
        at = dt.datetime.fromisoformat(entry["at"])
        try:
            if entry["op"] == "record":
                self.ledger.record(CallRecord(**entry["call"]), at=at)
            elif entry["op"] == "settle":
                summary = entry["summary"]
                fields = dict(summary, messages=tuple(tuple(m) for m in summary["messages"]),
                              call_records=tuple(CallRecord(**c) for c in summary.get("call_records", ())))
                self.ledger.settle(Settlement(**fields), at=at)
            elif entry["op"] == "score":
                self.ledger.record_score(entry["request_id"], entry["tenant"], entry["score"], entry["reward"], at=at)
            else:
                return f"unknown spooled operation {entry['op']!r}"
        except XRouterError as refusal:
            return refusal.message
        return None

    # --- health ---------------------------------------------------------------------------------

    def check(self) -> bool:
        """One health round (blocking): ping the database, replay the spool if it is back.
        Returns whether the service is serving now."""
        try:
            self.ledger.ping()
            if self.spool is not None and len(self.spool):
                replayed = self.spool.drain(self._apply)
                log.info("replayed %d spooled ledger writes", replayed)
            if self.totals is not None:
                if not self.totals.valid and not self.pending:
                    self.reload_totals()
                self.totals.prune(self.ledger.now())
        except Exception as error:
            if not is_store_down(error):
                raise
            self._mark_down(error)
            return False
        finally:
            metrics.SPOOL_ENTRIES.set(self.pending)
        self._mark_up()
        return self.serving

    async def watch(self, set_serving: Callable[[bool], Awaitable[None]], interval_s: float) -> None:
        """Run :meth:`check` every ``interval_s`` seconds and report changes through ``set_serving``,
        until cancelled."""
        serving: bool | None = None
        while True:
            try:
                now_serving = await asyncio.to_thread(self.check)
            except Exception:  # noqa: BLE001 - a bug in the check must not end health reporting
                log.exception("metering health check failed")
                now_serving = False
            if now_serving != serving:
                log.info("metering health: %s", "SERVING" if now_serving else "NOT_SERVING")
                await set_serving(now_serving)
                serving = now_serving
            await asyncio.sleep(interval_s)
