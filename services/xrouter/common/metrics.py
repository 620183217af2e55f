"""Prometheus metrics shared by the services (one registry per process, labelled by service)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Histogram

RPC_REQUESTS = Counter(
    "xrouter_rpc_requests", "gRPC requests handled, by method and status code",
    ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "xrouter_rpc_latency_seconds", "gRPC request latency, by method",
    ["service", "method"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
ROUTING_OVERHEAD = Histogram(
    "xrouter_routing_overhead_seconds", "Router time per request excluding model calls",
    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))
COST = Counter("xrouter_cost_usd", "Dollar cost of model calls, by model and tenant", ["model", "tenant"])
MODEL_CALL_ERRORS = Counter(
    "xrouter_model_call_errors", "Model calls that did not succeed, by model and status", ["model", "status"])
# Every model call with its outcome (OK included): the denominator of the per-model error rate.
MODEL_CALLS = Counter(
    "xrouter_model_calls", "Model calls made by the router, by model and status", ["model", "status"])
# Which policy served each request: shows a hot swap (and a rollback) on the dashboard.
POLICY_REQUESTS = Counter(
    "xrouter_policy_requests", "Routed requests, by the kind and version of the policy that served them",
    ["kind", "version"])

# Router-made request ids admitted without an Authorize round trip (router/unbudgeted.py).
ADMITTED_WITHOUT_AUTHORIZE = Counter(
    "xrouter_admitted_without_authorize",
    "Requests admitted without asking metering: the tenant had no hard budget on the pool a moment ago")

# How many requests' settlements each metering round trip carried (router/settle_coalescing.py).
SETTLES_PER_CALL = Histogram(
    "xrouter_settles_per_metering_call", "Settlements sent to metering per round trip (Settle or SettleMany)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


class TenantLabels:
    """Bounds the tenant label's values: a tenant gets its own series only once a key of its own
    has been verified (tenants come from keys an admin issued), and at most ``limit`` of them;
    every other value (an admin acting for an arbitrary name, overflow) is folded into "other".
    Without this, anyone who can name a tenant can grow Prometheus' series without bound."""

    OTHER = "other"

    def __init__(self, limit: int = 500) -> None:
        self._limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()  # metering admits from worker threads

    def admit(self, tenant: str) -> None:
        """Mark ``tenant`` as known (its key was verified), while there is room."""
        with self._lock:
            if tenant and len(self._known) < self._limit:
                self._known.add(tenant)

    def label(self, tenant: str) -> str:
        """``tenant`` when known, else "other"."""
        return tenant if tenant in self._known else self.OTHER


# One per process, like the metrics it bounds.
TENANT_LABELS = TenantLabels()
# Requests an admin key made for a tenant it named (the audit trail beside the log line).
ADMIN_ACTING = Counter(
    "xrouter_admin_acting_for_tenant", "Requests an admin key made on behalf of a tenant it named, by key id",
    ["key_id"])
