"""Usage queries: a tenant's spend by model over a time range, optionally per UTC time bucket."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from xrouter.metering.schema import UTC, LedgerCall

BUCKETS = ("hour", "day", "month")
_SQLITE_FORMAT = {"hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00", "month": "%Y-%m-01 00:00:00"}


@dataclasses.dataclass(frozen=True)
class ModelUsage:
    """One model's share of a tenant's usage."""

    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int


@dataclasses.dataclass(frozen=True)
class UsageBucket:
    """One model's usage in the time bucket starting at ``start`` (UTC)."""

    start: dt.datetime
    usage: ModelUsage


@dataclasses.dataclass(frozen=True)
class Usage:
    """A tenant's spend over a time range, by model (sorted by model name), and per bucket when
    asked for (sorted by bucket, then model)."""

    tenant: str
    models: tuple[ModelUsage, ...]
    total_cost_micro_usd: int
    requests: int
    buckets: tuple[UsageBucket, ...] = ()


class bucket_start(FunctionElement[Any]):
    """Start of the UTC ``unit`` bucket ("hour", "day", "month") containing a timestamp column."""

    inherit_cache = True
    name = "bucket_start"

    def __init__(self, column: Any, unit: str) -> None:
        if unit not in BUCKETS:
            raise ValueError(f"unknown bucket {unit!r}")
        # The unit is a clause (not an attribute) so that it is part of the statement cache key.
        super().__init__(column, sa.literal_column(f"'{unit}'"))


def _parts(element: bucket_start, compiler: Any, **kw: Any) -> tuple[str, str]:
    column, unit = list(element.clauses)
    return compiler.process(column, **kw), unit.name.strip("'")


@compiles(bucket_start, "postgresql")
def _bucket_start_postgresql(element: bucket_start, compiler: Any, **kw: Any) -> str:
    column, unit = _parts(element, compiler, **kw)
    return f"date_trunc('{unit}', {column} AT TIME ZONE 'UTC')"


@compiles(bucket_start, "sqlite")
def _bucket_start_sqlite(element: bucket_start, compiler: Any, **kw: Any) -> str:
    # SQLite keeps timestamps as UTC text (the ledger converts them before storing).
    column, unit = _parts(element, compiler, **kw)
    return f"strftime('{_SQLITE_FORMAT[unit]}', {column})"


def _as_utc(value: dt.datetime | str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _totals() -> list[Any]:
    return [sa.func.count(), sa.func.sum(LedgerCall.input_tokens), sa.func.sum(LedgerCall.output_tokens),
            sa.func.sum(LedgerCall.cost_micro_usd)]


def query(session: Session, tenant: str, start: dt.datetime | None, end: dt.datetime | None,
          model: str, bucket: str | None) -> Usage:
    """Usage of ``tenant`` over calls made in [start, end) (an unset bound is open)."""
    where = [LedgerCall.tenant == tenant]
    if start is not None:
        where.append(LedgerCall.created_at >= start)
    if end is not None:
        where.append(LedgerCall.created_at < end)
    if model:
        where.append(LedgerCall.model == model)
    rows = session.execute(sa.select(LedgerCall.model, *_totals()).where(*where)
                           .group_by(LedgerCall.model).order_by(LedgerCall.model)).all()
    requests = session.scalar(sa.select(sa.func.count(sa.distinct(LedgerCall.request_id))).where(*where))
    models = tuple(ModelUsage(m, int(n), int(i), int(o), int(c)) for m, n, i, o, c in rows)
    buckets: tuple[UsageBucket, ...] = ()
    if bucket is not None:
        start_of = bucket_start(LedgerCall.created_at, bucket).label("bucket")
        bucket_rows = session.execute(sa.select(start_of, LedgerCall.model, *_totals()).where(*where)
                                      .group_by(start_of, LedgerCall.model)
                                      .order_by(start_of, LedgerCall.model)).all()
        buckets = tuple(UsageBucket(_as_utc(b), ModelUsage(m, int(n), int(i), int(o), int(c)))
                        for b, m, n, i, o, c in bucket_rows)
    return Usage(tenant, models, sum(m.cost_micro_usd for m in models), int(requests or 0), buckets)
