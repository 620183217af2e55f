"""Prometheus metrics of the adapters: every call accounted by model and status, failed ones too.

Kept beside the adapters (not in common/metrics.py) because only this service produces them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

if TYPE_CHECKING:
    from xrouter.adapters.core import Invocation

CALLS = Counter("xrouter_adapter_calls", "Model calls made by the adapters, by model and status",
                ["model", "status"])
ATTEMPTS = Counter("xrouter_adapter_attempts", "Backend attempts (retries included), by model", ["model"])
TOKENS = Counter("xrouter_adapter_tokens", "Tokens consumed by model calls, by model and direction",
                 ["model", "direction"])
COST_MICRO_USD = Counter("xrouter_adapter_cost_micro_usd", "Cost of model calls in micro-dollars, by model",
                         ["model"])
LATENCY = Histogram("xrouter_adapter_call_latency_seconds", "Model call latency, by model and status",
                    ["model", "status"],
                    buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))


def observe_call(call: Invocation) -> None:
    """Count one accounted call (the core's default ``on_call``)."""
    CALLS.labels(call.model, call.status).inc()
    ATTEMPTS.labels(call.model).inc(call.attempts)
    TOKENS.labels(call.model, "input").inc(call.input_tokens)
    TOKENS.labels(call.model, "output").inc(call.output_tokens)
    COST_MICRO_USD.labels(call.model).inc(call.cost_micro_usd)
    LATENCY.labels(call.model, call.status).observe(call.latency_ms / 1000)
