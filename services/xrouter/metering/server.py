"""The metering service's gRPC face: a thin servicer over :class:`StoreGuard` (the ledger, kept
durable across database outages), every call authenticated first; and the entry point."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import pathlib
import sys
from collections.abc import Callable
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common import grpc_server, settings, telemetry
from xrouter.common import metrics as common_metrics
from xrouter.common.errors import InvalidArgument, XRouterError
from xrouter.common.grpc_server import GrpcServer, Register
from xrouter.metering import metrics, migrate
from xrouter.metering.auth import Authenticator, Identity, Permission, Role
from xrouter.metering.admission import MemoryAdmission
from xrouter.metering.batching import GroupCommit, RecordBatcher
from xrouter.metering.catalog_models import CatalogModels, check_budget_model
from xrouter.metering.durability import StoreGuard, is_store_down
from xrouter.metering.ledger import CallRecord, FeedbackRecord, Ledger, Settlement, validate_score
from xrouter.metering.settings import MeteringSettings
from xrouter.metering.spool import Spool
from xrouter.metering.store import make_engine
from xrouter.metering.totals import BudgetTotals

log = logging.getLogger(__name__)
SERVICE = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
_PERIODS = {metering_pb2.BUDGET_PERIOD_DAY: "day", metering_pb2.BUDGET_PERIOD_MONTH: "month"}
_BUCKETS = {metering_pb2.TIME_BUCKET_HOUR: "hour", metering_pb2.TIME_BUCKET_DAY: "day",
            metering_pb2.TIME_BUCKET_MONTH: "month"}
_SOURCES = {metering_pb2.FEEDBACK_SOURCE_USER: "user", metering_pb2.FEEDBACK_SOURCE_REFERENCE: "reference"}
_STATES = {"new": metering_pb2.REQUEST_STATE_NEW, "in_flight": metering_pb2.REQUEST_STATE_IN_FLIGHT,
           "settled": metering_pb2.REQUEST_STATE_SETTLED, "abandoned": metering_pb2.REQUEST_STATE_ABANDONED}
T = TypeVar("T")
MAX_SETTLES_PER_CALL = 1000  # SettleMany; the router sends far fewer (its batches are bounded in bytes too)


def _status_name(value: int) -> str:
    """The CallStatus name; an unknown number stays a number, which the ledger rejects."""
    try:
        return common_pb2.CallStatus.Name(value)
    except ValueError:
        return str(value)


def _datetime(request: metering_pb2.GetUsageRequest, field: str) -> dt.datetime | None:
    """A Timestamp field as a UTC datetime (None: not set); out of range (years 1-9999, nanos in
    [0, 1e9)) is the caller's error, not a ValueError."""
    if not request.HasField(field):
        return None
    value = getattr(request, field)
    try:
        if not 0 <= value.nanos < 1_000_000_000:
            raise ValueError(f"nanos {value.nanos}")
        return value.ToDatetime(tzinfo=dt.timezone.utc)
    except (ValueError, OverflowError, OSError) as error:
        raise InvalidArgument(field, f"is not a time within years 1 to 9999 ({error})") from None


def _timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _model_usage(usage) -> metering_pb2.ModelUsage:  # type: ignore[no-untyped-def]
    return metering_pb2.ModelUsage(model=usage.model, calls=usage.calls, input_tokens=usage.input_tokens,
                                   output_tokens=usage.output_tokens, cost_micro_usd=usage.cost_micro_usd)


def _exploration(request: metering_pb2.SettleRequest) -> dict[str, object]:
    """Settlement's exploration fields (all None when the router did not explore)."""
    if not request.HasField("exploration"):
        return {}
    return {"exploration_epsilon": request.exploration.epsilon,
            "first_call_probability": request.exploration.first_call_probability,
            "first_call_explored": request.exploration.explored}


def _settlement(request: metering_pb2.SettleRequest) -> Settlement:
    """The ledger's settlement from a SettleRequest, validated: a bad one is refused alone, not
    with the batch it would have joined."""
    summary = Settlement(
        request_id=request.request_id, tenant=request.tenant, strategy=request.strategy,
        outcome=request.outcome, total_cost_micro_usd=request.total_cost_micro_usd, calls=request.calls,
        policy_version=request.policy_version, trace_id=request.trace_id,
        cost_lambda=request.cost_lambda if request.HasField("cost_lambda") else None,
        dataset=request.dataset, prompt_id=request.prompt_id,
        messages=tuple((m.role, m.content) for m in request.messages), response_json=request.response_json,
        returned_call_index=request.returned_call_index if request.HasField("returned_call_index") else None,
        call_records=tuple(_call_record(c, request.request_id, request.tenant) for c in request.call_records),
        **_exploration(request))
    summary.validate()
    return summary


