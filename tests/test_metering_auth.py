"""Caller identity and tenant isolation through a real gRPC server with XROUTER_METERING_AUTH=required:
a tenant reads only its own usage and cannot change a budget or write spend; only an admin sets
budgets and issues keys; the router's service key writes the ledger for any tenant; keys are
stored hashed."""

from __future__ import annotations

import hashlib

import grpc
import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import PermissionDenied, Unauthenticated
from xrouter.common.grpc_server import GrpcServer
from xrouter.common.settings import SettingsError, load
from xrouter.metering import server as metering_server
from xrouter.metering.auth import Authenticator, hash_key
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import Ledger
from xrouter.metering.settings import MeteringSettings
from xrouter.metering.store import make_engine
from xrouter.router.clients import MeteringClient
from xrouter.router.policy import CallOutcome, CallStatus

SERVICE_KEY = "router-service-key-0123456789abcdef"
ADMIN_KEY = "admin-key-fedcba9876543210"
DAY = metering_pb2.BUDGET_PERIOD_DAY


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture()
def ledger(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    ledger = Ledger(engine, 60.0)
    ledger.create_schema()
    yield ledger
    engine.dispose()


@pytest.fixture()
async def served(ledger: Ledger):  # type: ignore[no-untyped-def]
    """The service with auth required, configured the way serve() does it from settings."""
    config = load(MeteringSettings, {
        "XROUTER_METERING_DATABASE_URL": "sqlite:///unused.db", "XROUTER_METERING_AUTH": "required",
        "XROUTER_METERING_SERVICE_KEY_SHA256": f"{'0' * 64},{hash_key(SERVICE_KEY)}",  # two: rotation
        "XROUTER_METERING_ADMIN_KEY_SHA256": hash_key(ADMIN_KEY).upper()})
    guard = StoreGuard(ledger, None)
    server = GrpcServer("metering", metering_server.register(
        ledger, metering_server.authenticator_for(config, guard), guard), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield metering_pb2_grpc.MeteringServiceStub(channel), channel
    await channel.close()
    await server.stop(0)


def record(tenant: str, request_id: str, cost: int = 1_000) -> metering_pb2.RecordRequest:
    return metering_pb2.RecordRequest(request_id=request_id, call_index=0, tenant=tenant, model="gpt-4o",
                                      cost_micro_usd=cost, status=common_pb2.CALL_STATUS_OK)


async def refused(rpc, request, key: str | None) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rpc(request, metadata=bearer(key) if key else None)
    return caught.value


async def issue_key(stub, tenant: str) -> str:  # type: ignore[no-untyped-def]
    reply = await stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(tenant=tenant, label="ci"),
                                    metadata=bearer(ADMIN_KEY))
    assert reply.key_id.startswith("key_") and reply.api_key.startswith("xrk_")
    return reply.api_key


async def test_a_tenant_reads_only_its_own_usage(served) -> None:  # type: ignore[no-untyped-def]
    stub, _ = served
    for tenant, cost in (("acme", 1_000), ("globex", 7_000)):
        await stub.Record(record(tenant, f"{tenant}-1", cost), metadata=bearer(SERVICE_KEY))
    acme_key = await issue_key(stub, "acme")

    own = await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="acme"), metadata=bearer(acme_key))
    assert (own.tenant, own.total_cost_micro_usd) == ("acme", 1_000)
    implicit = await stub.GetUsage(metering_pb2.GetUsageRequest(), metadata=bearer(acme_key))
    assert (implicit.tenant, implicit.total_cost_micro_usd) == ("acme", 1_000)  # empty tenant: its own

    error = await refused(stub.GetUsage, metering_pb2.GetUsageRequest(tenant="globex"), acme_key)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not read the usage of another tenant" in error.details() and "7" not in error.details()

    # The service and admin identities read any tenant's usage.
    for key in (SERVICE_KEY, ADMIN_KEY):
        other = await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="globex"), metadata=bearer(key))
        assert other.total_cost_micro_usd == 7_000


