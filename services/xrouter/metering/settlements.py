"""Settling requests, one or many per transaction (group commit): write the calls a settlement
carries, release the reservations and store (or overwrite) the summaries, all in one transaction.
A settlement names the tenant its request was reserved and settled for: one naming another tenant
(a summary or reservation of that request_id holds another) is refused, ALREADY_EXISTS, and writes
nothing; it had overwritten the summary's tenant and released the other tenant's reservation.
On PostgreSQL that is one statement for the whole batch (data-modifying CTEs over one array per
column); on SQLite a call insert, an UPDATE per release and an upsert per summary."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrouter.common.errors import AlreadyExists
from xrouter.metering import calls, unnest
from xrouter.metering.schema import LedgerCall, RequestSummary, Reservation

if TYPE_CHECKING:
    from xrouter.metering.ledger import CallRecord, Settlement

_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
# Never overwritten by a settlement: the score (RecordScore may come first) and the stored
# response, which a settlement without one keeps (see the upsert below).
_KEPT = ("request_id", "score", "reward", "scored_at", "response_json")


def values_of(summary: Settlement, at: dt.datetime) -> dict[str, Any]:
    """The summary row a settlement writes (``response_json`` None: keep the stored one)."""
    return dict(
        request_id=summary.request_id, tenant=summary.tenant, strategy=summary.strategy, outcome=summary.outcome,
        total_cost_micro_usd=summary.total_cost_micro_usd, calls=summary.calls, settled_at=at,
        policy_version=summary.policy_version, trace_id=summary.trace_id, cost_lambda=summary.cost_lambda,
        dataset=summary.dataset, prompt_id=summary.prompt_id, returned_call_index=summary.returned_call_index,
        exploration_epsilon=summary.exploration_epsilon, first_call_probability=summary.first_call_probability,
        first_call_explored=summary.first_call_explored,
        messages_json=json.dumps([{"role": r, "content": c} for r, c in summary.messages])
        if summary.messages else None,
        response_json=summary.response_json or None)


def settle_many(session: Session, summaries: Sequence[Settlement], times: Sequence[dt.datetime],
                without_reservation_rows: frozenset[str] = frozenset()) -> list[list[bool]]:
    """Settle in order: a later settlement of the same request in the batch wins, as it would in
    its own transaction, and a stored response survives a settlement that carries none. The calls
    the settlements carry go first (their costs consume the reservations before they are released),
    idempotent as Record: per settlement, per call, False (new) or True (recorded before). A changed
    duplicate raises AlreadyExists, so that the caller's transaction writes nothing of the batch."""
    carried = [call for summary in summaries for call in summary.call_records]
    call_times = [at for summary, at in zip(summaries, times, strict=True) for _ in summary.call_records]
    in_one_statement = session.connection().dialect.name == "postgresql"
    if in_one_statement:
        outcomes = _settle_in_one_statement(session, summaries, times, carried, call_times, without_reservation_rows)
    else:
        outcomes = calls.insert_many(session, carried, call_times, consume=False) if carried else []
    refused = next((o for o in outcomes if isinstance(o, AlreadyExists)), None)
    if refused is not None:
        raise refused
    if not in_one_statement:
        consumed: dict[str, int] = {}  # per request, what its new calls cost (released below)
        for call, outcome in zip(carried, outcomes, strict=True):
            if outcome is False:
                consumed[call.request_id] = consumed.get(call.request_id, 0) + call.cost_micro_usd
        _store(session, summaries, times, consumed, without_reservation_rows)
    duplicates, start = [], 0
    for summary in summaries:
        duplicates.append([bool(o) for o in outcomes[start:start + len(summary.call_records)]])
        start += len(summary.call_records)
    return duplicates


def _merged(summaries: Sequence[Settlement], times: Sequence[dt.datetime]) -> dict[str, dict[str, Any]]:
    """One summary row per request: the later settlement in the batch wins, keeping an earlier
    one's response when it carries none."""
    merged: dict[str, dict[str, Any]] = {}
    for summary, at in zip(summaries, times, strict=True):
        values = values_of(summary, at)
        earlier = merged.get(summary.request_id)
        if earlier is not None and earlier["tenant"] != summary.tenant:
            raise _another_tenant(summary.request_id)
        if earlier is not None and values["response_json"] is None:
            values["response_json"] = earlier["response_json"]
        merged[summary.request_id] = values
    return merged


