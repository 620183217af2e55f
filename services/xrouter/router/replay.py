"""Idempotent retries: what the router stores with a settled request, and how a retry with the same
request_id gets it back.

The first attempt stores its final response (or its error) as JSON with the settled request in the
ledger (``SettleRequest.response_json``), when the client chose the request_id (only such a client
retries with it; answers are not kept otherwise). A retry is recognised by metering's Authorize before
anything is reserved or spent: it gets that response back, marked ``replayed``, and no model is
called again. The stored JSON carries a fingerprint of the request; the same id sent with a
different request is refused (ALREADY_EXISTS) rather than answered with an unrelated response.
Errors are replayed too: an attempt that failed after spending under its id cannot run again
under the same id (the ledger keys its calls by request id and call index), so the client learns
what happened and sends a new id to try again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any

from xrouter.common import errors
from xrouter.common.errors import AlreadyExists, XRouterError
from xrouter.router.policy import CallOutcome, CallStatus, Strategy

if TYPE_CHECKING:
    from xrouter.router.core import RouteRequest, RouteResult

VERSION = 1
# Metering keeps at most 4,000,000 characters; past this the calls' own texts are left out (the
# answer is always kept).
MAX_STORED_CHARS = 3_500_000
_ERRORS = {cls.code.name: cls for cls in (errors.NotFound, AlreadyExists, errors.PermissionDenied,
                                           errors.ResourceExhausted, errors.Unavailable, errors.DeadlineExceeded)}


def fingerprint(request: RouteRequest) -> str:
    """SHA-256 of what the request asks for (not its id or tenant: those are the key)."""
    reference = dataclasses.asdict(request.reference) if request.reference is not None else None
    asked = [request.messages, request.allowed_models, request.cost_lambda, request.max_cost_usd,
             request.max_turns, request.max_tokens, request.policy, reference]
    if request.temperature is not None or request.options != type(request.options)():
        # Only when set: the fingerprints of requests stored before these options existed still match.
        asked += [request.temperature, dataclasses.asdict(request.options)]
    canonical = json.dumps(asked, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_result(result: RouteResult, print_: str) -> str:
    """The response to store; the calls' texts are dropped when it would not fit."""
    body = {"v": VERSION, "fingerprint": print_, "result": _result_dict(result)}
    text = json.dumps(body, ensure_ascii=False)  # characters, not \u escapes, count against the limit
    if len(text) > MAX_STORED_CHARS:
        for call in body["result"]["calls"]:
            call["text"] = ""
        text = json.dumps(body, ensure_ascii=False)
    return text if len(text) <= MAX_STORED_CHARS else ""  # not kept: a retry is told so


def encode_error(error: XRouterError, print_: str) -> str:
    """The error to replay (its status and message)."""
    return json.dumps({"v": VERSION, "fingerprint": print_,
                       "error": {"code": error.code.name, "message": error.message[:10_000]}})


def decode(stored: str, request_id: str, print_: str) -> RouteResult:
    """The stored response of ``request_id`` as a replayed result; raises the stored error, or
    ALREADY_EXISTS when the id was used for a different request or nothing was kept."""
    if not stored:
        raise AlreadyExists(f"request_id {request_id} was already used and has finished, but its response was "
                            "not kept (the id was not the client's, or the response was too large to keep): "
                            "send a new request_id")
    body = json.loads(stored)
    if body.get("fingerprint") != print_:
        raise AlreadyExists(f"request_id {request_id} was already used for a different request (other "
                            "messages or options): send a new request_id for new work")
    if "error" in body:
        code, message = body["error"]["code"], body["error"]["message"]
        replayed = f"request_id {request_id} already failed, and is not run again: {message}"
        if code == "INVALID_ARGUMENT":
            field, _, problem = message.partition(": ")
            raise errors.InvalidArgument(field, f"{problem} (request_id {request_id} already failed with this)")
        raise _ERRORS.get(code, XRouterError)(replayed)  # INTERNAL (a bug, a cancelled attempt): 500
    return _result(body["result"])


def _result_dict(result: RouteResult) -> dict[str, Any]:
    fields = dataclasses.asdict(result)
    fields["strategy"] = result.strategy.value
    fields["calls"] = [{**dataclasses.asdict(c), "status": c.status.value} for c in result.calls]
    fields.pop("replayed", None)
    return fields


def _result(fields: dict[str, Any]) -> RouteResult:
    from xrouter.router.core import RouteResult

    calls = [CallOutcome(**{**c, "status": CallStatus(c["status"])}) for c in fields["calls"]]
    return RouteResult(**{**fields, "calls": calls, "strategy": Strategy(fields["strategy"]), "replayed": True})
