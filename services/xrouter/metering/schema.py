"""The ledger's tables (SQLAlchemy 2 declarative). Migrations in ``migrations/`` create them;
``tests/test_metering_migrations.py`` proves the two agree.

Money is integer micro-dollars (``BIGINT``) everywhere: exact, summed by the database without
rounding, and the unit the adapters price calls in. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UTC = dt.timezone.utc

# SQLAlchemy's default index names (the first databases were made with them), plus a name for
# foreign keys so that migrations can drop them on every backend.
NAMING = {"ix": "ix_%(column_0_label)s", "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


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


Money = sa.BigInteger  # integer micro-dollars


class Base(DeclarativeBase):
    """Declarative base of the ledger tables."""

    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime}


class LedgerCall(Base):
    """One model call, the ground truth of spend."""

    __tablename__ = "ledger_calls"
    __table_args__ = (sa.UniqueConstraint("request_id", "call_index", name="uq_ledger_calls_request_call"),
                      sa.Index("ix_ledger_calls_tenant_created", "tenant", "created_at"),
                      sa.CheckConstraint("role IN ('tool', 'router')", name="ck_ledger_calls_role"))

    # SQLite only auto-increments an INTEGER primary key.
    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str]
    call_index: Mapped[int] = mapped_column(sa.Integer)
    tenant: Mapped[str]
    model: Mapped[str]
    input_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    output_tokens: Mapped[int] = mapped_column(sa.BigInteger)
    cost_micro_usd: Mapped[int] = mapped_column(Money)
    latency_ms: Mapped[float] = mapped_column(sa.Double)
    status: Mapped[str]
    policy_version: Mapped[str]
    trace_id: Mapped[str]
    # "tool": a pool model's call; "router": the LM policy's own tokens for one decision turn.
    role: Mapped[str] = mapped_column(sa.String(16), server_default="tool")
    # When metering received the call (not when a spooled record reached the database).
    created_at: Mapped[dt.datetime]


class RequestSummary(Base):
    """What a settled request did in total, and how it was scored (the episode's header)."""

    __tablename__ = "request_summaries"
    __table_args__ = (sa.Index("ix_request_summaries_settled", "settled_at", "request_id"),
                      # Trivially unique (request_id is the key); it lets feedback reference the pair,
                      # so that the database itself refuses a verdict filed under another tenant.
                      sa.UniqueConstraint("tenant", "request_id", name="uq_request_summaries_tenant_request"))

    request_id: Mapped[str] = mapped_column(primary_key=True)
    tenant: Mapped[str] = mapped_column(index=True)
    strategy: Mapped[str]
    outcome: Mapped[str]
    total_cost_micro_usd: Mapped[int] = mapped_column(Money)
    calls: Mapped[int] = mapped_column(sa.Integer)
    settled_at: Mapped[dt.datetime]
    policy_version: Mapped[str] = mapped_column(server_default="")
    trace_id: Mapped[str] = mapped_column(server_default="")
    cost_lambda: Mapped[float | None] = mapped_column(sa.Double)
    dataset: Mapped[str] = mapped_column(server_default="")
    prompt_id: Mapped[str] = mapped_column(server_default="")
    # JSON list of {"role", "content"}; only when the router keeps conversations for training.
    messages_json: Mapped[str | None] = mapped_column(sa.Text)
    # The router's final response (or error) as JSON, replayed to a retry with the same request_id.
    response_json: Mapped[str | None] = mapped_column(sa.Text)
    score: Mapped[float | None] = mapped_column(sa.Double)
    reward: Mapped[float | None] = mapped_column(sa.Double)
    scored_at: Mapped[dt.datetime | None]
    # The call whose answer the user got verbatim (NULL: none, e.g. a synthesis or an error): what a
    # user's verdict is about.
    returned_call_index: Mapped[int | None] = mapped_column(sa.Integer)
    # Set only when the first call came from an exploring behaviour policy (router/exploration.py):
    # its rate, the probability of the first call taken, and whether that call was drawn at random.
    exploration_epsilon: Mapped[float | None] = mapped_column(sa.Double)
    first_call_probability: Mapped[float | None] = mapped_column(sa.Double)
    first_call_explored: Mapped[bool | None]


class Feedback(Base):
    """A verdict on the answer a settled request returned (a user's, or a later reference score).
    One per request: the key makes a repeat a duplicate in the database, not only in Python, and the
    foreign key to (tenant, request_id) makes a verdict under another tenant impossible."""

    __tablename__ = "feedback"
    __table_args__ = (
        sa.ForeignKeyConstraint(["tenant", "request_id"],
                                ["request_summaries.tenant", "request_summaries.request_id"],
                                name="fk_feedback_request_summaries", ondelete="CASCADE"),
        sa.CheckConstraint("score >= 0 AND score <= 1", name="ck_feedback_score_range"),
        sa.CheckConstraint("source IN ('user', 'reference')", name="ck_feedback_source"))

    tenant: Mapped[str] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(primary_key=True)
    score: Mapped[float] = mapped_column(sa.Double)
    source: Mapped[str] = mapped_column(sa.String(16))  # "user" | "reference"
    comment: Mapped[str] = mapped_column(sa.Text, server_default="")
    created_at: Mapped[dt.datetime]


class Reservation(Base):
    """Budget held for a request between Authorize and Settle (or until it expires). Records of the
    request consume it, so a call is never counted both as spent and as reserved."""

    __tablename__ = "reservations"
    __table_args__ = (sa.Index("ix_reservations_tenant_active", "tenant", "released", "expires_at"),)

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    request_id: Mapped[str] = mapped_column(unique=True)
    tenant: Mapped[str] = mapped_column(index=True)
    estimate_micro_usd: Mapped[int] = mapped_column(Money)
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    released: Mapped[bool] = mapped_column(default=False)
    consumed_micro_usd: Mapped[int] = mapped_column(Money, default=0, server_default="0")


class ReservationModel(Base):
    """A model a reservation's request may call; a reservation without rows may call any model."""

    __tablename__ = "reservation_models"

    reservation_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("reservations.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(primary_key=True)


class Budget(Base):
    """A tenant's spend limits per calendar period (UTC), for all models (model "") or one model.
    Past the hard limit Authorize refuses; past the soft limit it allows and flags."""

    __tablename__ = "budgets"

    tenant: Mapped[str] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(primary_key=True, server_default="")
    period: Mapped[str] = mapped_column(primary_key=True)
    limit_micro_usd: Mapped[int | None] = mapped_column(Money)  # hard; NULL: none
    soft_limit_micro_usd: Mapped[int | None] = mapped_column(Money)
    updated_at: Mapped[dt.datetime]


class ApiKey(Base):
    """A tenant's (or an admin's) API key, stored only as the SHA-256 of the secret (keys are
    256-bit random, so an unsalted hash cannot be brute-forced; the hash is what a lookup needs).
    ``role`` is "tenant" or "admin": an admin key may act for a named tenant on the public faces."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    key_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    tenant: Mapped[str] = mapped_column(index=True)
    label: Mapped[str] = mapped_column(server_default="")
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]
    role: Mapped[str] = mapped_column(sa.String(16), server_default="tenant")