def _another_tenant(request_id: str) -> AlreadyExists:
    return AlreadyExists(f"request {request_id} belongs to another tenant: a settlement must name the tenant "
                         "it was reserved and settled for")


def _refuse_another_tenants(session: Session, merged: dict[str, dict[str, Any]]) -> None:
    """SQLite (PostgreSQL checks in its one statement): refuse when a stored summary or reservation
    of a request holds another tenant than its settlement names."""
    ids = sorted(merged)
    for table in (RequestSummary.__table__, _RESERVATIONS):
        for request_id, tenant in session.connection().execute(
                sa.select(table.c.request_id, table.c.tenant).where(table.c.request_id.in_(ids))):
            if tenant != merged[request_id]["tenant"]:
                raise _another_tenant(request_id)


def _settle_in_one_statement(session: Session, summaries: Sequence[Settlement], times: Sequence[dt.datetime],
                             carried: list[CallRecord], call_times: list[dt.datetime],
                             without_rows: frozenset[str]) -> list[bool | AlreadyExists]:
    """PostgreSQL: the calls, the releases and the summaries in one statement (data-modifying CTEs,
    arrays in key order), so a settlement costs BEGIN, it and COMMIT: three round trips, not five.
    A release adds what the request's newly inserted calls cost (the CTE's RETURNING). Returns each
    carried call's outcome (calls.insert_many's); a changed duplicate's refusal is raised by the
    caller, whose rollback undoes all."""
    merged = _merged(summaries, times)
    ids = sorted(merged)  # one lock order for every writer
    releases = [request_id for request_id in ids if request_id not in without_rows]
    connection = session.connection()
    statement, call_processors, summary_processors = _one_statement(connection)

    def write(connection: sa.Connection, call_rows: list[dict[str, Any]]) -> set[calls.Key]:
        values = {**unnest.arrays(call_rows, call_processors, "c_"),
                  **unnest.arrays([merged[r] for r in ids], summary_processors, "s_"), "rid": releases}
        rows = connection.exec_driver_sql(statement, values).all()
        # A reservation released for another tenant, or a summary the upsert left alone (it holds
        # another tenant): refused, and the caller's rollback undoes what the statement wrote.
        stored = {r for r, i, _ in rows if i == _SUMMARY_STORED}
        others = sorted({r for r, i, t in rows if i == _RELEASED and t != merged[r]["tenant"]} | (set(ids) - stored))
        if others:
            raise _another_tenant(others[0])
        return {(r, i) for r, i, _ in rows if i >= 0}

    if not carried:
        write(connection, [])
        return []
    return calls.insert_many(session, carried, call_times, consume=False, insert=write)


_ONE_STATEMENT: dict[str, tuple[str, unnest.Processors, unnest.Processors]] = {}
# The single statement returns the calls it inserted (call_index >= 0), and marked by these
# call_index values, each reservation it released (with its tenant) and each summary it stored.
_RELEASED, _SUMMARY_STORED = -1, -2
# The columns of a call row (CallRecord's fields and when it was received) and of a summary row
# (values_of's keys): the single statement's shape, fixed so that it is built once.
_SUMMARY_COLUMNS = ("request_id", "tenant", "strategy", "outcome", "total_cost_micro_usd", "calls", "settled_at",
                    "policy_version", "trace_id", "cost_lambda", "dataset", "prompt_id", "returned_call_index",
                    "exploration_epsilon", "first_call_probability", "first_call_explored", "messages_json",
                    "response_json")
_CALL_COLUMNS = ("request_id", "call_index", "tenant", "model", "input_tokens", "output_tokens", "cost_micro_usd",
                 "latency_ms", "status", "policy_version", "trace_id", "role", "created_at")


