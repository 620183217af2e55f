"""A failed call's account on the wire: the adapters pack a ``FailedCall`` into the google.rpc.Status
details of a failed Invoke; callers (the router) unpack it to record and bill the call. Both sides
live here so they cannot drift. Light on imports: the router uses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.rpc import status_pb2

from xrouter.api.adapters.v1 import adapters_pb2
from xrouter.api.common.v1 import common_pb2
from xrouter.common.errors import XRouterError, status_details

if TYPE_CHECKING:
    from xrouter.adapters.core import Invocation

__all__ = ["failed_call_from_rpc_error", "failed_call_status"]

DETAILS_KEY = "grpc-status-details-bin"


def failed_call_status(error: XRouterError, call: Invocation) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for ``error``: its usual rich details plus the FailedCall."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for _, blob in status_details(error):  # keep QuotaFailure and the like
        status.MergeFromString(blob)
    status.details.add().Pack(adapters_pb2.FailedCall(
        model=call.model, status=common_pb2.CallStatus.Value(f"CALL_STATUS_{call.status}"),
        input_tokens=call.input_tokens, output_tokens=call.output_tokens, tokens_estimated=call.tokens_estimated,
        cost_micro_usd=call.cost_micro_usd, latency_ms=call.latency_ms, attempts=call.attempts))
    return ((DETAILS_KEY, status.SerializeToString()),)


def failed_call_from_rpc_error(error: grpc.aio.AioRpcError) -> adapters_pb2.FailedCall | None:
    """The FailedCall a failed Invoke carried, if the call reached a backend."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY:
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(adapters_pb2.FailedCall.DESCRIPTOR):
                    found = adapters_pb2.FailedCall()
                    detail.Unpack(found)
                    return found
    return None
