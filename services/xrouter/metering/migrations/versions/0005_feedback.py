"""Feedback in: verdicts on answers beside the settled requests, and what learning from them needs
(issue 17).

- feedback: one verdict per request, keyed by (tenant, request_id); score in [0, 1], source
  ('user' | 'reference'), comment, created_at. A foreign key to request_summaries (tenant,
  request_id) keeps it to settled requests of the same tenant (enforced by PostgreSQL; the
  ledger's conditional insert enforces it on SQLite too, which runs without foreign keys).
- request_summaries.uq_request_summaries_tenant_request: what that foreign key references.
- request_summaries.returned_call_index: which call's answer the user got (NULL: none, and for
  every request settled before this revision).
- request_summaries.exploration_epsilon, first_call_probability, first_call_explored: how an
  exploring router chose the first call (NULL when it did not explore).

Revision ID: 0005
Revises: 0004 (stored responses)
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("request_summaries") as batch:
        batch.add_column(sa.Column("returned_call_index", sa.Integer, nullable=True))
        batch.add_column(sa.Column("exploration_epsilon", sa.Double, nullable=True))
        batch.add_column(sa.Column("first_call_probability", sa.Double, nullable=True))
        batch.add_column(sa.Column("first_call_explored", sa.Boolean, nullable=True))
        batch.create_unique_constraint("uq_request_summaries_tenant_request", ["tenant", "request_id"])
    op.create_table(
        "feedback",
        sa.Column("tenant", sa.String, nullable=False),
        sa.Column("request_id", sa.String, nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "request_id"),
        sa.ForeignKeyConstraint(["tenant", "request_id"], ["request_summaries.tenant", "request_summaries.request_id"],
                                name="fk_feedback_request_summaries", ondelete="CASCADE"),
        sa.CheckConstraint("score >= 0 AND score <= 1", name="ck_feedback_score_range"),
        sa.CheckConstraint("source IN ('user', 'reference')", name="ck_feedback_source"))


def downgrade() -> None:
    op.drop_table("feedback")
    with op.batch_alter_table("request_summaries") as batch:
        batch.drop_constraint("uq_request_summaries_tenant_request", type_="unique")
        for name in ("first_call_explored", "first_call_probability", "exploration_epsilon", "returned_call_index"):
            batch.drop_column(name)
