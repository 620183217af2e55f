"""How the router writes a request's calls to metering: carried by its Settle (one round trip, one
transaction), or, for a metering that predates that, every attempted call's Record at once."""

from __future__ import annotations

import asyncio
import logging

from xrouter.common import metrics
from xrouter.router.policy import CallOutcome
from xrouter.router.ports import Meter

log = logging.getLogger(__name__)


def metrics_for_costs(calls: list[CallOutcome], tenant: str) -> None:
    """Count the dollar cost of the calls that answered, by model and tenant."""
    for call in calls:
        if call.ok:
            metrics.COST.labels(call.model, metrics.TENANT_LABELS.label(tenant)).inc(call.cost_micro_usd / 1e6)


async def settle_with_calls(meter: Meter, request_id: str, tenant: str, made: list[CallOutcome],
                            call_policy_version: str, trace_id: str, timeout: float, **summary: object) -> None:
    """Settle the request carrying the calls it ``made`` (``summary``: Settle's other fields):
    metering writes both in one transaction. A metering
    older than Settle's call_records ignores them and says it holds none: the calls then go as
    Records and the request is settled again (Settle is repeatable), so no made call is unbilled."""
    held = await meter.settle(request_id, tenant, timeout=timeout, trace_id=trace_id, call_records=made,
                              call_policy_version=call_policy_version, **summary)  # type: ignore[arg-type]
    if len(made) <= held:
        return
    log.warning("metering ignored the calls carried by Settle (an older version?): recording request %s's "
                "%d calls one Record each", request_id, len(made))
    await record_all(meter, request_id, tenant, made, call_policy_version, trace_id, timeout)
    await meter.settle(request_id, tenant, timeout=timeout, trace_id=trace_id, **summary)  # type: ignore[arg-type]


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
