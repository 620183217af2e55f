"""The domain exceptions of every service, and their one mapping to gRPC status codes.

Core code raises these; the server interceptor turns them into statuses, and the client helper
turns a downstream status back into the same exception so it crosses services unchanged.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


class XRouterError(Exception):
    """Base of all domain errors; ``code`` is the gRPC status it maps to."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(XRouterError):
    """Bad input; the message starts with the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(XRouterError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(XRouterError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(XRouterError):
    """The request is valid but the system is not in a state to carry it out; the message says which."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(XRouterError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(XRouterError):
    """A budget or capacity limit; ``subject`` and ``description`` go into a QuotaFailure detail,
    ``reason`` and ``metadata`` (machine-readable figures) into an ErrorInfo, ``retry_after_s``
    (when the limit resets) into a RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, subject: str = "", description: str = "", *, reason: str = "",
                 metadata: dict[str, str] | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.subject = subject
        self.description = description or message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_after_s = retry_after_s


class Unauthenticated(XRouterError):
    """The caller sent no credentials, or unknown ones."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(XRouterError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(XRouterError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[XRouterError]] = {
    cls.code: cls
    for cls in (NotFound, AlreadyExists, PermissionDenied, Unavailable, DeadlineExceeded, Unauthenticated)
}


# A status message travels as a header, and a header over 16 KiB fails the whole response: a
# message echoing a 100 KB input reached the client as RESOURCE_EXHAUSTED ("received metadata size
# exceeds hard limit") instead of its own status. Messages are cut to this many characters.
MAX_MESSAGE_CHARS = 4_000


def short(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}... (cut: the message was {len(message)} characters)"


def status_details(error: XRouterError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying google.rpc rich error details for ``error``."""
    if not isinstance(error, ResourceExhausted):
        return ()
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(
            subject=error.subject, description=error.description)])
    status = status_pb2.Status(code=error.code.value[0], message=short(error.message))
    status.details.add().Pack(quota)
    if error.reason:
        status.details.add().Pack(error_details_pb2.ErrorInfo(
            reason=error.reason, domain="xrouter", metadata=error.metadata))
    if error.retry_after_s is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(max(0, round(error.retry_after_s * 1e9)))
        status.details.add().Pack(retry)
    return (("grpc-status-details-bin", status.SerializeToString()),)


def from_rpc_error(error: grpc.aio.AioRpcError, service: str) -> XRouterError:
    """The domain error for a failed downstream call, so callers see one exception tree."""
    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _exhausted(error, f"{service}: {error.details()}")
    return from_status(error.code(), error.details() or "", service)


def from_status(code: grpc.StatusCode, details: str, service: str) -> XRouterError:
    """The domain error for a status without rich details (a failed call's, or one item's inside
    a batched answer)."""
    message = f"{service}: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, problem = details.partition(": ")
        return InvalidArgument(field, problem or message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(message)
    if code in _BY_CODE:
        return _BY_CODE[code](message)
    return Unavailable(f"{message} ({code.name})")


STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}  # a google.rpc.Code number → grpc's enum


def _exhausted(error: grpc.aio.AioRpcError, message: str) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED with what its rich details said (which limit; when it resets), so that a
    face further up can tell a budget from a rate limit and say when to retry."""
    subject, retry_after_s = "", None
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                subject = quota.violations[0].subject if quota.violations else subject
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after_s = retry.retry_delay.ToNanoseconds() / 1e9
    return ResourceExhausted(message, subject, retry_after_s=retry_after_s)
