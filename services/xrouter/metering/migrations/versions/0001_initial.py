"""The first ledger schema: calls, request summaries, reservations, hard budgets per tenant.

Identical to what ``create_all`` made before migrations existed, so such databases are stamped at
this revision and upgraded from here (see ``migrate.upgrade``).

Revision ID: 0001
Revises:
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite only auto-increments INTEGER keys


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("period", sa.String, nullable=False),
        sa.Column("limit_micro_usd", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "period"))
    op.create_table(
        "ledger_calls",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String, nullable=False),
        sa.Column("call_index", sa.Integer, nullable=False),
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("policy_version", sa.String, nullable=False),
        sa.Column("trace_id", sa.String, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.UniqueConstraint("request_id", "call_index", name="uq_ledger_calls_request_call"))
    op.create_index("ix_ledger_calls_tenant_created", "ledger_calls", ["tenant", "created_at"])
    op.create_table(
        "request_summaries",
        sa.Column("request_id", sa.String, primary_key=True),
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("strategy", sa.String, nullable=False),
        sa.Column("outcome", sa.String, nullable=False),
        sa.Column("total_cost_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("calls", sa.Integer, nullable=False),
        sa.Column("settled_at", TIME, nullable=False))
    op.create_index("ix_request_summaries_tenant", "request_summaries", ["tenant"])
    op.create_table(
        "reservations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("request_id", sa.String, nullable=False, unique=True),
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("estimate_micro_usd", sa.BigInteger, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("released", sa.Boolean, nullable=False))
    op.create_index("ix_reservations_tenant", "reservations", ["tenant"])


def downgrade() -> None:
    for table in ("reservations", "request_summaries", "ledger_calls", "budgets"):
        op.drop_table(table)