async def _awaited(answer: asyncio.Future[T] | Exception) -> T:
    if isinstance(answer, Exception):
        raise answer
    return await answer


def _refusal(error: Exception) -> metering_pb2.SettleRefusal:
    """The status a lone Settle would have failed with (the interceptor's mapping)."""
    if isinstance(error, XRouterError):
        return metering_pb2.SettleRefusal(code=error.code.value[0], message=error.message)
    log.error("a settle inside SettleMany failed unexpectedly", exc_info=error)
    return metering_pb2.SettleRefusal(code=grpc.StatusCode.INTERNAL.value[0],
                                      message=f"internal error: {type(error).__name__}")


def _call_record(request: metering_pb2.RecordRequest, request_id: str = "", tenant: str = "") -> CallRecord:
    """The ledger's call from a RecordRequest; ``request_id`` and ``tenant`` fill empty ones (a call
    carried by a Settle)."""
    return CallRecord(
        request_id=request.request_id or request_id, call_index=request.call_index, tenant=request.tenant or tenant,
        model=request.model, input_tokens=request.input_tokens, output_tokens=request.output_tokens,
        cost_micro_usd=request.cost_micro_usd, latency_ms=request.latency_ms, status=_status_name(request.status),
        policy_version=request.policy_version, trace_id=request.trace_id, role=request.role or "tool")


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    """Authenticate, authorize, then proto → ledger → proto. Ledger calls block on the database, so
    they run in worker threads; domain errors propagate to the DomainErrorInterceptor."""

    def __init__(self, guard: StoreGuard, authenticator: Authenticator,
                 models: Callable[[], frozenset[str]] | None = None) -> None:
        self._guard = guard
        self._models = models  # the catalog's model ids a budget may name (None: any name)
        self._ledger = guard.ledger
        self._auth = authenticator
        self._records = RecordBatcher(guard)
        self._settles: GroupCommit[Settlement, tuple[bool, int]] = GroupCommit(guard.settle_many, metrics.SETTLE_BATCH)
        self._scores: GroupCommit[tuple[str, str, float, float], bool] = GroupCommit(
            guard.record_score_many, metrics.SCORE_BATCH)
        # Memory mode (guard.totals set): budgets from running totals; else the database path.
        self._admission = MemoryAdmission(guard) if guard.totals is not None else None

    async def _caller(self, context: grpc.aio.ServicerContext, permission: Permission | None) -> Identity:
        metadata = context.invocation_metadata() or ()
        identity = self._auth.identify_without_lookup(metadata)
        if identity is None:  # a tenant key: look it up in the ledger
            identity = await asyncio.to_thread(self._auth.identify, metadata)
        if permission is not None:
            identity.require(permission)
        return identity

    async def _db(self, method: Callable[..., T], *args: object) -> T:
        return await asyncio.to_thread(self._guard.call, method, *args)

    async def Authorize(self, request: metering_pb2.AuthorizeRequest,
                        context: grpc.aio.ServicerContext) -> metering_pb2.AuthorizeResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        if self._admission is not None:
            granted = await self._admission.authorize(request.request_id, request.tenant,
                                                      request.estimate_micro_usd, list(request.models),
                                                      generated=request.generated_request_id)
        else:
            granted = await self._db(self._ledger.authorize, request.request_id, request.tenant,
                                     request.estimate_micro_usd, list(request.models))
        if granted.soft_limit_exceeded:
            metrics.SOFT_LIMIT_EXCEEDED.labels(common_metrics.TENANT_LABELS.label(request.tenant)).inc()
        return metering_pb2.AuthorizeResponse(
            reservation_id=granted.reservation_id, remaining_micro_usd=granted.remaining_micro_usd,
            soft_limit_exceeded=granted.soft_limit_exceeded, warnings=list(granted.warnings),
            expires_at=_timestamp(granted.expires_at), state=_STATES[granted.state],
            response_json=granted.response_json)

    async def Record(self, request: metering_pb2.RecordRequest,
                     context: grpc.aio.ServicerContext) -> metering_pb2.RecordResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        duplicate, spooled = await self._records.record(_call_record(request))
        return metering_pb2.RecordResponse(duplicate=duplicate, spooled=spooled)

    async def Settle(self, request: metering_pb2.SettleRequest,
                     context: grpc.aio.ServicerContext) -> metering_pb2.SettleResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        spooled, recorded = await self._settles.submit(_settlement(request))
        return metering_pb2.SettleResponse(spooled=spooled, recorded_calls=recorded)

    async def SettleMany(self, request: metering_pb2.SettleManyRequest,
                         context: grpc.aio.ServicerContext) -> metering_pb2.SettleManyResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        if len(request.settles) > MAX_SETTLES_PER_CALL:
            raise InvalidArgument("settles", f"at most {MAX_SETTLES_PER_CALL} per call, got {len(request.settles)}")
        # Each settle is queued for the group commit as its own write (no task per settle): they
        # share the next transaction, and each gets its own answer or its own refusal.
        answers: list[asyncio.Future[tuple[bool, int]] | Exception] = []
        for settle in request.settles:
            try:
                answers.append(self._settles.enqueue(_settlement(settle)))
            except XRouterError as refusal:  # a bad settlement is refused alone
                answers.append(refusal)
        outcomes = []
        for answer in answers:
            try:
                spooled, recorded = await _awaited(answer)
            except Exception as refusal:  # noqa: BLE001 - this settle's own answer, the others go on
                outcomes.append(metering_pb2.SettleOutcome(refused=_refusal(refusal)))
                continue
            outcomes.append(metering_pb2.SettleOutcome(
                settled=metering_pb2.SettleResponse(spooled=spooled, recorded_calls=recorded)))
        return metering_pb2.SettleManyResponse(outcomes=outcomes)

    async def RecordScore(self, request: metering_pb2.RecordScoreRequest,
                          context: grpc.aio.ServicerContext) -> metering_pb2.RecordScoreResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        validate_score(request.request_id, request.tenant, request.score, request.reward)  # alone, not with its batch
        await self._scores.submit((request.request_id, request.tenant, request.score, request.reward))
        return metering_pb2.RecordScoreResponse()

    async def RecordFeedback(self, request: metering_pb2.RecordFeedbackRequest,
                             context: grpc.aio.ServicerContext) -> metering_pb2.RecordFeedbackResponse:
        await self._caller(context, Permission.WRITE_LEDGER)
        source = _SOURCES.get(request.source)
        if source is None:
            raise InvalidArgument("source", "must be FEEDBACK_SOURCE_USER or FEEDBACK_SOURCE_REFERENCE")
        # Not spooled: a verdict needs its settled request to check against, and the caller can retry.
        duplicate, score = await self._db(self._ledger.record_feedback, FeedbackRecord(
            request.request_id, request.tenant, request.score, source, request.comment))
        return metering_pb2.RecordFeedbackResponse(duplicate=duplicate, score=score)

    async def GetUsage(self, request: metering_pb2.GetUsageRequest,
                       context: grpc.aio.ServicerContext) -> metering_pb2.GetUsageResponse:
        tenant = (await self._caller(context, None)).usage_tenant(request.tenant)
        start = _datetime(request, "start")
        end = _datetime(request, "end")
        if request.bucket not in _BUCKETS and request.bucket != metering_pb2.TIME_BUCKET_UNSPECIFIED:
            raise InvalidArgument("bucket", f"unknown TimeBucket {request.bucket}")
        usage = await self._db(self._ledger.usage, tenant, start, end, request.model,
                                 _BUCKETS.get(request.bucket))
        return metering_pb2.GetUsageResponse(
            tenant=usage.tenant, total_cost_micro_usd=usage.total_cost_micro_usd, requests=usage.requests,
            models=[_model_usage(m) for m in usage.models],
            buckets=[metering_pb2.UsageBucket(start=_timestamp(b.start), usage=_model_usage(b.usage))
                     for b in usage.buckets])

    async def SetBudget(self, request: metering_pb2.SetBudgetRequest,
                        context: grpc.aio.ServicerContext) -> metering_pb2.SetBudgetResponse:
        await self._caller(context, Permission.SET_BUDGETS)
        period = _PERIODS.get(request.period)
        if period is None:
            raise InvalidArgument("period", "must be BUDGET_PERIOD_DAY or BUDGET_PERIOD_MONTH")
        if request.limit_micro_usd < -1:
            raise InvalidArgument("limit_micro_usd", f"must be >= 0, or -1 for no hard limit, got "
                                  f"{request.limit_micro_usd}")
        hard = None if request.limit_micro_usd == -1 else request.limit_micro_usd
        soft = request.soft_limit_micro_usd if request.HasField("soft_limit_micro_usd") else None
        if self._models is not None and request.model:
            known = await asyncio.to_thread(self._models)
            check_budget_model(request.model, known, removing=hard is None and soft is None)
        await self._db(self._ledger.set_budget, request.tenant, period, hard, soft, request.model)
        if self._guard.totals is not None:
            self._guard.totals.set_budget(request.tenant, period, hard, soft, request.model)
        return metering_pb2.SetBudgetResponse()

    async def CreateApiKey(self, request: metering_pb2.CreateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> metering_pb2.CreateApiKeyResponse:
        await self._caller(context, Permission.MANAGE_KEYS)
        role = "admin" if request.admin else "tenant"
        key_id, secret = await self._db(self._ledger.create_api_key, request.tenant, request.label, role)
        log.info("API key %s (%s) issued for tenant %s", key_id, role, request.tenant)
        return metering_pb2.CreateApiKeyResponse(key_id=key_id, api_key=secret)

    async def RevokeApiKey(self, request: metering_pb2.RevokeApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> metering_pb2.RevokeApiKeyResponse:
        await self._caller(context, Permission.MANAGE_KEYS)
        await self._db(self._ledger.revoke_api_key, request.key_id)
        log.info("API key %s revoked", request.key_id)
        return metering_pb2.RevokeApiKeyResponse()

    async def Authenticate(self, request: metering_pb2.AuthenticateRequest,
                           context: grpc.aio.ServicerContext) -> metering_pb2.AuthenticateResponse:
        await self._caller(context, Permission.VERIFY_KEYS)
        identity = await asyncio.to_thread(self._auth.resolve, request.key_sha256)
        if identity is None:  # an answer, not an error: UNAUTHENTICATED here means the router's own key
            return metering_pb2.AuthenticateResponse()
        if identity.role is Role.TENANT:
            common_metrics.TENANT_LABELS.admit(identity.tenant)  # a tenant with a key: worth a label
        return metering_pb2.AuthenticateResponse(tenant=identity.tenant, admin=identity.role is Role.ADMIN,
                                                 key_id=identity.key_id)


def register(ledger: Ledger, authenticator: Authenticator | None = None, guard: StoreGuard | None = None,
             models: Callable[[], frozenset[str]] | None = None) -> Register:
    """How to add the metering servicer to a server; the callback returns the service names.
    Defaults: no authentication (loopback embedded use), no spool, and budgets on any model name
    (``models``: the catalog's model ids, read when a budget is set)."""
    guard = guard or StoreGuard(ledger, None)
    authenticator = authenticator or Authenticator.off(lambda digest: guard.call(ledger.find_tenant_key, digest))

    def add(server: grpc.aio.Server) -> list[str]:
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(guard, authenticator, models), server)
        return [SERVICE]
    return add


def authenticator_for(config: MeteringSettings, guard: StoreGuard) -> Authenticator:
    """The settings' authenticator; tenant keys are looked up through ``guard`` (fails closed)."""
    service, admin = config.key_hashes()
    return Authenticator(config.auth == "required", service, admin,
                         lambda digest: guard.call(guard.ledger.find_tenant_key, digest))


async def serve(config: MeteringSettings) -> None:
    """Run the service until SIGTERM/SIGINT, then drain for ``grace_s`` seconds and close.
    Raises :class:`migrate.SchemaError` when the database is not at this version's schema."""
    engine = make_engine(config.database_url)
    ledger = Ledger(engine, config.reservation_ttl_s)
    spool = Spool(pathlib.Path(config.spool_dir), config.spool_max_entries) if config.spool_dir else None
    try:
        await asyncio.to_thread(migrate.prepare, engine)
        guard = StoreGuard(ledger, spool, BudgetTotals() if config.budgets == "memory" else None)
        # Replays what a previous run left in the spool, then loads the budget totals (memory mode).
        serving = await asyncio.to_thread(guard.check)
        provider = telemetry.tracer_provider("xrouter-metering")
        models = CatalogModels(config.catalog) if config.catalog else None
        server = GrpcServer("metering", register(ledger, authenticator_for(config, guard), guard, models), provider,
                            host=config.host, port=config.port, tls=config.tls(), health_port=config.health_port)
        if config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(config.metrics_port, addr=config.host)
        await server.start()
        if not serving:
            await server.set_serving(False)
        watch = asyncio.create_task(guard.watch(server.set_serving, config.health_interval_s))
        sig = await grpc_server.wait_for_shutdown_signal()
        log.info("metering: %s received, draining for up to %.1fs", sig.name, config.grace_s)
        watch.cancel()
        await server.stop(config.grace_s)
        provider.shutdown()
    finally:
        if spool is not None:
            spool.close()
        engine.dispose()


def main() -> None:
    """``xrouter-metering``: run the service until SIGTERM; bad settings or schema exit with status 2,
    an unreachable database at start-up with status 1."""
    grpc_server.configure_logging()
    try:
        config = settings.load(MeteringSettings)
    except settings.SettingsError as error:
        print(f"xrouter-metering: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        grpc_server.run("metering", lambda: serve(config))
    except migrate.SchemaError as error:
        print(f"xrouter-metering: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        if not is_store_down(error):
            raise
        # At start-up there is no spool replay to wait for: exit, and let the supervisor retry.
        print(f"xrouter-metering: cannot reach the ledger database ({type(error).__name__}): "
              f"{str(error).strip().splitlines()[0]}", file=sys.stderr)
        sys.exit(1)
