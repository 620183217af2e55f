"""Budgets and reservations: Authorize's admission check, and setting limits.

The invariant Authorize keeps, per hard budget B of a tenant (all models, or one model):

    spent_B(period) + outstanding_B + estimate <= limit_B

where ``outstanding_B`` sums, over the tenant's active (unreleased, unexpired) reservations that
may spend on B, what their records have not consumed yet: ``max(0, estimate - consumed)``.
Authorizations of one tenant are serialised by locking its budget rows (``SELECT ... FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and spent and outstanding are read in one
statement (one snapshot), so a Record committing in between is never missed by both sums.
Records move money from outstanding to spent, never increasing the sum while a request stays
within its estimate. Hence the spend can pass the limit only by what admitted requests spend
beyond their estimates, or after their reservations expired (see the concurrency test).

This is the ``database`` budget mode (exact across metering replicas). In ``memory`` mode, the
default, Authorize checks the same rule against running totals (``totals.py``); this module
then writes only its reservations (:func:`reserve_many`) and answers request ids seen before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrouter.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from xrouter.metering.schema import UTC, Budget, LedgerCall, RequestSummary, Reservation, ReservationModel

PERIODS = ("day", "month")
_WORD = {"day": "daily", "month": "monthly"}


@dataclasses.dataclass(frozen=True)
class Authorization:
    """A reservation, the room left under the tightest hard limit after it (-1: no hard limit),
    and one warning per soft limit it passes (allowed, but flagged)."""

    reservation_id: str
    remaining_micro_usd: int
    expires_at: dt.datetime
    warnings: tuple[str, ...] = ()
    # "new" (reserved now), or what an earlier request with this id is doing: "in_flight",
    # "settled" (with the response it stored, JSON) or "abandoned" (never settled, expired).
    state: str = "new"
    response_json: str = ""

    @property
    def soft_limit_exceeded(self) -> bool:
        """True when at least one soft limit is passed."""
        return bool(self.warnings)


def usd(micro: int) -> str:
    """Micro-dollars as dollars for messages: 1_500_000 -> '$1.50', 1_234 -> '$0.001234'."""
    sign = "-" if micro < 0 else ""
    dollars, fraction = divmod(abs(micro), 1_000_000)
    return f"{sign}${dollars}.{f'{fraction:06d}'.rstrip('0').ljust(2, '0')}"


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start (UTC) of the calendar ``period`` ("day" or "month") containing ``now``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(period: str, now: dt.datetime) -> dt.datetime:
    """Start (UTC) of the next calendar ``period``: when a budget of that period resets."""
    start = period_start(period, now)
    if period == "day":
        return start + dt.timedelta(days=1)
    return (start + dt.timedelta(days=32)).replace(day=1)


def _active(tenant: str, now: dt.datetime) -> list[sa.ColumnElement[bool]]:
    return [Reservation.tenant == tenant, Reservation.released.is_(False), Reservation.expires_at > now]


def _outstanding(tenant: str, model: str, now: dt.datetime) -> sa.ScalarSelect[int]:
    """What active reservations that may spend on ``model`` ("" = any) have not consumed yet."""
    left = sa.case((Reservation.estimate_micro_usd > Reservation.consumed_micro_usd,
                    Reservation.estimate_micro_usd - Reservation.consumed_micro_usd), else_=0)
    query = sa.select(sa.func.coalesce(sa.func.sum(left), 0)).where(*_active(tenant, now))
    if model:
        scoped = sa.select(ReservationModel.model).where(ReservationModel.reservation_id == Reservation.id)
        query = query.where(sa.or_(~scoped.exists(), scoped.where(ReservationModel.model == model).exists()))
    return query.scalar_subquery()


def _spent(tenant: str, model: str, since: dt.datetime) -> sa.ScalarSelect[int]:
    query = sa.select(sa.func.coalesce(sa.func.sum(LedgerCall.cost_micro_usd), 0)).where(
        LedgerCall.tenant == tenant, LedgerCall.created_at >= since)
    if model:
        query = query.where(LedgerCall.model == model)
    return query.scalar_subquery()


def _scope(budget: Budget) -> str:
    return f"tenant:{budget.tenant}" + (f"/model:{budget.model}" if budget.model else "")


def authorize(session: Session, request_id: str, tenant: str, estimate: int, models: Sequence[str],
              now: dt.datetime, ttl: dt.timedelta) -> Authorization:
    """Reserve ``estimate`` for the request, or raise ResourceExhausted naming the budget it would
    pass. A request_id seen before reserves nothing and is never refused for budget: the result's
    ``state`` says what that request is doing (the router replays, waits or refuses; it never
    spends again under the same id). Another tenant's request_id is PERMISSION_DENIED."""
    models = sorted(set(models))
    budgets = session.scalars(sa.select(Budget).where(Budget.tenant == tenant)
                              .order_by(Budget.model, Budget.period).with_for_update()).all()
    existing = session.scalar(sa.select(Reservation).where(Reservation.request_id == request_id))
    summary = session.get(RequestSummary, request_id)
    if any(row is not None and row.tenant != tenant for row in (existing, summary)):
        # Not ALREADY_EXISTS: that says "retry" to HTTP clients (409), and this never succeeds.
        # The owner is not named; the message says what to do instead.
        raise PermissionDenied(f"request_id {request_id} is already used by another tenant: send a new, "
                               "unguessable id (a random UUID)")
    state = "new"
    if summary is not None and summary.outcome:  # settled (a row made by a score alone has no outcome)
        state = "settled"
    elif existing is not None:
        state = "in_flight" if not existing.released and existing.expires_at > now else "abandoned"
    if state != "new":
        estimate = 0  # reserves nothing; the budgets below are only reported
    remaining: int | None = None
    warnings: list[str] = []
    for budget in budgets:
        if budget.model and models and budget.model not in models:
            continue
        spent, outstanding = session.execute(sa.select(
            _spent(tenant, budget.model, period_start(budget.period, now)),
            _outstanding(tenant, budget.model, now))).one()
        spent, outstanding = int(spent), int(outstanding)  # PostgreSQL sums bigint as numeric
        after = spent + outstanding + estimate
        if budget.limit_micro_usd is not None:
            if after > budget.limit_micro_usd and state == "new":
                refuse(budget, spent, outstanding, estimate, models, now)
            left = budget.limit_micro_usd - after
            remaining = left if remaining is None else min(remaining, left)
        if budget.soft_limit_micro_usd is not None and after > budget.soft_limit_micro_usd:
            warnings.append(soft_warning(budget, after))
    remaining_value = -1 if remaining is None else max(0, remaining)
    if state != "new":
        return Authorization(existing.id if existing else "", remaining_value,
                             existing.expires_at if existing else now, tuple(warnings), state,
                             (summary.response_json or "") if summary is not None and state == "settled" else "")
    reservation = Reservation(id=str(uuid.uuid4()), request_id=request_id, tenant=tenant,
                              estimate_micro_usd=estimate, consumed_micro_usd=0, created_at=now,
                              expires_at=now + ttl, released=False)
    session.add(reservation)
    session.flush()  # surface a concurrent duplicate request_id here, inside the caller's retry
    session.add_all(ReservationModel(reservation_id=reservation.id, model=model) for model in models)
    return Authorization(reservation.id, remaining_value, reservation.expires_at, tuple(warnings))


