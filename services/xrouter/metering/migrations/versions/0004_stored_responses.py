"""The final response of a settled request, so that a retry with the same request_id gets it back
instead of paying for every model call again (idempotent retries, issue 15).

- request_summaries.response_json: the router's response (or its error) as JSON, written at Settle;
  NULL for requests settled before this revision (a retry of one of those is refused, not re-run).

Revision ID: 0004
Revises: 0003 (api key roles)
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_summaries") as batch:
        batch.add_column(sa.Column("response_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("request_summaries") as batch:
        batch.drop_column("response_json")
