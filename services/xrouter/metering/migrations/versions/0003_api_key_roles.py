"""API keys get a role: "tenant" (every existing key) or "admin" (may act for a named tenant on the
router's public faces, and manage budgets and keys).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="tenant"))


def downgrade() -> None:
    # Admin keys would silently become tenant keys of their tenant: revoke them instead.
    op.get_bind().execute(sa.text(
        "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP WHERE role = 'admin' AND revoked_at IS NULL"))
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("role")
