"""Schema migrations (Alembic) run from code: ``xrouter db upgrade``, the chart's pre-install /
pre-upgrade hook, and the embedded SQLite default at start-up.

Who migrates: the PostgreSQL service never alters its schema itself (replicas would race each
other's DDL and the service would need DDL rights); it checks the schema is at the head revision
and refuses to start otherwise. The embedded SQLite ledger is a private file of one process, with
no hook to run a migration Job, so the service upgrades it on start (``auto_migrates``).
"""

from __future__ import annotations

import logging
import pathlib

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

MIGRATIONS = pathlib.Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"
# Any constant: serialises concurrent `db upgrade` runs (two hook pods) on one PostgreSQL database.
_ADVISORY_LOCK = 0x78726F75746572


class SchemaError(RuntimeError):
    """The database's schema is not the one this code expects; the message says what to run."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None, "no migrations found"  # the package ships them
    return revision


def current(connection: Connection) -> str | None:
    """The database's revision; None for an empty (or pre-migration) database."""
    return MigrationContext.configure(connection).get_current_revision()


def auto_migrates(engine: Engine) -> bool:
    """Whether the service upgrades this database itself on start (the embedded SQLite default)."""
    return engine.dialect.name == "sqlite"


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision`` in one transaction; returns (revision before, revision after).

    A database made by ``create_all`` before migrations existed (tables but no version) is taken
    to be at the first revision, which is exactly that schema, and upgraded from there.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        before = current(connection)
        if before is None and sa.inspect(connection).has_table("ledger_calls"):
            log.warning("ledger tables exist without a migration version: stamping revision %s "
                        "(the schema create_all made) before upgrading", FIRST_REVISION)
            command.stamp(_config(connection), FIRST_REVISION)
        command.upgrade(_config(connection), revision)
        after = current(connection)
    if before != after:
        log.info("ledger schema upgraded from %s to %s", before or "an empty database", after)
    return before, after


def check(engine: Engine) -> None:
    """Raise :class:`SchemaError` unless the database is at the head revision."""
    with engine.connect() as connection:
        found = current(connection)
    expected = head()
    if found != expected:
        state = "has no ledger schema" if found is None else f"is at schema revision {found}"
        raise SchemaError(f"the metering database {state}; this version needs {expected}: "
                          "run `xrouter db upgrade` (the chart's migration hook does) before starting")


def prepare(engine: Engine) -> None:
    """Start-up: upgrade the embedded SQLite ledger, check any other database."""
    if auto_migrates(engine):
        upgrade(engine)
    else:
        check(engine)
