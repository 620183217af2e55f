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

_Prepared = tuple[str, list[tuple[str, Any]]]
_STATEMENTS: dict[tuple[str, tuple[str, ...], str], _Prepared] = {}


def insert(connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], tail: str) -> sa.CursorResult:
    """``INSERT INTO table (columns of rows[0]) SELECT * FROM unnest(...) <tail>`` (tail: the ON
    CONFLICT and RETURNING clauses). Every row has the same keys."""
    names = tuple(rows[0])
    cache_key = (table.name, names, tail)
    if cache_key not in _STATEMENTS:  # built once: the statement and each column's bind processing
        columns = [table.c[name] for name in names]
        # Sent to psycopg as it is, with binary parameters (%(name)b): text arrays would have every
        # element checked for quoting by a regular expression, a quarter of the ledger's CPU.
        arrays = ", ".join(f"CAST(%({c.name})b AS {c.type.compile(dialect=postgresql.dialect())}[])"
                           for c in columns)
        _STATEMENTS[cache_key] = (
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {tail}",
            [(c.name, c.type.bind_processor(connection.dialect)) for c in columns])
    statement, processors = _STATEMENTS[cache_key]
    # A type's own bind processing (UTCDateTime's zone) applies to each element of its array.
    values = {name: [process(row[name]) for row in rows] if process else [row[name] for row in rows]
              for name, process in processors}
    return connection.exec_driver_sql(statement, values)
