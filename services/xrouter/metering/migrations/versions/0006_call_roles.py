"""Who made each ledger call: ledger_calls.role is "tool" (a pool model's call, and every call
recorded before this revision) or "router" (the LM policy's own prompt and completion tokens for
one decision turn, priced at the router model's self-hosted price).

Revision ID: 0006
Revises: 0005 (feedback)
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_calls") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="tool"))
        batch.create_check_constraint("ck_ledger_calls_role", "role IN ('tool', 'router')")


def downgrade() -> None:
    with op.batch_alter_table("ledger_calls") as batch:
        batch.drop_constraint("ck_ledger_calls_role", type_="check")
        batch.drop_column("role")
