"""Soft and per-model budgets, reservations consumed by records, API keys, episode summaries.

- budgets: primary key (tenant, model, period) with model "" for all models; the hard limit may be
  NULL (only a soft limit); existing budgets become all-model hard limits.
- reservations: ``consumed_micro_usd`` (what the request's records used of the estimate), an index
  for the active-reservation sum, and ``reservation_models`` (the models a request may call).
- request_summaries: what the training export needs (policy, trace, lambda, prompt reference,
  optional conversation, score and reward).
- api_keys: tenant keys, stored as SHA-256.

Revision ID: 0002
Revises: 0001
Create Date: 2025-03-20
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # budgets: a new primary key. Budgets are one row per tenant and period, so they are carried
    # over through Python: renaming the table instead would keep its primary key's name taken on
    # PostgreSQL.
    old = [tuple(row) for row in op.get_bind().execute(
        sa.text("SELECT tenant, period, limit_micro_usd FROM budgets"))]
    op.drop_table("budgets")
    budgets = op.create_table(
        "budgets",
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("model", sa.String, nullable=False, server_default=""),
        sa.Column("period", sa.String, nullable=False),
        sa.Column("limit_micro_usd", sa.BigInteger, nullable=True),
        sa.Column("soft_limit_micro_usd", sa.BigInteger, nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "model", "period"))
    now = dt.datetime.now(dt.timezone.utc)
    op.bulk_insert(budgets, [dict(tenant=t, model="", period=p, limit_micro_usd=limit, soft_limit_micro_usd=None,
                                  updated_at=now) for t, p, limit in old])

    with op.batch_alter_table("reservations") as batch:
        batch.add_column(sa.Column("consumed_micro_usd", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_reservations_tenant_active", "reservations", ["tenant", "released", "expires_at"])
    op.create_table(
        "reservation_models",
        sa.Column("reservation_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String, nullable=False),
        sa.PrimaryKeyConstraint("reservation_id", "model"),
        sa.ForeignKeyConstraint(["reservation_id"], ["reservations.id"], ondelete="CASCADE",
                                name="fk_reservation_models_reservation_id_reservations"))

    with op.batch_alter_table("request_summaries") as batch:
        for name in ("policy_version", "trace_id", "dataset", "prompt_id"):
            batch.add_column(sa.Column(name, sa.String, nullable=False, server_default=""))
        batch.add_column(sa.Column("cost_lambda", sa.Double, nullable=True))
        batch.add_column(sa.Column("messages_json", sa.Text, nullable=True))
        batch.add_column(sa.Column("score", sa.Double, nullable=True))
        batch.add_column(sa.Column("reward", sa.Double, nullable=True))
        batch.add_column(sa.Column("scored_at", TIME, nullable=True))
    op.create_index("ix_request_summaries_settled", "request_summaries", ["settled_at", "request_id"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True))
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_tenant", "api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_request_summaries_settled", "request_summaries")
    with op.batch_alter_table("request_summaries") as batch:
        for name in ("scored_at", "reward", "score", "messages_json", "cost_lambda",
                     "prompt_id", "dataset", "trace_id", "policy_version"):
            batch.drop_column(name)
    op.drop_table("reservation_models")
    op.drop_index("ix_reservations_tenant_active", "reservations")
    with op.batch_alter_table("reservations") as batch:
        batch.drop_column("consumed_micro_usd")
    # Per-model and soft-only budgets have no place in the old table: they are dropped.
    kept = [tuple(row) for row in op.get_bind().execute(sa.text(
        "SELECT tenant, period, limit_micro_usd FROM budgets WHERE model = '' AND limit_micro_usd IS NOT NULL"))]
    op.drop_table("budgets")
    budgets = op.create_table(
        "budgets",
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("period", sa.String, nullable=False),
        sa.Column("limit_micro_usd", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "period"))
    op.bulk_insert(budgets, [dict(tenant=t, period=p, limit_micro_usd=limit) for t, p, limit in kept])