def soft_warning(budget: Budget, after: int) -> str:
    """The warning of a soft limit passed, ``after`` being spent plus reserved with this request."""
    assert budget.soft_limit_micro_usd is not None
    return (f"{_scope(budget)}: {_WORD[budget.period]} soft limit {usd(budget.soft_limit_micro_usd)} passed "
            f"({usd(after)} spent or reserved)")


def refuse(budget: Budget, spent: int, outstanding: int, estimate: int, models: Sequence[str],
            now: dt.datetime) -> None:
    """Raise ResourceExhausted naming ``budget``, its figures, when it resets and what would fit."""
    assert budget.limit_micro_usd is not None
    limit = budget.limit_micro_usd
    available = max(0, limit - spent - outstanding)
    resets = period_end(budget.period, now)
    what = f"{_WORD[budget.period]} budget" + (f" of model {budget.model}" if budget.model else "")
    numbers = (f"limit {usd(limit)}, spent {usd(spent)}, reserved {usd(outstanding)}, "
               f"requested {usd(estimate)}, available {usd(available)}")
    hint = f"resets at {resets.isoformat().replace('+00:00', 'Z')}"
    if budget.model and not models:
        hint += (f"; the request may call any model (AuthorizeRequest.models is empty): "
                 f"list the models it may call to leave {budget.model} out")
    elif available:
        hint += f"; a request estimated at {usd(available)} or less fits now"
    raise ResourceExhausted(
        f"tenant {budget.tenant}: {what} exceeded: {numbers}; {hint}",
        subject=_scope(budget), description=f"{what}: {numbers}; {hint}",
        reason="BUDGET_EXCEEDED", retry_after_s=(resets - now).total_seconds(),
        metadata={"tenant": budget.tenant, "model": budget.model, "period": budget.period,
                  "limit_micro_usd": str(limit), "spent_micro_usd": str(spent),
                  "reserved_micro_usd": str(outstanding), "requested_micro_usd": str(estimate),
                  "available_micro_usd": str(available), "resets_at": resets.isoformat()})


