"""Training-data export: settled requests as episodes, one JSON object a line (format: EXPORT.md).

Episodes are read in pages ordered by (settled_at, request_id) — keyset pagination, so memory
stays flat and the export is stable while new requests settle.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from xrouter.metering import feedback
from xrouter.metering.schema import UTC, Feedback, LedgerCall, RequestSummary

SCHEMA = "xrouter.episode/v1"
PAGE = 500


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _usd(micro: int) -> str:
    """Exact dollars as a decimal string (no binary float on the way)."""
    return str(Decimal(micro).scaleb(-6).quantize(Decimal("0.000001")))


def _returned_call(summary: RequestSummary, calls: list[LedgerCall]) -> dict[str, Any] | None:
    """The call whose answer the user got (what a user's verdict is about), by index and model."""
    if summary.returned_call_index is None:
        return None
    model = next((c.model for c in calls if c.call_index == summary.returned_call_index), None)
    return {"index": summary.returned_call_index, "model": model}


def _exploration(summary: RequestSummary) -> dict[str, Any] | None:
    if summary.exploration_epsilon is None:
        return None
    return {"epsilon": summary.exploration_epsilon, "first_call_probability": summary.first_call_probability,
            "first_call_explored": summary.first_call_explored}


def _feedback(row: Feedback | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"score": row.score, "source": row.source, "comment": row.comment, "at": _iso(row.created_at)}


def _episode(summary: RequestSummary, calls: list[LedgerCall], verdict: Feedback | None = None) -> dict[str, Any]:
    recorded = sum(c.cost_micro_usd for c in calls)
    return {
        "schema": SCHEMA,
        "request_id": summary.request_id,
        "tenant": summary.tenant,
        "settled_at": _iso(summary.settled_at),
        "policy_version": summary.policy_version,
        "trace_id": summary.trace_id,
        "strategy": summary.strategy,
        "outcome": summary.outcome,
        "cost_lambda": summary.cost_lambda,
        "prompt": ({"dataset": summary.dataset, "prompt_id": summary.prompt_id}
                   if summary.dataset or summary.prompt_id else None),
        "messages": json.loads(summary.messages_json) if summary.messages_json else None,
        "calls": [{
            "index": c.call_index, "model": c.model, "role": c.role,
            "status": c.status.removeprefix("CALL_STATUS_").lower(),
            "input_tokens": c.input_tokens, "output_tokens": c.output_tokens,
            "cost_micro_usd": c.cost_micro_usd, "latency_ms": c.latency_ms, "at": _iso(c.created_at),
        } for c in calls],
        "reported_cost_micro_usd": summary.total_cost_micro_usd,
        "cost_micro_usd": recorded,
        "cost_usd": _usd(recorded),
        "score": summary.score,
        "reward": summary.reward,
        "scored_at": _iso(summary.scored_at),
        "returned_call": _returned_call(summary, calls),
        "exploration": _exploration(summary),
        "feedback": _feedback(verdict),
    }


def episodes(engine: Engine, since: dt.datetime | None = None, until: dt.datetime | None = None,
             tenant: str = "", scored_only: bool = False) -> Iterator[dict[str, Any]]:
    """Episodes of requests settled in [since, until), oldest first; ``scored_only``: those with a
    verifier's score or feedback."""
    where = []
    if since is not None:
        where.append(RequestSummary.settled_at >= since)
    if until is not None:
        where.append(RequestSummary.settled_at < until)
    if tenant:
        where.append(RequestSummary.tenant == tenant)
    if scored_only:  # a verifier's score or a verdict: either is a learning signal
        where.append(sa.or_(RequestSummary.score.is_not(None),
                            sa.exists().where(Feedback.request_id == RequestSummary.request_id)))
    after: tuple[dt.datetime, str] | None = None
    while True:
        page_where = list(where)
        if after is not None:
            page_where.append(sa.tuple_(RequestSummary.settled_at, RequestSummary.request_id) > after)
        with Session(engine) as session:
            summaries = session.scalars(sa.select(RequestSummary).where(*page_where)
                                        .order_by(RequestSummary.settled_at, RequestSummary.request_id)
                                        .limit(PAGE)).all()
            if not summaries:
                return
            ids = [s.request_id for s in summaries]
            by_request: dict[str, list[LedgerCall]] = {i: [] for i in ids}
            for call in session.scalars(sa.select(LedgerCall).where(LedgerCall.request_id.in_(ids))
                                        .order_by(LedgerCall.request_id, LedgerCall.call_index)):
                by_request[call.request_id].append(call)
            verdicts = feedback.stored(session, ids)
        for summary in summaries:
            yield _episode(summary, by_request[summary.request_id], verdicts.get(summary.request_id))
        after = (summaries[-1].settled_at, summaries[-1].request_id)


def write_jsonl(engine: Engine, out: IO[str], progress: Callable[[int], None] | None = None,
                **filters: Any) -> int:
    """Write the episodes matching ``filters`` (see :func:`episodes`) to ``out``; returns how many."""
    written = 0
    for episode in episodes(engine, **filters):
        # Strict JSON: a non-finite float (stored before the ledger refused them) becomes null,
        # where json.dumps would write Infinity, which no JSON parser but Python's reads.
        out.write(json.dumps(_finite(episode), ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n")
        written += 1
        if progress is not None and written % 10_000 == 0:
            progress(written)
    return written


def read_jsonl(lines: IO[str]) -> Iterator[dict[str, Any]]:
    """The episodes of an export (for the trainer); ValueError on a line of another format."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        episode = json.loads(line)
        if episode.get("schema") != SCHEMA:
            raise ValueError(f"line {number}: not an {SCHEMA} episode (schema {episode.get('schema')!r})")
        yield episode


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
