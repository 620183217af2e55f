"""Who is calling, and what they may do.

Callers send an API key in gRPC metadata (``authorization: Bearer <key>``; ``x-api-key: <key>``
also works). Keys are never stored: the service and admin keys are configured as their SHA-256
(``XROUTER_METERING_SERVICE_KEY_SHA256`` / ``..._ADMIN_KEY_SHA256``, comma-separated to allow
rotation), tenant keys live in ``api_keys`` as their SHA-256. Keys are 256-bit random, so an
unsalted hash resists brute force as well as a slow one would, and lets a key be found by lookup.

Roles:
- ``service`` (the router): writes the ledger (Authorize, Record, Settle, RecordScore,
  RecordFeedback) for any tenant, reads any tenant's usage, and resolves the keys its own callers
  send (Authenticate).
  It is trusted to name the tenant it acts for.
- ``admin``: budgets, API keys, any tenant's usage. It cannot write spend. Admin keys are the
  configured hashes or ``api_keys`` rows with role "admin" (``xrouter keys create --admin``).
- ``tenant``: its own usage, nothing else.
- ``local``: auth is off (``XROUTER_METERING_AUTH=off``, allowed only on a loopback address):
  every caller may do everything, as in the single-machine embedded default.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import re
import secrets
from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from xrouter.common.bounds import check_identifier, check_name
from xrouter.common.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from xrouter.metering.schema import ApiKey

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "xrk_"


class Role(enum.Enum):
    """What kind of caller an identity is."""

    SERVICE = "service"
    ADMIN = "admin"
    TENANT = "tenant"
    LOCAL = "local"


class Permission(enum.Enum):
    """One right an RPC needs."""

    WRITE_LEDGER = "write the ledger"
    READ_ANY_USAGE = "read any tenant's usage"
    SET_BUDGETS = "set budgets"
    MANAGE_KEYS = "manage API keys"
    VERIFY_KEYS = "resolve API keys"


_RIGHTS: dict[Role, frozenset[Permission]] = {
    Role.SERVICE: frozenset({Permission.WRITE_LEDGER, Permission.READ_ANY_USAGE, Permission.VERIFY_KEYS}),
    Role.ADMIN: frozenset({Permission.READ_ANY_USAGE, Permission.SET_BUDGETS, Permission.MANAGE_KEYS}),
    Role.TENANT: frozenset(),
    Role.LOCAL: frozenset(Permission),
}


@dataclasses.dataclass(frozen=True)
class Identity:
    """An authenticated caller; ``tenant`` is set for keys stored in the ledger (an admin key's
    tenant is the one it bills when it names none)."""

    role: Role
    tenant: str = ""
    key_id: str = ""

    def require(self, permission: Permission) -> None:
        """Raise PermissionDenied unless this identity holds ``permission``."""
        if permission not in _RIGHTS[self.role]:
            who = f"tenant {self.tenant}'s key" if self.role is Role.TENANT else f"the {self.role.value} identity"
            raise PermissionDenied(f"{who} may not {permission.value}")

    def usage_tenant(self, requested: str) -> str:
        """The tenant whose usage this caller may read: a tenant key reads only its own (an empty
        request means its own); other identities must name one."""
        if self.role is Role.TENANT:
            if requested and requested != self.tenant:
                raise PermissionDenied(f"tenant {self.tenant}'s key may not read the usage of another tenant")
            return self.tenant
        self.require(Permission.READ_ANY_USAGE)
        if not requested:
            raise InvalidArgument("tenant", "must not be empty")
        return requested


LOCAL = Identity(Role.LOCAL)


def hash_key(key: str) -> str:
    """The stored form of an API key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hashes(raw: str, variable: str) -> frozenset[str]:
    """Comma-separated SHA-256 hex digests; ValueError names ``variable`` on a malformed one."""
    hashes = [part.strip().lower() for part in raw.split(",") if part.strip()]
    for value in hashes:
        if not SHA256_HEX.match(value):
            raise ValueError(f"{variable} must be comma-separated SHA-256 hex digests (64 hex characters, "
                             f"e.g. from `printf %s \"$KEY\" | sha256sum`), got one of {len(value)} characters")
    return frozenset(hashes)


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The API key a caller sent, or None."""
    for name, value in metadata:
        text = value.decode() if isinstance(value, bytes) else value
        if name == "authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == "x-api-key" and text.strip():
            return text.strip()
    return None


class Authenticator:
    """Maps the key in a call's metadata to an :class:`Identity`.

    ``find_tenant_key`` looks a key hash up in the ledger (it blocks: call :meth:`identify` from a
    worker thread); service and admin keys are checked first, without touching the database, so
    the router can still Record (into the spool) while the database is down.
    """

    def __init__(self, required: bool, service_hashes: frozenset[str], admin_hashes: frozenset[str],
                 find_tenant_key: Callable[[str], Identity | None]) -> None:
        self.required = required
        self._service, self._admin = service_hashes, admin_hashes
        self._find = find_tenant_key

    @classmethod
    def off(cls, find_tenant_key: Callable[[str], Identity | None] = lambda _: None) -> Authenticator:
        """No authentication of this service's callers: every caller is trusted (loopback-only
        embedded default). ``find_tenant_key`` still resolves the keys the router's callers send."""
        return cls(False, frozenset(), frozenset(), find_tenant_key)

    def identify_without_lookup(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity | None:
        """The caller's identity when no database lookup is needed (auth off, the service or an
        admin key); None for a key that may be a tenant's. Unauthenticated without a key."""
        if not self.required:
            return LOCAL
        digest = self._digest(metadata)
        if digest in self._service:
            return Identity(Role.SERVICE)
        if digest in self._admin:
            return Identity(Role.ADMIN)
        return None

    def identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity:
        """The caller's identity; Unauthenticated when auth is required and the key is missing or
        unknown. Blocks on the ledger for tenant keys."""
        identity = self.identify_without_lookup(metadata)
        if identity is not None:
            return identity
        identity = self._find(self._digest(metadata))
        if identity is None:
            raise Unauthenticated("unknown or revoked API key")
        return identity

    def resolve(self, digest: str) -> Identity | None:
        """Whose key has SHA-256 ``digest`` (for the router's public faces, whatever this service's
        own auth mode): a configured admin hash, else a live ledger key, else None. The service key
        is not a client's key. Blocks on the ledger."""
        if not SHA256_HEX.match(digest):
            raise InvalidArgument("key_sha256", "must be 64 lowercase hex characters (a SHA-256)")
        if digest in self._admin:
            return Identity(Role.ADMIN, key_id="configured-admin")
        if digest in self._service:  # the router's own credential is no client's key
            return None
        return self._find(digest)

    @staticmethod
    def _digest(metadata: Iterable[tuple[str, str | bytes]]) -> str:
        key = key_from_metadata(metadata)
        if key is None:
            raise Unauthenticated("missing API key: send gRPC metadata 'authorization: Bearer <key>'")
        return hash_key(key)


# --- tenant keys in the ledger -------------------------------------------------------------------

KEY_ROLES = ("tenant", "admin")


def find_tenant_key(session: Session, digest: str) -> Identity | None:
    """The identity (tenant or admin) of an unrevoked key with this hash."""
    row = session.scalar(sa.select(ApiKey).where(ApiKey.key_sha256 == digest, ApiKey.revoked_at.is_(None)))
    if row is None:
        return None
    return Identity(Role.ADMIN if row.role == "admin" else Role.TENANT, tenant=row.tenant, key_id=row.id)


def create_key(session: Session, tenant: str, label: str, now: dt.datetime, role: str = "tenant") -> tuple[str, str]:
    """A new key for ``tenant``: returns (key id, secret); only the secret's hash is stored."""
    check_identifier(tenant, "tenant")  # as every tenant the router and the ledger accept
    check_name(label, "label")
    if role not in KEY_ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(KEY_ROLES)}, got {role!r}")
    key_id, secret = f"key_{secrets.token_hex(8)}", f"{KEY_PREFIX}{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=key_id, key_sha256=hash_key(secret), tenant=tenant, label=label, created_at=now,
                       role=role))
    return key_id, secret


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: never the secret nor its hash."""

    key_id: str
    tenant: str
    role: str
    label: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


def list_keys(session: Session, tenant: str = "", include_revoked: bool = False) -> list[KeyInfo]:
    """Keys, oldest first; only ``tenant``'s when set."""
    query = sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant:
        query = query.where(ApiKey.tenant == tenant)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [KeyInfo(r.id, r.tenant, r.role, r.label, r.created_at, r.revoked_at) for r in session.scalars(query)]


def rotate_key(session: Session, key_id: str, now: dt.datetime) -> tuple[str, str]:
    """Replace a live key by a new one of the same tenant, role and label, revoking the old one
    in the same transaction: (new key id, secret). For an overlap, create a key and revoke later."""
    row = session.get(ApiKey, key_id) if key_id else None
    if row is None or row.revoked_at is not None:
        raise NotFound(f"key_id: no live API key {key_id!r}")
    row.revoked_at = now
    return create_key(session, row.tenant, row.label, now, row.role)


def revoke_key(session: Session, key_id: str, now: dt.datetime) -> None:
    """Revoke a key (repeatable); NotFound for an unknown id."""
    if not key_id:
        raise InvalidArgument("key_id", "must not be empty")
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"key_id: no API key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = now
