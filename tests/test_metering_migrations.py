"""Alembic migrations of the ledger on SQLite and real PostgreSQL: they build exactly the schema the
models describe, carry a pre-migration (create_all) database forward, run from ``xrouter db
upgrade``, and the service refuses a PostgreSQL schema it does not match."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from xrouter import cli
from xrouter.common.errors import ResourceExhausted
from xrouter.metering import migrate
from xrouter.metering.ledger import CallRecord, Ledger
from xrouter.metering.schema import Base
from xrouter.metering.store import make_engine

UTC = dt.timezone.utc


@pytest.fixture()
def engine(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return migrate.current(connection)


def test_migrations_build_exactly_the_models_schema(engine: sa.Engine) -> None:
    assert migrate.upgrade(engine) == (None, migrate.head())
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                       Base.metadata)
    assert differences == []
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # idempotent
    migrate.check(engine)


def test_a_create_all_database_is_stamped_and_carried_forward(engine: sa.Engine) -> None:
    """A ledger made before migrations existed (revision 0001's tables, no version table) keeps
    its rows and budgets, which become all-model hard limits."""
    migrate.upgrade(engine, "0001")
    now = dt.datetime(2025, 3, 15, 12, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE alembic_version"))
        connection.execute(sa.text(
            "INSERT INTO budgets (tenant, period, limit_micro_usd) VALUES ('acme', 'day', 5000)"))
        connection.execute(sa.text(
            "INSERT INTO reservations (id, request_id, tenant, estimate_micro_usd, created_at, expires_at, released) "
            "VALUES ('r-1', 'old-request', 'acme', 1000, :now, :later, false)"),
            {"now": now, "later": now + dt.timedelta(hours=1)})
    assert revision(engine) is None
    assert migrate.upgrade(engine) == (None, migrate.head())
    with engine.connect() as connection:
        budgets = connection.execute(sa.text(
            "SELECT tenant, model, period, limit_micro_usd, soft_limit_micro_usd FROM budgets")).all()
        consumed = connection.execute(sa.text("SELECT consumed_micro_usd FROM reservations")).scalar_one()
    assert [tuple(b) for b in budgets] == [("acme", "", "day", 5000, None)] and consumed == 0
    ledger = Ledger(engine, 3600, clock=lambda: now)
    ledger.record(CallRecord("old-request", 0, "acme", "gpt-4o", 1, 1, 600, 1.0, "CALL_STATUS_OK"))
    # 0.0006 spent, 0.0004 still held by the old reservation: 0.004 left of 0.005.
    assert ledger.authorize("new", "acme", 4000).remaining_micro_usd == 0
    with pytest.raises(ResourceExhausted):
        ledger.authorize("newer", "acme", 1)


def test_downgrade_keeps_what_the_old_schema_can_hold(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    ledger = Ledger(engine, 60)
    ledger.set_budget("acme", "day", 7_000)
    ledger.set_budget("acme", "day", 1_000, model="gpt-4o")
    ledger.set_budget("beta", "month", None, soft_limit_micro_usd=10)
    with engine.begin() as connection:
        command.downgrade(migrate._config(connection), "0001")
    with engine.connect() as connection:
        assert [tuple(r) for r in connection.execute(sa.text("SELECT * FROM budgets"))] == [("acme", "day", 7_000)]
    migrate.upgrade(engine)
    with engine.begin() as connection:
        command.downgrade(migrate._config(connection), "base")
    with engine.connect() as connection:
        assert sa.inspect(connection).get_table_names() == ["alembic_version"]


def test_concurrent_upgrades_do_not_collide(engine: sa.Engine) -> None:
    """Two hook pods upgrading at once: one migrates, the other then finds nothing to do."""
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrate.upgrade(engine)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and revision(engine) == migrate.head()


def test_the_service_migrates_sqlite_itself_but_only_checks_postgres(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":
        assert migrate.auto_migrates(engine)
        migrate.prepare(engine)
        assert revision(engine) == migrate.head()
        return
    assert not migrate.auto_migrates(engine)
    with pytest.raises(migrate.SchemaError, match="has no ledger schema.*run `xrouter db upgrade`"):
        migrate.prepare(engine)
    migrate.upgrade(engine, "0001")
    with pytest.raises(migrate.SchemaError, match=f"is at schema revision 0001; this version needs {migrate.head()}"):
        migrate.prepare(engine)
    migrate.upgrade(engine)
    migrate.prepare(engine)


@pytest.mark.postgres
def test_the_service_refuses_to_start_on_an_old_postgres_schema(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate.upgrade(engine, "0001")
    engine.dispose()
    result = subprocess.run([sys.executable, "-m", "xrouter.metering"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XROUTER_METERING_DATABASE_URL": postgres_url,
                                 "XROUTER_METERING_PORT": "0"})
    assert result.returncode == 2
    assert "schema revision 0001" in result.stderr and "run `xrouter db upgrade`" in result.stderr


def test_xrouter_db_upgrade_reads_the_url_from_the_environment(
        database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XROUTER_METERING_DATABASE_URL", database_url)
    assert cli.main(["db", "check"]) == 1
    assert "run `xrouter db upgrade`" in capsys.readouterr().err
    assert cli.main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == f"ledger schema: empty -> {migrate.head()}"
    assert cli.main(["db", "upgrade", "--url", database_url]) == 0
    assert capsys.readouterr().out.strip() == f"ledger schema at {migrate.head()}"
    assert cli.main(["db", "check"]) == 0
    monkeypatch.delenv("XROUTER_METERING_DATABASE_URL")
    with pytest.raises(SystemExit, match="pass --url or set XROUTER_METERING_DATABASE_URL"):
        cli.main(["db", "upgrade"])