def set_budget(session: Session, tenant: str, period: str, hard: int | None, soft: int | None,
               model: str, now: dt.datetime) -> None:
    """Set the limits of one budget; both None removes it."""
    if period not in PERIODS:
        raise InvalidArgument("period", f"must be one of {', '.join(PERIODS)}, got {period!r}")
    if hard is not None and hard < 0:
        raise InvalidArgument("limit_micro_usd", f"must not be negative, got {hard}")
    if soft is not None and soft < 0:
        raise InvalidArgument("soft_limit_micro_usd", f"must not be negative, got {soft}")
    if hard is not None and soft is not None and soft > hard:
        raise InvalidArgument("soft_limit_micro_usd",
                              f"must not exceed the hard limit ({usd(soft)} > {usd(hard)})")
    budget = session.get(Budget, (tenant, model, period))
    if hard is None and soft is None:
        if budget is not None:
            session.delete(budget)
        return
    if budget is None:
        session.add(Budget(tenant=tenant, model=model, period=period, limit_micro_usd=hard,
                           soft_limit_micro_usd=soft, updated_at=now))
        session.flush()
    else:
        budget.limit_micro_usd, budget.soft_limit_micro_usd, budget.updated_at = hard, soft, now


def consume(session: Session, costs: Sequence[tuple[str, str, int]]) -> None:
    """Move recorded calls' costs, (request_id, tenant, cost), from their requests' reservations
    to spend. Updates go in request order, so concurrent writers lock rows in the same order."""
    totals: dict[tuple[str, str], int] = {}
    for request_id, tenant, cost in costs:
        if cost:
            totals[(request_id, tenant)] = totals.get((request_id, tenant), 0) + cost
    if totals:
        table = Reservation.__table__  # Core: an executemany UPDATE, not the ORM's bulk-by-key form
        session.connection().execute(
            sa.update(table)
            .where(table.c.request_id == sa.bindparam("rid"), table.c.tenant == sa.bindparam("tid"),
                   table.c.released.is_(False))
            .values(consumed_micro_usd=table.c.consumed_micro_usd + sa.bindparam("cost")),
            [{"rid": r, "tid": t, "cost": c} for (r, t), c in sorted(totals.items())])


def seen(session: Session, request_id: str) -> bool:
    """Whether ``request_id`` was reserved or settled before (two unique-key lookups)."""
    return session.scalar(sa.select(sa.or_(
        sa.select(Reservation.id).where(Reservation.request_id == request_id).exists(),
        sa.select(RequestSummary.request_id).where(RequestSummary.request_id == request_id,
                                                   RequestSummary.outcome != "").exists()))) is True


def reserve_many(session: Session, reservations: Sequence[tuple[str, str, str, int, Sequence[str],
                                                                dt.datetime, dt.datetime]]) -> list[bool]:
    """Write admitted reservations, (id, request_id, tenant, estimate, models, created, expires),
    in one transaction: per reservation True (written: new work), or False when its request_id
    was seen before (reserved or settled earlier, or earlier in this batch): the caller then asks
    :func:`authorize` what that request is doing. Rows go in request_id order, so concurrent
    writers lock in the same order."""
    ids = sorted({r[1] for r in reservations})
    connection = session.connection()  # Core throughout: the ORM's per-statement work is CPU on the hot path
    summaries = RequestSummary.__table__
    settled = set(connection.scalars(sa.select(summaries.c.request_id).where(
        summaries.c.request_id.in_(ids), summaries.c.outcome != ""))) if ids else set()
    first: dict[str, tuple[str, str, str, int, Sequence[str], dt.datetime, dt.datetime]] = {}
    for item in reservations:
        if item[1] not in settled:
            first.setdefault(item[1], item)
    rows = [{"id": rid, "request_id": request_id, "tenant": tenant, "estimate_micro_usd": estimate,
             "consumed_micro_usd": 0, "created_at": created, "expires_at": expires, "released": False}
            for rid, request_id, tenant, estimate, _, created, expires in sorted(first.values(), key=lambda r: r[1])]
    inserted: set[str] = set()
    if rows:
        table = Reservation.__table__
        statement = (_insert(connection.dialect.name, table).on_conflict_do_nothing(index_elements=["request_id"])
                     .returning(table.c.request_id))
        inserted = {request_id for (request_id,) in connection.execute(statement, rows)}
        scoped = [{"reservation_id": first[rid][0], "model": model}
                  for rid in sorted(inserted) for model in sorted(set(first[rid][4]))]
        if scoped:
            connection.execute(sa.insert(ReservationModel.__table__), scoped)
    return [item[1] in inserted and first[item[1]] is item for item in reservations]


def _insert(dialect: str, table: sa.Table):  # type: ignore[no-untyped-def]
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect](table)
