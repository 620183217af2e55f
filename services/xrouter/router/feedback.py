"""Feedback in (issue 17): a user's verdict on the answer a routed request returned, filed under
that request's id and stored beside it in the ledger, where the training export reads it together
with the verifier's score and the call whose answer was returned.

Both faces (``POST /v1/feedback``, ``RouterService.Feedback``) parse into :class:`FeedbackRequest`
and go through :class:`FeedbackDesk`. The verdict is ``score`` in [0, 1] or ``thumbs`` ("up" = 1,
"down" = 0), exactly one of them, with an optional comment. The desk checks the input (every
refusal names its field) and metering decides the rest in its database: no settled request with
this id → NOT_FOUND; another tenant's → PERMISSION_DENIED (as Route answers for another tenant's
request_id: the id namespace is shared, so a 404 here would hide nothing Route does not already
tell); the same verdict again → a duplicate, stored once; a different one → ALREADY_EXISTS.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from xrouter.common.bounds import check_comment, check_identifier, check_score
from xrouter.common.errors import InvalidArgument
from xrouter.common.validation import first_problem, invalid_argument
from xrouter.router.auth import named_tenant
from xrouter.router.ports import Meter

THUMBS = {"up": 1.0, "down": 0.0}


@dataclasses.dataclass(frozen=True)
class FeedbackRequest:
    """A verdict as a face received it (``tenant`` as named in the request; the faces replace it
    with the one the caller's key may act for)."""

    request_id: str
    score: float | None = None
    thumbs: str | None = None
    comment: str = ""
    tenant: str = ""


@dataclasses.dataclass(frozen=True)
class FeedbackResult:
    request_id: str
    score: float  # the score stored for the request
    duplicate: bool  # this verdict had been stored before: nothing new was written


def verdict(request: FeedbackRequest) -> float:
    """The score a request gives, after checking every field (InvalidArgument names the first bad one)."""
    check_identifier(request.request_id, "request_id")
    if request.score is not None and request.thumbs is not None:
        raise InvalidArgument("score", "give either score or thumbs, not both")
    if request.thumbs is not None:
        if request.thumbs not in THUMBS:
            raise InvalidArgument("thumbs", f"must be 'up' or 'down', got {request.thumbs!r}")
        score = THUMBS[request.thumbs]
    elif request.score is not None:
        check_score(request.score, "score")
        score = request.score
    else:
        raise InvalidArgument("score", "a verdict is required: score (a number within [0, 1]) or thumbs ('up' or "
                              "'down')")
    check_comment(request.comment, "comment")
    return score


class FeedbackDesk:
    """Files verdicts with metering, which checks ownership and keeps one per request."""

    def __init__(self, meter: Meter, timeout_s: float = 10.0) -> None:
        self._meter = meter
        self._timeout_s = timeout_s

    async def submit(self, request: FeedbackRequest, timeout: float | None = None) -> FeedbackResult:
        score = verdict(request)
        duplicate, stored = await self._meter.record_feedback(
            request.request_id, request.tenant, score, request.comment, min(timeout or self._timeout_s,
                                                                            self._timeout_s))
        return FeedbackResult(request.request_id, stored, duplicate)


class FeedbackBody(BaseModel):
    """The JSON body of ``POST /v1/feedback``; strict (JSON true is not a number, "1" is not 1)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    request_id: str | None = None
    score: float | None = None
    thumbs: str | None = None
    comment: str | None = None
    tenant: str | None = None


def parse_body(body: Any, tenant_header: str) -> FeedbackRequest:
    """The feedback body → a :class:`FeedbackRequest` (its values are checked by ``FeedbackDesk``)."""
    if not isinstance(body, dict):
        raise InvalidArgument("body", f"must be a JSON object, got {type(body).__name__}")
    try:
        parsed = FeedbackBody.model_validate(body)
    except ValidationError as error:
        problem = first_problem(error)
        if problem.kind == "extra_forbidden":
            raise InvalidArgument("body", f"unknown key {problem.field!r}; known: "
                                  f"{sorted(FeedbackBody.model_fields)}") from None
        raise invalid_argument(error) from None
    return FeedbackRequest(request_id=parsed.request_id or "", score=parsed.score, thumbs=parsed.thumbs,
                           comment=parsed.comment or "", tenant=named_tenant(parsed.tenant or "", tenant_header, "tenant", "X-Tenant"))