def _one_statement(connection: sa.Connection) -> tuple[str, unnest.Processors, unnest.Processors]:
    if "sql" not in _ONE_STATEMENT:
        insert_calls, call_processors = unnest.insert_sql(
            connection, LedgerCall.__table__, _CALL_COLUMNS,
            "ON CONFLICT (request_id, call_index) DO NOTHING RETURNING request_id, call_index, cost_micro_usd", "c_")
        upsert, summary_processors = unnest.insert_sql(connection, RequestSummary.__table__, _SUMMARY_COLUMNS,
                                                       _upsert_tail() + " RETURNING request_id", "s_")
        table = _RESERVATIONS.name
        _ONE_STATEMENT["sql"] = (
            f"WITH new_calls AS ({insert_calls}), "
            f"released AS (UPDATE {table} AS r SET released = true, consumed_micro_usd = CASE WHEN r.released "
            "THEN r.consumed_micro_usd ELSE r.consumed_micro_usd + COALESCE((SELECT sum(n.cost_micro_usd) "
            "FROM new_calls n WHERE n.request_id = r.request_id), 0) END "
            "FROM unnest(CAST(%(rid)b AS VARCHAR[])) AS u(rid) WHERE r.request_id = u.rid "
            "RETURNING r.request_id, r.tenant), "
            f"summaries AS ({upsert}) "
            # What the writes return tells whose rows they touched: no extra lookup (a CTE probing
            # both tables cost 10-20% of settle throughput at concurrency 64).
            "SELECT request_id, call_index, CAST(NULL AS VARCHAR) FROM new_calls "
            f"UNION ALL SELECT request_id, {_RELEASED}, tenant FROM released "
            f"UNION ALL SELECT request_id, {_SUMMARY_STORED}, NULL FROM summaries",
            call_processors, summary_processors)
    return _ONE_STATEMENT["sql"]


def _store(session: Session, summaries: Sequence[Settlement], times: Sequence[dt.datetime],
           consumed: dict[str, int], without_rows: frozenset[str]) -> None:
    """SQLite (PostgreSQL: :func:`_settle_in_one_statement`): release the reservations (but those
    ``without_rows``: held in memory only), adding what their new calls ``consumed``, and upsert
    the summaries (the later settlement of a request wins)."""
    merged = _merged(summaries, times)
    if not merged:
        return
    _refuse_another_tenants(session, merged)
    ids = sorted(merged)  # one lock order for every writer
    connection = session.connection()
    # One UPDATE per request in one executemany: release, and move the new calls' cost into
    # consumed (a settlement's calls and release share the statement: one round trip, not two).
    releases = [{"rid": request_id, "cost": consumed.get(request_id, 0)} for request_id in ids
                if request_id not in without_rows]
    if releases:
        connection.execute(_RELEASE, _rows(releases))
    summaries_in_order = [merged[request_id] for request_id in ids]
    # An executemany of one cached statement: psycopg sends it in one pipeline (one round trip), and
    # SQLAlchemy compiles it once per process. (A multi-row VALUES statement was compiled anew for
    # every batch: ~0.9 ms of CPU per settlement, most of metering's time.)
    connection.execute(_upsert(connection.dialect.name), _rows(summaries_in_order))


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]] | dict[str, Any]:
    """One row goes as a plain execute: psycopg runs every executemany in pipeline mode, whose
    bookkeeping cost more CPU than the statement itself for the one-request batches of light load."""
    return rows[0] if len(rows) == 1 else rows


_RESERVATIONS = Reservation.__table__
_RELEASE = (sa.update(_RESERVATIONS).where(_RESERVATIONS.c.request_id == sa.bindparam("rid"))
            .values(released=True, consumed_micro_usd=sa.case(
                (_RESERVATIONS.c.released.is_(False), _RESERVATIONS.c.consumed_micro_usd + sa.bindparam("cost")),
                else_=_RESERVATIONS.c.consumed_micro_usd)))
_UPSERTS: dict[str, Any] = {}


def _upsert_tail() -> str:
    """The upsert's ON CONFLICT clause in SQL, for the single statement: as :func:`_upsert`."""
    table = RequestSummary.__table__
    updates = [f"{c.name} = EXCLUDED.{c.name}" for c in table.columns if c.name not in _KEPT]
    updates.append(f"response_json = COALESCE(EXCLUDED.response_json, {table.name}.response_json)")
    return (f"ON CONFLICT (request_id) DO UPDATE SET {', '.join(updates)} "
            f"WHERE {table.name}.tenant = EXCLUDED.tenant")


def _upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (request_id) DO UPDATE of a summary row, keeping the _KEPT fields and a
    stored response that the new row lacks; built once per dialect."""
    if dialect not in _UPSERTS:
        table = RequestSummary.__table__
        statement = _INSERT[dialect](table)
        updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in _KEPT}
        updates["response_json"] = sa.func.coalesce(statement.excluded.response_json, table.c.response_json)
        _UPSERTS[dialect] = statement.on_conflict_do_update(  # never another tenant's row, even in a race
            index_elements=["request_id"], set_=updates, where=table.c.tenant == statement.excluded.tenant)
    return _UPSERTS[dialect]
