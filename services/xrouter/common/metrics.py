"""Prometheus metrics shared by the services (one registry per process, labelled by service)."""

from __future__ import annotations

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
