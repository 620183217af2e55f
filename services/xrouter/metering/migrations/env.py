"""Alembic environment: migrations always run on a connection handed over by
:mod:`xrouter.metering.migrate` (no alembic.ini, so an installed package can migrate)."""

from __future__ import annotations

from alembic import context

from xrouter.metering.schema import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("run migrations through `xrouter db upgrade` (xrouter.metering.migrate), "
                       "which hands Alembic a connection; offline SQL generation is not supported")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
