"""Verdicts on answers (issue 17): one per settled request, stored beside it for learning.

The ledger holds at most one verdict per request. Idempotency and ownership are the database's
rules, not only this module's: the primary key (tenant, request_id) makes a second row impossible,
the foreign key to the settled request's (tenant, request_id) makes a verdict under another tenant
impossible (PostgreSQL enforces it; SQLite runs without foreign keys), and the row is written by
one conditional ``INSERT … SELECT`` from the request's summary, so on either database it exists
only if the request has settled, under this tenant, with an answer. The checks before it are there
to name the problem (404, 403, 400, 409) rather than to guard the data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from xrouter.common.bounds import check_comment, check_identifier, check_score
from xrouter.common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from xrouter.metering.schema import Feedback, RequestSummary, UTCDateTime

SOURCES = ("user", "reference")


@dataclasses.dataclass(frozen=True)
class FeedbackRecord:
    """One verdict as a caller files it; ``source`` is "user" or "reference"."""

    request_id: str
    tenant: str
    score: float
    source: str = "user"
    comment: str = ""

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field."""
        check_identifier(self.request_id, "request_id")
        check_identifier(self.tenant, "tenant")
        check_score(self.score, "score")
        if self.source not in SOURCES:
            raise InvalidArgument("source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}")
        check_comment(self.comment, "comment")


def record(session: Session, item: FeedbackRecord, now: dt.datetime) -> tuple[bool, float]:
    """Store ``item`` in this transaction: (duplicate, the score stored). Raises NotFound (no settled
    request), PermissionDenied (another tenant's), InvalidArgument (the request failed: no answer),
    AlreadyExists (different feedback is stored)."""
    summary = session.get(RequestSummary, item.request_id)
    # A summary without an outcome is a score recorded before its request settled: not settled yet.
    if summary is None or not summary.outcome:
        raise NotFound(f"request_id: no settled request {item.request_id!r} (feedback is for requests that have "
                       "answered)")
    if summary.tenant != item.tenant:
        # As for a reused request_id on Route: the id is someone else's, and no retry changes that.
        raise PermissionDenied(f"request_id: request {item.request_id} belongs to another tenant")
    if summary.outcome != "ok":
        raise InvalidArgument("request_id", f"request {item.request_id} ended with {summary.outcome}: it returned "
                              "no answer to rate")
    existing = session.get(Feedback, (item.tenant, item.request_id))
    if existing is not None:
        return _same(existing, item), existing.score
    values = sa.select(RequestSummary.tenant, RequestSummary.request_id,
                       sa.literal(item.score, sa.Double), sa.literal(item.source, sa.String),
                       sa.literal(item.comment, sa.Text), sa.literal(now, UTCDateTime)).where(
        RequestSummary.request_id == item.request_id, RequestSummary.tenant == item.tenant,
        RequestSummary.outcome == "ok")
    # RETURNING, not rowcount: drivers disagree on the rowcount of INSERT … SELECT.
    inserted = session.execute(sa.insert(Feedback).from_select(
        ["tenant", "request_id", "score", "source", "comment", "created_at"], values).returning(Feedback.request_id))
    if inserted.first() is None:  # the summary changed between the read and the insert
        raise NotFound(f"request_id: no settled request {item.request_id!r} of this tenant with an answer")
    return False, item.score


def _same(existing: Feedback, item: FeedbackRecord) -> bool:
    """True for a repeat of the stored verdict; AlreadyExists naming what differs otherwise."""
    differing = [name for name in ("score", "source", "comment") if getattr(existing, name) != getattr(item, name)]
    if not differing:
        return True
    raise AlreadyExists(f"request_id: request {item.request_id} already has feedback (score {existing.score:g} "
                        f"from {existing.source}); this one differs in {', '.join(differing)}: a request is rated "
                        "once")


def stored(session: Session, request_ids: list[str]) -> dict[str, Feedback]:
    """The verdicts of these requests, by request id (for the export)."""
    rows = session.scalars(sa.select(Feedback).where(Feedback.request_id.in_(request_ids)))
    return {row.request_id: row for row in rows}
