"""The cost ledger: schema and domain operations in plain synchronous SQLAlchemy (no gRPC here).

Money is integer micro-dollars everywhere; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from xrouter.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from xrouter.metering.store import session_factory, session_scope

UTC = dt.timezone.utc
PERIODS = ("day", "month")
CALL_STATUSES = frozenset(
    {"CALL_STATUS_OK", "CALL_STATUS_ERROR", "CALL_STATUS_TIMEOUT", "CALL_STATUS_SKIPPED_BUDGET"})
T = TypeVar("T")


def utc_now() -> dt.datetime:
    """The default clock: now, timezone-aware UTC."""
    return dt.datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """Stored as UTC, read back aware (SQLite drops the zone); naive inputs are taken as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""

    type_annotation_map = {dt.datetime: UTCDateTime}


class LedgerCall(Base):
    """One model call, the ground truth of spend."""

    __tablename__ = "ledger_calls"
    __table_args__ = (sa.UniqueConstraint("request_id", "call_index", name="uq_ledger_calls_request_call"),
                      sa.Index("ix_ledger_calls_tenant_created", "tenant", "created_at"))

    # SQLite only auto-increments an INTEGER primary key.
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str]
    call_index: Mapped[int] = mapped_column(sa.Integer)
    tenant: Mapped[str]
    model: Mapped[str]
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    cost_micro_usd: Mapped[int] = mapped_column(sa.BigInteger)
    latency_ms: Mapped[float] = mapped_column(sa.Double)
    status: Mapped[str]
    policy_version: Mapped[str]
    trace_id: Mapped[str]
    created_at: Mapped[dt.datetime]


class RequestSummary(Base):
    """What a settled request did in total."""

    __tablename__ = "request_summaries"

    request_id: Mapped[str] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(index=True)
    strategy: Mapped[str]
    outcome: Mapped[str]
    total_cost_micro_usd: Mapped[int] = mapped_column(sa.BigInteger)
    calls: Mapped[int] = mapped_column(sa.Integer)
    settled_at: Mapped[dt.datetime]


class Reservation(Base):
    """Budget held for a request between Authorize and Settle (or until it expires)."""

    __tablename__ = "reservations"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(unique=True)
    tenant: Mapped[str] = mapped_column(index=True)
    estimate_micro_usd: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    released: Mapped[bool] = mapped_column(default=False)


class Budget(Base):
    """A tenant's hard spend limit per calendar period (UTC)."""

    __tablename__ = "budgets"

    tenant: Mapped[str] = mapped_column(primary_key=True)
    period: Mapped[str] = mapped_column(primary_key=True)
    limit_micro_usd: Mapped[int] = mapped_column(sa.BigInteger)


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One model call as the router reports it; ``status`` is a CallStatus name."""

    request_id: str
    call_index: int
    tenant: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    latency_ms: float
    status: str
    policy_version: str = ""
    trace_id: str = ""


# The fields a retried Record must repeat exactly (the key fields match by construction).
_CONTENT_FIELDS = [f.name for f in dataclasses.fields(CallRecord) if f.name not in ("request_id", "call_index")]


@dataclasses.dataclass(frozen=True)
class Authorization:
    """A reservation and the budget left after it (-1: the tenant has no limit)."""

    reservation_id: str
    remaining_micro_usd: int


@dataclasses.dataclass(frozen=True)
class ModelUsage:
    """One model's share of a tenant's usage."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int


@dataclasses.dataclass(frozen=True)
class Usage:
    """A tenant's spend over a time range, by model (sorted by model name)."""

    tenant: str
    models: tuple[ModelUsage, ...]
    total_cost_micro_usd: int
    requests: int