async def test_a_tenant_cannot_change_a_budget_or_write_spend(served, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    stub, _ = served
    acme_key = await issue_key(stub, "acme")
    budget = metering_pb2.SetBudgetRequest(tenant="acme", period=DAY, limit_micro_usd=1)
    attempts = [
        (stub.SetBudget, budget, "set budgets"),
        (stub.SetBudget, metering_pb2.SetBudgetRequest(tenant="globex", period=DAY, limit_micro_usd=1), "set budgets"),
        (stub.Record, record("acme", "self-billed"), "write the ledger"),
        (stub.Authorize, metering_pb2.AuthorizeRequest(request_id="r", tenant="acme"), "write the ledger"),
        (stub.Settle, metering_pb2.SettleRequest(request_id="r", tenant="acme"), "write the ledger"),
        (stub.RecordScore, metering_pb2.RecordScoreRequest(request_id="r", tenant="acme"), "write the ledger"),
        # Verdicts come through the router's faces, which authenticate the user: never straight from a tenant.
        (stub.RecordFeedback, metering_pb2.RecordFeedbackRequest(request_id="r", tenant="acme", score=1.0,
                                                                 source=metering_pb2.FEEDBACK_SOURCE_USER),
         "write the ledger"),
        (stub.CreateApiKey, metering_pb2.CreateApiKeyRequest(tenant="globex"), "manage API keys"),
    ]
    for rpc, request, right in attempts:
        error = await refused(rpc, request, acme_key)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, rpc
        assert error.details() == f"tenant acme's key may not {right}"
    with ledger.engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from budgets")).scalar_one() == 0
        assert connection.execute(sa.text("select count(*) from ledger_calls")).scalar_one() == 0
        assert connection.execute(sa.text("select count(*) from reservations")).scalar_one() == 0


async def test_only_the_admin_sets_budgets_and_only_the_service_writes_spend(served, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    stub, _ = served
    budget = metering_pb2.SetBudgetRequest(tenant="acme", period=DAY, limit_micro_usd=5_000)
    error = await refused(stub.SetBudget, budget, SERVICE_KEY)
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                               "the service identity may not set budgets")
    await stub.SetBudget(budget, metadata=bearer(ADMIN_KEY))

    error = await refused(stub.Record, record("acme", "r1"), ADMIN_KEY)
    assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                               "the admin identity may not write the ledger")
    # The router's service identity acts for any tenant, within that tenant's budget.
    await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="r1", tenant="acme", estimate_micro_usd=5_000),
                         metadata=bearer(SERVICE_KEY))
    error = await refused(stub.Authorize, metering_pb2.AuthorizeRequest(
        request_id="r2", tenant="acme", estimate_micro_usd=1), SERVICE_KEY)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ledger.usage("acme").total_cost_micro_usd == 0


async def test_missing_unknown_and_revoked_keys_are_unauthenticated(served) -> None:  # type: ignore[no-untyped-def]
    stub, channel = served
    request = metering_pb2.GetUsageRequest(tenant="acme")
    for metadata in (None, bearer("not-a-key"), (("authorization", "Basic abc"),), bearer("")):
        error = await refused(stub.GetUsage, request, None) if metadata is None else None
        if metadata is not None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetUsage(request, metadata=metadata)
            error = caught.value
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
    created = await stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(tenant="acme"), metadata=bearer(ADMIN_KEY))
    await stub.GetUsage(request, metadata=(("x-api-key", created.api_key),))  # the other header works too
    await stub.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=created.key_id), metadata=bearer(ADMIN_KEY))
    error = await refused(stub.GetUsage, request, created.api_key)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
    error = await refused(stub.RevokeApiKey, metering_pb2.RevokeApiKeyRequest(key_id="key_nope"), ADMIN_KEY)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Health stays open to probes without a key.
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_keys_are_stored_only_as_sha256(served, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    stub, _ = served
    secret = await issue_key(stub, "acme")
    with ledger.engine.connect() as connection:
        rows = [tuple(r) for r in connection.execute(sa.text("select * from api_keys"))]
    assert len(rows) == 1
    assert not any(secret in str(value) for value in rows[0])
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]


