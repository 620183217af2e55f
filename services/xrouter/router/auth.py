"""Who is calling the router's public faces, and which tenant they bill.

Callers send an API key (``Authorization: Bearer <key>`` over HTTP, the same in gRPC metadata).
Keys live in metering's ledger (``xrouter keys …``); the router sends metering only the key's
SHA-256 (``MeteringService.Authenticate``) and caches the answer for ``cache_s`` seconds, so the hot
path costs one dictionary lookup. **A revoked key stops working within ``cache_s``** (default 30 s,
``XROUTER_ROUTER_KEY_CACHE_S``); an unknown key is remembered as unknown for at most 2 s, so a key
created a moment after a failed try works almost at once.

The tenant comes from the key. A tenant key naming another tenant (request field or ``X-Tenant``)
is PERMISSION_DENIED; an admin key may act for a tenant it names, which is logged and counted
(``xrouter_admin_acting_for_tenant_total{key_id}``). A tenant may be named in the request (the body's
``xrouter.tenant``, the message's ``tenant``) or beside it (the ``X-Tenant`` header, ``x-tenant``
gRPC metadata); named in both, differently, the request is refused (INVALID_ARGUMENT): which one
was meant cannot be told.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc

from xrouter.common import metrics
from xrouter.common.errors import InvalidArgument, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)
NEGATIVE_CACHE_S = 2.0


@dataclasses.dataclass(frozen=True)
class Caller:
    """An authenticated caller: its key's tenant ("" for a configured admin key) and role."""

    tenant: str
    admin: bool
    key_id: str


# Resolves a key's SHA-256 to its caller, or None for no live key (MeteringClient.authenticate).
Resolve = Callable[[str], Awaitable[Caller | None]]


def key_from_authorization(value: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` value, or None."""
    scheme, _, token = (value or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def named_tenant(in_request: str, beside: str, field: str, header: str) -> str:
    """The tenant a request names ("" for none) from its own ``field`` and the ``header`` beside it;
    both given and different is refused, naming the field."""
    if in_request and beside and in_request != beside:
        raise InvalidArgument(field, f"names tenant {in_request!r} but the {header} header names {beside!r}; "
                                     "name it once")
    return in_request or beside


def tenant_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The tenant named by ``x-tenant`` gRPC metadata ("" for none): the HTTP face's ``X-Tenant``."""
    for name, value in metadata:
        if name == "x-tenant":
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return ""


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The key in gRPC metadata (``authorization: Bearer <key>``), or None."""
    for name, value in metadata:
        if name == "authorization":
            return key_from_authorization(value.decode() if isinstance(value, bytes) else value)
    return None


class RouterAuth:
    """Authenticates keys through metering, with a bounded time-limited cache; concurrent first
    uses of one key share a single lookup."""

    def __init__(self, resolve: Resolve, default_tenant: str, cache_s: float = 30.0,
                 max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._resolve = resolve
        self._default_tenant = default_tenant
        self.cache_s = cache_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._pending: dict[str, asyncio.Future[Caller | None]] = {}  # lookups in flight

    async def caller(self, key: str | None) -> Caller:
        """The caller owning ``key``; Unauthenticated when it is missing, unknown or revoked."""
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>' (create one with "
                                  "`xrouter keys create --tenant NAME`)")
        if not (key.isascii() and key.isprintable()):  # keys are printable ASCII; a header may carry any bytes
            raise Unauthenticated("unknown or revoked API key (a key is printable ASCII)")
        digest = hashlib.sha256(key.encode()).hexdigest()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self._clock():
            found = hit[1]
        else:
            found = await self._lookup(digest)
        if found is None:
            raise Unauthenticated("unknown or revoked API key")
        return found

    async def _lookup(self, digest: str) -> Caller | None:
        # The lookup is a task of its own, shared by every request that needs this key meanwhile:
        # one caller going away (cancelled) must not fail the others.
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._fetch(digest))
            self._pending[digest] = task
            task.add_done_callback(lambda done: self._forget(digest, done))
        return await asyncio.shield(task)

    def _forget(self, digest: str, done: asyncio.Future[Caller | None]) -> None:
        self._pending.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning when every waiter left

    async def _fetch(self, digest: str) -> Caller | None:
        found = await self._resolve(digest)  # errors (metering down) reach the waiters, uncached
        if found is not None and not found.admin:
            metrics.TENANT_LABELS.admit(found.tenant)
        ttl = self.cache_s if found is not None else min(self.cache_s, NEGATIVE_CACHE_S)
        if len(self._cache) >= self._max_entries:
            self._evict()
        self._cache[digest] = (self._clock() + ttl, found)
        return found

    def _evict(self) -> None:
        now = self._clock()
        for digest in [d for d, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[digest]
        while len(self._cache) >= self._max_entries:  # still full: drop the oldest insertions
            del self._cache[next(iter(self._cache))]

    def tenant_for(self, caller: Caller, requested: str) -> str:
        """The tenant a request bills: the key's own; an admin key may name another (audited)."""
        own = caller.tenant or self._default_tenant
        if not requested or requested == own:
            return own
        if not caller.admin:
            raise PermissionDenied(f"tenant: this API key belongs to tenant {own!r} and may not act for "
                                   f"{requested!r}")
        log.warning("audit: admin key %s acts for tenant %r", caller.key_id, requested)
        metrics.ADMIN_ACTING.labels(caller.key_id).inc()
        return requested

    @staticmethod
    def require_admin(caller: Caller, what: str) -> None:
        """PermissionDenied unless ``caller`` holds an admin key."""
        if not caller.admin:
            raise PermissionDenied(f"{what} needs an admin key; tenant {caller.tenant!r}'s key may not")


# --- the client side: how callers (CLI, demo, tests) send their key -------------------------------

def bearer_metadata(key: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``key``."""
    return (("authorization", f"Bearer {key}"),)


def _with_key(details: grpc.aio.ClientCallDetails, key: str) -> grpc.aio.ClientCallDetails:
    metadata = list(details.metadata or ())
    if not any(name == "authorization" for name, _ in metadata):  # a call's own key wins
        metadata += bearer_metadata(key)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, grpc.aio.Metadata(*metadata),
                                      details.credentials, details.wait_for_ready)


class _UnaryBearer(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self._key = key

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_key(details, self._key), request)


class _StreamBearer(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, key: str) -> None:
        self._key = key

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_key(details, self._key), request)


def bearer_interceptors(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a ``grpc.aio`` channel that send ``key`` on every unary and server-streaming
    call (aio channels file each interceptor under one kind only, hence two objects)."""
    return [_UnaryBearer(key), _StreamBearer(key)]
