"""Database engine and session handling for the ledger (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

# Writers queue on the database lock; the busy handler is not fair, so allow a long wait under load.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Seconds to wait for a PostgreSQL connection: an unreachable host must not hang a request (or the
# health check) for the operating system's TCP timeout. A URL's own connect_timeout wins.
POSTGRES_CONNECT_TIMEOUT_S = 5


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``, tuned per backend.

    SQLite: WAL (readers do not block the writer), a busy timeout, and every transaction opened
    with ``BEGIN IMMEDIATE`` so read-check-write sequences (budget checks) serialise, as
    ``SELECT ... FOR UPDATE`` makes them do on PostgreSQL. The database's folder is created.
    PostgreSQL: a connect timeout. No ``pool_pre_ping``: it costs a round trip on every
    transaction; instead a connection the server dropped (a restart) fails its first statement,
    SQLAlchemy then discards the pool, and :class:`~xrouter.metering.ledger.Ledger` retries the
    transaction once on a fresh connection (every ledger write is idempotent).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = kwargs.pop("connect_args", {})
        if "connect_timeout" not in parsed.query:
            connect_args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT_S)
        return create_engine(parsed, connect_args=connect_args, **kwargs)
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
        pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # pysqlite's lazy BEGIN would let two writers both read a budget before either writes.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine``; objects stay readable after commit (they are returned to callers)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception, always close."""
    with factory.begin() as session:
        yield session