async def test_the_router_client_sends_its_service_key(served) -> None:  # type: ignore[no-untyped-def]
    stub, channel = served
    outcome = CallOutcome(0, 0, "gpt-4o", "", 0.0, CallStatus.OK, attempted=True)
    outcome.cost_micro_usd = 2_500
    router = MeteringClient(channel, api_key=SERVICE_KEY)
    await router.authorize("req-9", "acme", 10_000, timeout=5, models=["gpt-4o"])
    await router.record("req-9", "acme", outcome, "p1", "t" * 32, timeout=5)
    await router.settle("req-9", "acme", "single", "ok", 2_500, 1, timeout=5, cost_lambda=1.0)
    await router.record_score("req-9", "acme", 1.0, 0.99, timeout=5)
    usage = await stub.GetUsage(metering_pb2.GetUsageRequest(tenant="acme"), metadata=bearer(ADMIN_KEY))
    assert usage.total_cost_micro_usd == 2_500
    with pytest.raises(Unauthenticated, match="missing API key"):
        await MeteringClient(channel).record("req-9", "acme", outcome, "p1", "", timeout=5)
    with pytest.raises(PermissionDenied, match="the admin identity may not write the ledger"):
        await MeteringClient(channel, api_key=ADMIN_KEY).record("req-9", "acme", outcome, "p1", "", timeout=5)


def test_authenticator_off_trusts_every_caller() -> None:
    identity = Authenticator.off().identify(())
    identity.usage_tenant("anyone")


# --- settings -----------------------------------------------------------------------------------

BASE = {"XROUTER_METERING_DATABASE_URL": "sqlite:///x.db"}


@pytest.mark.parametrize("changes, message", [
    ({"XROUTER_METERING_HOST": "0.0.0.0"}, "XROUTER_METERING_AUTH=off is allowed only on a loopback address"),
    ({"XROUTER_METERING_AUTH": "maybe"}, "XROUTER_METERING_AUTH must be 'off' or 'required', got 'maybe'"),
    ({"XROUTER_METERING_AUTH": "required"}, "XROUTER_METERING_AUTH=required needs XROUTER_METERING_SERVICE_KEY_SHA256"),
    ({"XROUTER_METERING_AUTH": "required", "XROUTER_METERING_SERVICE_KEY_SHA256": "secret-in-clear"},
     "XROUTER_METERING_SERVICE_KEY_SHA256 must be comma-separated SHA-256 hex digests"),
    ({"XROUTER_METERING_ADMIN_KEY_SHA256": "ab" * 31}, "XROUTER_METERING_ADMIN_KEY_SHA256 must be"),
    ({"XROUTER_METERING_SPOOL_MAX_ENTRIES": "0"}, "XROUTER_METERING_SPOOL_MAX_ENTRIES must be > 0, got '0'"),
    ({"XROUTER_METERING_HEALTH_INTERVAL_S": "0"}, "XROUTER_METERING_HEALTH_INTERVAL_S must be > 0, got '0'"),
])
def test_settings_refuse_unsafe_or_malformed_auth(changes: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load(MeteringSettings, {**BASE, **changes})
    assert "secret-in-clear" not in str(caught.value)


def test_settings_accept_a_cluster_configuration() -> None:
    config = load(MeteringSettings, {**BASE, "XROUTER_METERING_HOST": "0.0.0.0", "XROUTER_METERING_AUTH": "required",
                                     "XROUTER_METERING_SERVICE_KEY_SHA256": hash_key(SERVICE_KEY)})
    assert config.key_hashes() == (frozenset({hash_key(SERVICE_KEY)}), frozenset())