def usd(micro: int) -> str:
    """Micro-dollars as dollars for messages: 1_500_000 -> '$1.50', 1_234 -> '$0.001234'."""
    sign = "-" if micro < 0 else ""
    dollars, fraction = divmod(abs(micro), 1_000_000)
    return f"{sign}${dollars}.{f'{fraction:06d}'.rstrip('0').ljust(2, '0')}"


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """Start (UTC) of the calendar ``period`` ("day" or "month") containing ``now``."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")


def _non_negative(value: float, field: str) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")


def _validate_call(call: CallRecord) -> None:
    for field in ("request_id", "tenant", "model"):
        _require(getattr(call, field), field)
    for field in ("call_index", "input_tokens", "output_tokens", "cost_micro_usd", "latency_ms"):
        _non_negative(getattr(call, field), field)
    if call.status not in CALL_STATUSES:
        raise InvalidArgument("status", f"must be one of {', '.join(sorted(CALL_STATUSES))}, got {call.status!r}")


class Ledger:
    """The ledger on one database; every method is one (or, on a write race, two) transactions.

    Blocking: the gRPC layer runs these methods in worker threads.
    """

    def __init__(self, engine: Engine, reservation_ttl_s: float,
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        if reservation_ttl_s <= 0:
            raise ValueError(f"reservation_ttl_s must be positive, got {reservation_ttl_s}")
        self._engine = engine
        self._sessions = session_factory(engine)
        self._ttl = dt.timedelta(seconds=reservation_ttl_s)
        self._clock = clock

    def create_schema(self) -> None:
        """Create missing tables (a stand-in until migrations exist)."""
        Base.metadata.create_all(self._engine)

    def _retry_on_conflict(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a transaction; if a concurrent insert of the same key wins, run it once
        more, when it will see that row (read-then-insert upserts race only that way)."""
        try:
            with session_scope(self._sessions) as session:
                return work(session)
        except IntegrityError:
            with session_scope(self._sessions) as session:
                return work(session)

    def authorize(self, request_id: str, tenant: str, estimate_micro_usd: int) -> Authorization:
        """Reserve ``estimate_micro_usd`` for a request, or raise ResourceExhausted when any of the
        tenant's budgets cannot cover spend so far + active reservations + this estimate.
        Authorizing the same request again returns its existing reservation."""
        _require(request_id, "request_id")
        _require(tenant, "tenant")
        _non_negative(estimate_micro_usd, "estimate_micro_usd")
        return self._retry_on_conflict(lambda s: self._authorize(s, request_id, tenant, estimate_micro_usd))

    def _authorize(self, session: Session, request_id: str, tenant: str, estimate: int) -> Authorization:
        now = self._clock()
        # Locking the budget rows first serialises concurrent authorizations of one tenant on
        # PostgreSQL, so two requests cannot both fit into the same remaining budget.
        budgets = session.scalars(sa.select(Budget).where(Budget.tenant == tenant)
                                  .order_by(Budget.period).with_for_update()).all()
        existing = session.scalar(sa.select(Reservation).where(Reservation.request_id == request_id))
        if existing is not None and existing.tenant != tenant:
            raise AlreadyExists(f"request {request_id} is already authorized for another tenant")
        if existing is not None:
            estimate = 0  # already counted among the active reservations (while it is active)
        reserved = session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(Reservation.estimate_micro_usd), 0)).where(
                Reservation.tenant == tenant, Reservation.released.is_(False), Reservation.expires_at > now))
        reserved = int(reserved or 0)
        remaining: int | None = None  # the tightest budget's room; None: no budget at all
        for budget in budgets:
            spent = self._spent(session, tenant, period_start(budget.period, now))
            left = budget.limit_micro_usd - spent - reserved - estimate
            if left < 0 and existing is None:  # a repeated Authorize keeps what it was granted
                word = "daily" if budget.period == "day" else "monthly"
                numbers = (f"limit {usd(budget.limit_micro_usd)}, spent {usd(spent)}, "
                           f"reserved {usd(reserved)}, requested {usd(estimate)}")
                raise ResourceExhausted(
                    f"tenant {tenant}: {word} budget exceeded: {numbers}, "
                    f"available {usd(max(0, budget.limit_micro_usd - spent - reserved))}",
                    subject=f"tenant:{tenant}", description=f"{word} budget: {numbers}")
            remaining = left if remaining is None else min(remaining, left)
        if existing is not None:
            return Authorization(existing.id, -1 if remaining is None else max(0, remaining))
        reservation = Reservation(id=str(uuid.uuid4()), request_id=request_id, tenant=tenant,
                                  estimate_micro_usd=estimate, created_at=now, expires_at=now + self._ttl,
                                  released=False)
        session.add(reservation)
        session.flush()  # surface a concurrent duplicate request_id here, inside the retry
        return Authorization(reservation.id, -1 if remaining is None else remaining)

    def _spent(self, session: Session, tenant: str, since: dt.datetime) -> int:
        total = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(LedgerCall.cost_micro_usd), 0))
                               .where(LedgerCall.tenant == tenant, LedgerCall.created_at >= since))
        return int(total or 0)  # PostgreSQL sums bigint as numeric

    def record(self, call: CallRecord) -> bool:
        """Store one model call; True when it was already recorded with the same content.
        A changed duplicate raises AlreadyExists naming the differing fields."""
        _validate_call(call)
        try:
            with session_scope(self._sessions) as session:
                session.add(LedgerCall(**dataclasses.asdict(call), created_at=self._clock()))
            return False
        except IntegrityError as error:
            conflict = error  # the failed transaction is gone; compare in a fresh one
        with session_scope(self._sessions) as session:
            row = session.scalar(sa.select(LedgerCall).where(
                LedgerCall.request_id == call.request_id, LedgerCall.call_index == call.call_index))
        if row is None:
            raise conflict  # not the idempotency key: a genuine integrity problem
        differing = [name for name in _CONTENT_FIELDS if getattr(row, name) != getattr(call, name)]
        if differing:
            raise AlreadyExists(f"call {call.call_index} of request {call.request_id} was already recorded "
                                f"with different {', '.join(differing)}")
        return True

    def settle(self, request_id: str, tenant: str, strategy: str, outcome: str,
               total_cost_micro_usd: int, calls: int) -> None:
        """Release the request's reservation and store (or overwrite) its summary; repeatable."""
        _require(request_id, "request_id")
        _require(tenant, "tenant")
        _non_negative(total_cost_micro_usd, "total_cost_micro_usd")
        _non_negative(calls, "calls")
        values = dict(tenant=tenant, strategy=strategy, outcome=outcome,
                      total_cost_micro_usd=total_cost_micro_usd, calls=calls, settled_at=self._clock())

        def work(session: Session) -> None:
            session.execute(sa.update(Reservation).where(Reservation.request_id == request_id)
                            .values(released=True))
            summary = session.get(RequestSummary, request_id)
            if summary is None:
                session.add(RequestSummary(request_id=request_id, **values))
                session.flush()
            else:
                for name, value in values.items():
                    setattr(summary, name, value)

        self._retry_on_conflict(work)

    def usage(self, tenant: str, start: dt.datetime | None = None, end: dt.datetime | None = None) -> Usage:
        """Spend of ``tenant`` by model over calls made in [start, end); an unset bound is open."""
        _require(tenant, "tenant")
        if start is not None and end is not None and end < start:
            raise InvalidArgument("end", "must not be before start")
        where = [LedgerCall.tenant == tenant]
        if start is not None:
            where.append(LedgerCall.created_at >= start)
        if end is not None:
            where.append(LedgerCall.created_at < end)
        with session_scope(self._sessions) as session:
            rows = session.execute(
                sa.select(LedgerCall.model, sa.func.count(), sa.func.sum(LedgerCall.input_tokens),
                          sa.func.sum(LedgerCall.output_tokens), sa.func.sum(LedgerCall.cost_micro_usd))
                .where(*where).group_by(LedgerCall.model).order_by(LedgerCall.model)).all()
            requests = session.scalar(sa.select(sa.func.count(sa.distinct(LedgerCall.request_id))).where(*where))
        models = tuple(ModelUsage(model, int(n), int(inp), int(out), int(cost)) for model, n, inp, out, cost in rows)
        return Usage(tenant, models, sum(m.cost_micro_usd for m in models), int(requests or 0))

    def set_budget(self, tenant: str, period: str, limit_micro_usd: int) -> None:
        """Set (or replace) the tenant's hard limit for "day" or "month"."""
        _require(tenant, "tenant")
        if period not in PERIODS:
            raise InvalidArgument("period", f"must be one of {', '.join(PERIODS)}, got {period!r}")
        _non_negative(limit_micro_usd, "limit_micro_usd")

        def work(session: Session) -> None:
            budget = session.get(Budget, (tenant, period))
            if budget is None:
                session.add(Budget(tenant=tenant, period=period, limit_micro_usd=limit_micro_usd))
                session.flush()
            else:
                budget.limit_micro_usd = limit_micro_usd

        self._retry_on_conflict(work)
