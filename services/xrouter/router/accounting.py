"""How the router writes a request's calls to metering: every attempted call's Record at once."""

from __future__ import annotations

import asyncio

from xrouter.common import metrics
from xrouter.router.policy import CallOutcome
from xrouter.router.ports import Meter


def metrics_for_costs(calls: list[CallOutcome], tenant: str) -> None:
    """Count the dollar cost of the calls that answered, by model and tenant."""
    for call in calls:
        if call.ok:
            metrics.COST.labels(call.model, metrics.TENANT_LABELS.label(tenant)).inc(call.cost_micro_usd / 1e6)


async def record_all(meter: Meter, request_id: str, tenant: str, calls: list[CallOutcome], policy_version: str,
                     trace_id: str, timeout: float) -> None:
    """Record every call concurrently (each is idempotent on request id + call index, so none waits
    for another): one round trip's wait for all of them, and metering commits them together. Every
    Record is attempted even when one fails; then the first failure is raised (Settle must not follow)."""
    outcomes = await asyncio.gather(*(meter.record(request_id, tenant, call, policy_version, trace_id, timeout)
                                      for call in calls), return_exceptions=True)
    failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failure is not None:
        raise failure
