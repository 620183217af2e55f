"""The metering service's gRPC face: a thin servicer over :class:`Ledger`, and the entry point."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections.abc import Awaitable, Callable

import grpc
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common import grpc_server, settings
from xrouter.common.errors import InvalidArgument
from xrouter.common.grpc_server import Build, Register
from xrouter.metering.ledger import CallRecord, Ledger
from xrouter.metering.settings import MeteringSettings
from xrouter.metering.store import make_engine

SERVICE = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
_PERIODS = {metering_pb2.BUDGET_PERIOD_DAY: "day", metering_pb2.BUDGET_PERIOD_MONTH: "month"}


def _status_name(value: int) -> str:
    """The CallStatus name; an unknown number stays a number, which the ledger rejects."""
    try:
        return common_pb2.CallStatus.Name(value)
    except ValueError:
        return str(value)


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    """proto → ledger → proto. Ledger calls block on the database, so they run in worker threads;
    domain errors propagate to the DomainErrorInterceptor."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    async def Authorize(self, request: metering_pb2.AuthorizeRequest,
                        context: grpc.aio.ServicerContext) -> metering_pb2.AuthorizeResponse:
        granted = await asyncio.to_thread(
            self._ledger.authorize, request.request_id, request.tenant, request.estimate_micro_usd)
        return metering_pb2.AuthorizeResponse(reservation_id=granted.reservation_id,
                                              remaining_micro_usd=granted.remaining_micro_usd)

    async def Record(self, request: metering_pb2.RecordRequest,
                     context: grpc.aio.ServicerContext) -> metering_pb2.RecordResponse:
        call = CallRecord(
            request_id=request.request_id, call_index=request.call_index, tenant=request.tenant,
            model=request.model, input_tokens=request.input_tokens, output_tokens=request.output_tokens,
            cost_micro_usd=request.cost_micro_usd, latency_ms=request.latency_ms,
            status=_status_name(request.status), policy_version=request.policy_version,
            trace_id=request.trace_id)
        duplicate = await asyncio.to_thread(self._ledger.record, call)
        return metering_pb2.RecordResponse(duplicate=duplicate)

    async def Settle(self, request: metering_pb2.SettleRequest,
                     context: grpc.aio.ServicerContext) -> metering_pb2.SettleResponse:
        await asyncio.to_thread(
            self._ledger.settle, request.request_id, request.tenant, request.strategy, request.outcome,
            request.total_cost_micro_usd, request.calls)
        return metering_pb2.SettleResponse()

    async def GetUsage(self, request: metering_pb2.GetUsageRequest,
                       context: grpc.aio.ServicerContext) -> metering_pb2.GetUsageResponse:
        start = request.start.ToDatetime(tzinfo=dt.timezone.utc) if request.HasField("start") else None
        end = request.end.ToDatetime(tzinfo=dt.timezone.utc) if request.HasField("end") else None
        usage = await asyncio.to_thread(self._ledger.usage, request.tenant, start, end)
        return metering_pb2.GetUsageResponse(
            tenant=usage.tenant, total_cost_micro_usd=usage.total_cost_micro_usd, requests=usage.requests,
            models=[metering_pb2.ModelUsage(
                model=m.model, calls=m.calls, input_tokens=m.input_tokens, output_tokens=m.output_tokens,
                cost_micro_usd=m.cost_micro_usd) for m in usage.models])

    async def SetBudget(self, request: metering_pb2.SetBudgetRequest,
                        context: grpc.aio.ServicerContext) -> metering_pb2.SetBudgetResponse:
        period = _PERIODS.get(request.period)
        if period is None:
            raise InvalidArgument("period", "must be BUDGET_PERIOD_DAY or BUDGET_PERIOD_MONTH")
        await asyncio.to_thread(self._ledger.set_budget, request.tenant, period, request.limit_micro_usd)
        return metering_pb2.SetBudgetResponse()


def register(ledger: Ledger) -> Register:
    """How to add the metering servicer to a server; the callback returns the service names."""
    def add(server: grpc.aio.Server) -> list[str]:
        metering_pb2_grpc.add_MeteringServiceServicer_to_server(MeteringServicer(ledger), server)
        return [SERVICE]
    return add


def build(config: MeteringSettings) -> Build:
    """The service's :data:`Build`: open the database, create missing tables, close on shutdown."""
    async def build_service(provider: TracerProvider) -> tuple[Register, Callable[[], Awaitable[None]]]:
        engine = make_engine(config.database_url)
        ledger = Ledger(engine, config.reservation_ttl_s)
        await asyncio.to_thread(ledger.create_schema)

        async def close() -> None:
            engine.dispose()

        return register(ledger), close
    return build_service


def main() -> None:
    """``xrouter-metering``: run the service until SIGTERM; bad settings exit with status 2."""
    grpc_server.configure_logging()
    try:
        config = settings.load(MeteringSettings)
    except settings.SettingsError as error:
        print(f"xrouter-metering: {error}", file=sys.stderr)
        sys.exit(2)
    asyncio.run(grpc_server.run_service(
        "metering", build(config), host=config.host, port=config.port, grace=config.grace_s,
        metrics_port=config.metrics_port))
