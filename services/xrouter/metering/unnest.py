"""PostgreSQL batch writes as one statement whatever the batch size: one array per column,
expanded by ``unnest``.

A multi-row VALUES is new text for every batch size and has more parameters than psycopg caches a
converted query for: converting it (a regex over the whole text) took about half the ledger
thread's CPU under load (py-spy, bench.metering_record). An executemany sends one statement per
row (in a pipeline), each planned and run on its own by the server. One ``INSERT ... SELECT * FROM
unnest(...)`` is planned once, and its rows are inserted in the arrays' order, so concurrent
batches built in key order lock in key order.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

Processors = list[tuple[str, Any]]
_STATEMENTS: dict[tuple[str, tuple[str, ...], str], tuple[str, Processors]] = {}


def insert_sql(connection: sa.Connection, table: sa.Table, names: tuple[str, ...], tail: str,
               prefix: str = "") -> tuple[str, Processors]:
    """``INSERT INTO table (names) SELECT * FROM unnest(...) <tail>`` (tail: the ON CONFLICT and
    RETURNING clauses) and each column's bind processing; parameters are named ``prefix + column``
    (a statement writing two tables keeps them apart). Sent to psycopg as it is, with binary
    parameters (%(name)b): text arrays would have every element checked for quoting by a regular
    expression, a quarter of the ledger's CPU."""
    columns = [table.c[name] for name in names]
    arrays = ", ".join(f"CAST(%({prefix}{c.name})b AS {c.type.compile(dialect=postgresql.dialect())}[])"
                       for c in columns)
    return (f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {tail}",
            [(c.name, c.type.bind_processor(connection.dialect)) for c in columns])


def arrays(rows: list[dict[str, Any]], processors: Processors, prefix: str = "") -> dict[str, list[Any]]:
    """One array per column of ``rows``; a type's own bind processing (UTCDateTime's zone) applies
    to each element."""
    return {prefix + name: [process(row[name]) for row in rows] if process else [row[name] for row in rows]
            for name, process in processors}


def insert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], tail: str) -> sa.CursorResult:
    """Insert ``rows`` (every one with the same keys) in one statement, built once per shape."""
    names = tuple(rows[0])
    cache_key = (table.name, names, tail)
    if cache_key not in _STATEMENTS:
        _STATEMENTS[cache_key] = insert_sql(connection, table, names, tail)
    statement, processors = _STATEMENTS[cache_key]
    return connection.exec_driver_sql(statement, arrays(rows, processors))
