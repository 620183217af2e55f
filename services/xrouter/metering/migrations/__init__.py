"""Alembic migrations of the ledger schema, shipped inside the package (run by ``xrouter db upgrade``)."""
