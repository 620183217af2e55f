"""The router's key cache (router/auth.py) on a controlled clock: a verified key costs metering one
lookup per cache period, revocation is seen after at most that period, an unknown key is retried
after 2 s, concurrent first uses share one lookup, outages are never cached, the cache is bounded.
The stack-level tests (test_auth.py) show the same through real servers; here the clock is ours."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from xrouter.common.errors import PermissionDenied, Unauthenticated, Unavailable
from xrouter.common.metrics import TenantLabels
from xrouter.router.auth import Caller, RouterAuth, key_from_authorization


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Metering:
    """What metering answers for each key's SHA-256, and how often it was asked."""

    def __init__(self) -> None:
        self.keys: dict[str, Caller] = {}
        self.lookups = 0
        self.down = False
        self.delay = 0.0

    def issue(self, key: str, tenant: str, admin: bool = False) -> None:
        self.keys[hashlib.sha256(key.encode()).hexdigest()] = Caller(tenant, admin, f"id-{key}")

    def revoke(self, key: str) -> None:
        del self.keys[hashlib.sha256(key.encode()).hexdigest()]

    async def resolve(self, digest: str) -> Caller | None:
        self.lookups += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise Unavailable("metering: down")
        return self.keys.get(digest)


def make(cache_s: float = 30.0, max_entries: int = 100) -> tuple[RouterAuth, Metering, Clock]:
    metering, clock = Metering(), Clock()
    return RouterAuth(metering.resolve, "default", cache_s, max_entries, clock), metering, clock


async def test_a_verified_key_is_looked_up_once_per_cache_period_and_revocation_lands_after_it() -> None:
    auth, metering, clock = make(cache_s=30)
    metering.issue("k1", "acme")
    assert await auth.caller("k1") == Caller("acme", False, "id-k1")
    for _ in range(50):
        await auth.caller("k1")
    assert metering.lookups == 1
    metering.revoke("k1")
    clock.now += 29.9
    assert (await auth.caller("k1")).tenant == "acme"  # within the stated bound: still cached
    clock.now += 0.2
    with pytest.raises(Unauthenticated, match="unknown or revoked API key"):
        await auth.caller("k1")
    assert metering.lookups == 2


async def test_an_unknown_key_is_asked_again_after_two_seconds_even_with_a_long_cache() -> None:
    auth, metering, clock = make(cache_s=300)
    with pytest.raises(Unauthenticated):
        await auth.caller("k2")
    metering.issue("k2", "late")
    clock.now += 1.9
    with pytest.raises(Unauthenticated):
        await auth.caller("k2")
    clock.now += 0.2
    assert (await auth.caller("k2")).tenant == "late"
    assert metering.lookups == 2


async def test_concurrent_first_uses_share_one_lookup() -> None:
    auth, metering, _ = make()
    metering.issue("k3", "acme")
    metering.delay = 0.05
    callers = await asyncio.gather(*(auth.caller("k3") for _ in range(20)))
    assert {c.tenant for c in callers} == {"acme"} and metering.lookups == 1


async def test_a_caller_going_away_does_not_fail_the_others_waiting_on_its_lookup() -> None:
    auth, metering, _ = make()
    metering.issue("k5", "acme")
    metering.delay = 0.05
    first = asyncio.ensure_future(auth.caller("k5"))
    await asyncio.sleep(0.01)  # its lookup is in flight
    second = asyncio.ensure_future(auth.caller("k5"))
    await asyncio.sleep(0)
    first.cancel()  # e.g. its client disconnected
    assert (await second).tenant == "acme" and first.cancelled() and metering.lookups == 1


async def test_a_metering_outage_is_not_cached_and_reaches_every_waiter() -> None:
    auth, metering, _ = make()
    metering.issue("k4", "acme")
    metering.down, metering.delay = True, 0.02
    results = await asyncio.gather(*(auth.caller("k4") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results) and metering.lookups == 1
    metering.down = False
    assert (await auth.caller("k4")).tenant == "acme" and metering.lookups == 2


async def test_the_cache_stays_within_its_bound() -> None:
    auth, metering, _ = make(max_entries=10)
    for number in range(25):
        metering.issue(f"k{number}", f"t{number}")
        await auth.caller(f"k{number}")
    assert len(auth._cache) <= 10  # noqa: SLF001 - the bound is the point
    await auth.caller("k24")  # the newest is kept
    assert metering.lookups == 25


async def test_a_missing_key_says_how_to_send_one() -> None:
    auth, _, _ = make()
    for value in (None, "", "Basic abc", "Bearer", "Bearer   "):
        with pytest.raises(Unauthenticated, match="missing API key: send 'Authorization: Bearer <key>'"):
            await auth.caller(key_from_authorization(value))
    assert key_from_authorization("bearer  xrk_1 ") == "xrk_1"


def test_tenant_keys_bill_their_own_tenant_admins_may_name_one() -> None:
    auth, _, _ = make()
    tenant, admin, configured = Caller("acme", False, "k"), Caller("ops", True, "a"), Caller("", True, "configured-admin")
    assert auth.tenant_for(tenant, "") == "acme" and auth.tenant_for(tenant, "acme") == "acme"
    with pytest.raises(PermissionDenied, match="^tenant: this API key belongs to tenant 'acme' and may not act for 'x'$"):
        auth.tenant_for(tenant, "x")
    assert auth.tenant_for(admin, "") == "ops" and auth.tenant_for(admin, "x") == "x"
    assert auth.tenant_for(configured, "") == "default"
    with pytest.raises(PermissionDenied, match="LoadPolicy needs an admin key"):
        RouterAuth.require_admin(tenant, "LoadPolicy")
    RouterAuth.require_admin(admin, "LoadPolicy")


def test_tenant_labels_are_known_tenants_only_and_bounded() -> None:
    labels = TenantLabels(limit=2)
    assert labels.label("acme") == "other"
    for tenant in ("acme", "globex", "initech", ""):
        labels.admit(tenant)
    assert [labels.label(t) for t in ("acme", "globex", "initech", "")] == ["acme", "globex", "other", "other"]
