"""Budget checks answered from memory: running totals per tenant and budget, kept equal to the ledger.

With ``XROUTER_METERING_BUDGETS=memory`` (the default) Authorize no longer locks the tenant's
budget rows and sums a month of calls in a transaction. :class:`BudgetTotals` holds, per tenant:
its budgets; what it spent per (model or all models, day or month) in the current periods; and its
active reservations (estimate, what their records consumed, the models they may call). The ledger
stays the source of truth:

- the totals are loaded from it at start-up and again after a spool replay (or any outage: while
  they may be stale, Authorize fails closed with UNAVAILABLE, as the database path does);
- they change only after the ledger committed the change: a Record adds its cost to spend and to
  its reservation's consumption, a Settle releases the reservation, an Authorize's reservation is
  written (group commit, ``batching.py``) before its answer goes out, SetBudget after its commit.
  A reload excludes writers (:class:`WriteGate`), so no commit is counted twice or missed.

The admission rule is the database path's (``budgets.py``), per hard budget B:

    spent_B(period) + outstanding_B + estimate <= limit_B

and the check and the reservation happen under one lock, so concurrent requests never see the same
room twice. **Overshoot bound (one metering replica):** the spend of a budget period can exceed the
limit only by what admitted requests spend beyond their own estimates, plus spend of requests whose
reservation expired (``reservation_ttl_s``) before they settled, plus the spend of requests whose
reservation was memory-only (a router-generated request_id: ``Held.durable`` False) and in flight
when metering restarted (a restart forgets those holds; a reload keeps the unsettled ones):

    spend - limit <= sum over admitted requests r of max(0, cost_r - estimate_r)

so with N requests in flight whose cost is at most C and whose estimate is E, at most
N x max(0, C - E); zero when every request stays within its estimate (the router reserves two of
the dearest calls per calling turn, or the request's own dollar cap). ``tests/test_metering_totals.py``
fires concurrent requests at a small budget through the real service and checks this bound.

**Several replicas:** each replica's totals would miss the others' reservations, so memory mode
assumes one metering writer per ledger (the chart runs metering as a one-replica StatefulSet in
this mode, which also never runs two pods of one ordinal at once). With more replicas set
``XROUTER_METERING_BUDGETS=database``: the serialised database check, exact across replicas.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.orm import Session

from xrouter.metering import budgets
from xrouter.metering.budgets import PERIODS, Authorization, period_start
from xrouter.metering.schema import Budget, LedgerCall, RequestSummary, Reservation, ReservationModel

SpentKey = tuple[str, str, str, dt.datetime]  # tenant, model ("" = all), period, period start


@dataclasses.dataclass
class Held:
    """An active reservation as memory keeps it."""

    reservation_id: str
    request_id: str
    tenant: str
    estimate: int
    models: frozenset[str]
    created_at: dt.datetime
    expires_at: dt.datetime
    consumed: int = 0
    # False: held in memory only, without a ledger row (a router-generated request_id, which no
    # retry can carry): a reload keeps it until its request settles; a restart forgets it.
    durable: bool = True

    def left(self) -> int:
        """What the reservation still holds: the estimate less what its records consumed."""
        return max(0, self.estimate - self.consumed)

    def may_spend_on(self, model: str) -> bool:
        """Whether the request may call ``model`` ("": counts against the all-models budget)."""
        return not model or not self.models or model in self.models


class WriteGate:
    """Writers (a ledger commit and its update of the totals) share the gate; a reload from the
    ledger holds it alone. Without it a commit landing between the reload's read and a writer's
    update would be counted twice, or, the other way round, not at all."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writers = 0
        self._reloading = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Held around one commit and its update of the totals."""
        with self._cond:
            while self._reloading:
                self._cond.wait()
            self._writers += 1
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1
                self._cond.notify_all()

    @contextmanager
    def reloading(self) -> Iterator[None]:
        """Held while the totals are read back from the ledger. New writers wait as soon as a
        reload asks (under steady load the writers' turns overlap, and a reload waiting for a
        moment without any would wait for ever, with Authorize failing closed meanwhile)."""
        with self._cond:
            while self._reloading:
                self._cond.wait()
            self._reloading = True
            while self._writers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._reloading = False
                self._cond.notify_all()


class BudgetTotals:
    """The in-memory running totals (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, dict[tuple[str, str], tuple[int | None, int | None]]] = {}
        self._spent: dict[SpentKey, int] = {}
        self._held: dict[str, Held] = {}
        self._by_tenant: dict[str, dict[str, Held]] = {}
        self.valid = False  # loaded from the ledger and kept up since; False: Authorize fails closed
        self.gate = WriteGate()

    # --- loading from the ledger ------------------------------------------------------------------

    def load(self, session: Session, now: dt.datetime) -> None:
        """Replace everything with the ledger's state at ``now`` (call under ``gate.reloading()``)."""
        limits: dict[str, dict[tuple[str, str], tuple[int | None, int | None]]] = {}
        for row in session.scalars(sa.select(Budget)):
            limits.setdefault(row.tenant, {})[(row.model, row.period)] = (row.limit_micro_usd,
                                                                          row.soft_limit_micro_usd)
        spent: dict[SpentKey, int] = {}
        for period in PERIODS:
            start = period_start(period, now)
            for tenant, model, cost in session.execute(
                    sa.select(LedgerCall.tenant, LedgerCall.model, sa.func.sum(LedgerCall.cost_micro_usd))
                    .where(LedgerCall.created_at >= start).group_by(LedgerCall.tenant, LedgerCall.model)):
                for scope in ("", model):
                    key = (tenant, scope, period, start)
                    spent[key] = spent.get(key, 0) + int(cost)
        models: dict[str, set[str]] = {}
        active = sa.and_(Reservation.released.is_(False), Reservation.expires_at > now)
        for reservation_id, model in session.execute(
                sa.select(ReservationModel.reservation_id, ReservationModel.model)
                .join(Reservation, Reservation.id == ReservationModel.reservation_id).where(active)):
            models.setdefault(reservation_id, set()).add(model)
        held = [Held(r.id, r.request_id, r.tenant, r.estimate_micro_usd, frozenset(models.get(r.id, ())),
                     r.created_at, r.expires_at, r.consumed_micro_usd)
                for r in session.scalars(sa.select(Reservation).where(active))]
        with self._lock:
            memory_only = [item for item in self._held.values() if not item.durable and item.expires_at > now]
        held += _unsettled(session, memory_only)
        with self._lock:
            self._limits, self._spent, self._held, self._by_tenant = limits, spent, {}, {}
            for item in held:
                self._track(item)
            self.valid = True

    # --- admission --------------------------------------------------------------------------------

    def holds(self, request_id: str) -> bool:
        """Whether memory holds a reservation (committed or being written) for ``request_id``."""
        with self._lock:
            return request_id in self._held

    def without_rows(self, request_ids: Sequence[str]) -> frozenset[str]:
        """Those of ``request_ids`` whose reservation memory holds without a ledger row (memory-only:
        a settlement has no row of theirs to release)."""
        with self._lock:
            return frozenset(r for r in request_ids if (held := self._held.get(r)) is not None and not held.durable)

    def admit(self, held: Held, now: dt.datetime) -> Authorization:
        """Check ``held`` against the tenant's hard budgets and, if it fits, hold it (to be
        confirmed once its row is committed, or forgotten); raise ResourceExhausted naming the
        budget it would pass."""
        with self._lock:
            remaining, warnings = self._check(held.tenant, held.estimate, held.models, now)
            self._track(held)
        return Authorization(held.reservation_id, -1 if remaining is None else max(0, remaining),
                             held.expires_at, tuple(warnings))

    def _check(self, tenant: str, estimate: int, models: frozenset[str],
               now: dt.datetime) -> tuple[int | None, list[str]]:
        remaining: int | None = None
        warnings: list[str] = []
        mine = self._by_tenant.get(tenant, {})
        for expired in [item for item in mine.values() if item.expires_at <= now]:
            self._untrack(expired.request_id)
        for (model, period), (hard, soft) in sorted(self._limits.get(tenant, {}).items()):
            if model and models and model not in models:
                continue
            spent = self._spent.get((tenant, model, period, period_start(period, now)), 0)
            outstanding = sum(item.left() for item in mine.values() if item.may_spend_on(model))
            after = spent + outstanding + estimate
            budget = Budget(tenant=tenant, model=model, period=period, limit_micro_usd=hard,
                            soft_limit_micro_usd=soft)
            if hard is not None:
                if after > hard:
                    budgets.refuse(budget, spent, outstanding, estimate, sorted(models), now)
                remaining = hard - after if remaining is None else min(remaining, hard - after)
            if soft is not None and after > soft:
                warnings.append(budgets.soft_warning(budget, after))
        return remaining, warnings

    # --- updates after the ledger committed ----------------------------------------------------------

    def confirm(self, held: Held) -> None:
        """The reservation's row is committed: keep holding it (again, if a reload dropped it)."""
        with self._lock:
            if held.request_id not in self._held:
                self._track(held)

    def forget(self, held: Held) -> None:
        """Drop a reservation that was not written (the id was seen before, or the write failed);
        only this one: a concurrent retry's reservation of the same request_id stays."""
        with self._lock:
            if self._held.get(held.request_id) is held:
                self._untrack(held.request_id)

    def consume(self, costs: Sequence[tuple[str, str, str, int, dt.datetime]]) -> None:
        """Committed calls, (request_id, tenant, model, cost, made at): spend grows, and each
        request's reservation holds that much less."""
        with self._lock:
            for request_id, tenant, model, cost, at in costs:
                for period in PERIODS:
                    start = period_start(period, at)
                    for scope in ("", model):
                        key = (tenant, scope, period, start)
                        self._spent[key] = self._spent.get(key, 0) + cost
                held = self._held.get(request_id)
                if held is not None and held.tenant == tenant:
                    held.consumed += cost

    def release(self, request_ids: Sequence[str]) -> None:
        """Settled requests: their reservations hold nothing any more."""
        with self._lock:
            for request_id in request_ids:
                self._untrack(request_id)

    def set_budget(self, tenant: str, period: str, hard: int | None, soft: int | None, model: str) -> None:
        """A committed SetBudget (both None: removed)."""
        with self._lock:
            limits = self._limits.setdefault(tenant, {})
            if hard is None and soft is None:
                limits.pop((model, period), None)
            else:
                limits[(model, period)] = (hard, soft)

    def prune(self, now: dt.datetime) -> None:
        """Forget spend of periods that ended and reservations that expired (a crashed router's
        requests never settle), so memory stays bounded by the live tenants and requests."""
        starts = {period: period_start(period, now) for period in PERIODS}
        with self._lock:
            for key in [key for key in self._spent if key[3] < starts[key[2]]]:
                del self._spent[key]
            for request_id in [rid for rid, held in self._held.items() if held.expires_at <= now]:
                self._untrack(request_id)

    def spent(self, tenant: str, model: str, period: str, now: dt.datetime) -> int:
        """Spend of the budget scope in the period containing ``now`` (tests, diagnostics)."""
        with self._lock:
            return self._spent.get((tenant, model, period, period_start(period, now)), 0)

    def outstanding(self, tenant: str) -> dict[str, int]:
        """request_id → what its active reservation still holds (tests, diagnostics)."""
        with self._lock:
            return {rid: item.left() for rid, item in self._by_tenant.get(tenant, {}).items()}

    def _track(self, held: Held) -> None:
        self._held[held.request_id] = held
        self._by_tenant.setdefault(held.tenant, {})[held.request_id] = held

    def _untrack(self, request_id: str) -> None:
        held = self._held.pop(request_id, None)
        if held is not None:
            mine = self._by_tenant.get(held.tenant, {})
            mine.pop(request_id, None)
            if not mine:
                self._by_tenant.pop(held.tenant, None)


def _unsettled(session: Session, memory_only: Sequence[Held]) -> list[Held]:
    """The memory-only reservations whose requests have not settled: a reload keeps them (they have
    no row to be read back from), while the spend of those that settled (their Settle spooled
    during an outage, say) is now in the ledger, and holding them too would count it twice."""
    if not memory_only:
        return []
    settled = set(session.scalars(sa.select(RequestSummary.request_id).where(
        RequestSummary.request_id.in_(sorted(item.request_id for item in memory_only)),
        RequestSummary.outcome != "")))
    return [item for item in memory_only if item.request_id not in settled]
