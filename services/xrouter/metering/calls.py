"""Writing model calls to the ledger, one or many per transaction, idempotent on
(request_id, call_index): a retried call is a duplicate, a changed one is refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrouter.common.errors import AlreadyExists
from xrouter.metering import budgets, unnest
from xrouter.metering.schema import LedgerCall

if TYPE_CHECKING:
    from xrouter.metering.ledger import CallRecord

Key = tuple[str, int]
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def key(call: CallRecord) -> Key:
    """The idempotency key of a call."""
    return call.request_id, call.call_index


def differing_fields(row: LedgerCall, call: CallRecord) -> list[str]:
    """The content fields in which a stored call and a retried one differ."""
    return [f.name for f in dataclasses.fields(call)
            if f.name not in ("request_id", "call_index") and getattr(row, f.name) != getattr(call, f.name)]


def changed_duplicate(call: CallRecord, differing: list[str]) -> AlreadyExists:
    """The refusal of a retried call whose content changed."""
    return AlreadyExists(f"call {call.call_index} of request {call.request_id} was already recorded "
                         f"with different {', '.join(differing)}")


Insert = Callable[[sa.Connection, list[dict[str, Any]]], set[Key]]


def insert_many(session: Session, calls: Sequence[CallRecord], times: Sequence[dt.datetime],
                consume: bool = True, insert: Insert | None = None) -> list[bool | AlreadyExists]:
    """Insert the new calls in one statement, consume their cost from their requests'
    reservations (unless ``consume`` is False: a settlement folds that into its release), and
    return per call: False (new), True (same content already there), or the AlreadyExists refusal
    of a changed duplicate. Rows and reservation updates go in key order, so concurrent batches
    (several replicas) lock in the same order and cannot deadlock each other. ``insert``: writes the
    rows (and, for a settlement, more in the same statement) and returns the keys it inserted."""
    first: dict[Key, CallRecord] = {}
    received: dict[Key, dt.datetime] = {}
    for call, at in zip(calls, times, strict=True):
        if key(call) not in first:
            first[key(call)], received[key(call)] = call, at
    new = sorted(first.values(), key=key)
    connection = session.connection()
    # A shallow copy of each call's fields: dataclasses.asdict deep-copies every value, and was a
    # tenth of the ledger thread's time under load (py-spy).
    rows: list[dict[str, Any]] = [{**vars(c), "created_at": received[key(c)]} for c in new]
    inserted = (insert or _insert_new)(connection, rows) if rows else set()
    if consume:
        budgets.consume(session, [(c.request_id, c.tenant, c.cost_micro_usd) for c in new if key(c) in inserted])
    retried = {key(c) for c in calls} - inserted
    stored: dict[Key, LedgerCall] = {}
    if retried:
        for row in session.scalars(sa.select(LedgerCall).where(
                sa.tuple_(LedgerCall.request_id, LedgerCall.call_index).in_(sorted(retried)))):
            stored[(row.request_id, row.call_index)] = row
    results: list[bool | AlreadyExists] = []
    claimed: set[Key] = set()
    for call in calls:
        if key(call) in inserted and key(call) not in claimed and first[key(call)] is call:
            claimed.add(key(call))
            results.append(False)
            continue
        if key(call) in inserted:  # a repeat, within this batch, of a call it inserted
            differing = [f.name for f in dataclasses.fields(call)
                         if getattr(first[key(call)], f.name) != getattr(call, f.name)]
        elif key(call) in stored:
            differing = differing_fields(stored[key(call)], call)
        else:
            raise RuntimeError(f"call {key(call)} was neither inserted nor found: a concurrent delete?")
        results.append(changed_duplicate(call, differing) if differing else True)
    return results


def _insert_new(connection: sa.Connection, rows: list[dict[str, Any]]) -> set[Key]:
    """Insert ``rows`` (in order), skipping keys already stored; the keys inserted."""
    if connection.dialect.name == "postgresql":
        return _insert_unnested(connection, rows)
    return {(r, i) for r, i in connection.execute(_insert(connection.dialect.name), rows)}


def _insert_unnested(connection: sa.Connection, rows: list[dict[str, Any]]) -> set[Key]:
    """PostgreSQL: one statement text whatever the batch size (metering/unnest.py)."""
    return {(r, i) for r, i in unnest.insert(connection, LedgerCall.__table__, rows,
                                             "ON CONFLICT (request_id, call_index) DO NOTHING "
                                             "RETURNING request_id, call_index")}


_INSERTS: dict[str, Any] = {}


def _insert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING the inserted keys, built once per dialect (sent
    as an executemany: SQLAlchemy batches it into multi-row VALUES from one cached compilation)."""
    if dialect not in _INSERTS:
        table = LedgerCall.__table__
        _INSERTS[dialect] = (_INSERT[dialect](table)
                             .on_conflict_do_nothing(index_elements=["request_id", "call_index"])
                             .returning(table.c.request_id, table.c.call_index))
    return _INSERTS[dialect]
