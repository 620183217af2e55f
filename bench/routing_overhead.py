"""Routing overhead: what the router adds on top of the model calls it makes.

Every catalog model is answered by :class:`InstantBackend` (a fixed short answer with token counts,
no sleep), so what is left is the router's own work: request parsing, validation, policy decisions,
the gRPC hops to the adapters, metering (SQLite) and reward services, tracing, and the faces.

Requests go through the real faces of an :class:`~xrouter.local_stack.InProcessStack`: the gRPC
``Route`` RPC over a ``grpc.aio`` channel, and ``POST /v1/chat/completions`` over HTTP with aiohttp.
For each (path, policy) it measures end-to-end latency at concurrency 1 and throughput at
concurrency 16, and reads the router's own time excluding model calls from the
``xrouter_routing_overhead_seconds`` histogram.

Caveat (also printed): the four services, the HTTP face and this load generator share one process
and one event loop, talking over loopback. The figures are the software overhead on this machine's
CPUs, not network latency, and the client's own work is inside the end-to-end numbers.

    .venv/bin/python -m bench.routing_overhead [--quick]

Writes bench-results/routing_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import grpc
from prometheus_client import REGISTRY

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.token_count import estimate_tokens
from xrouter.adapters.catalog import ModelSpec, load_catalog
from xrouter.adapters.core import AdapterCore, backend_key
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.auth import bearer_interceptors

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "routing_overhead.json"
POLICIES = ("fixed:gpt-4-1106-preview", "cascade")
PATHS = ("grpc", "http")
CONCURRENCY = 16
# (warm-up requests per concurrency level, sequential requests, concurrent requests) per case.
FULL = (20, 200, 256)
QUICK = (5, 20, 40)
OVERHEAD = "xrouter_routing_overhead_seconds"
RPC_LATENCY = "xrouter_rpc_latency_seconds"
NOTE = ("in-process stack: all four services, the HTTP face and the load generator share one process "
        "and one asyncio event loop over loopback; this measures software overhead, not network")

# Prompts alternate between these two. The instant backend answers "(A) ..." to every model for the
# first, so the cascade's two cheap models agree (2 calls); for the second each model answers
# differently, so the cascade escalates to the dearest model (3 calls).
AGREE = "Which planet is closest to the Sun? (A) Mercury (B) Venus (C) Earth (D) Mars"
DISAGREE = "[disagree] Name one prime number between 10 and 20."


class InstantBackend:
    """A backend that answers at once: a fixed short text, token counts, priced from the catalog."""

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply:
        prompt = next((content for role, content in reversed(messages) if role == "user"), "")
        text = f"answer from {spec.id}" if prompt.startswith("[disagree]") else "(A) Mercury"
        return BackendReply(text, sum(estimate_tokens(content) for _, content in messages),
                            estimate_tokens(text), False, "stop")


def instant_core() -> AdapterCore:
    """The bundled catalog with every model's backend replaced by :class:`InstantBackend`."""
    catalog = load_catalog(DEFAULT_CATALOG)
    backend = InstantBackend()
    return AdapterCore(catalog, {backend_key(spec): backend for spec in catalog.values()})


# --- one request on each path; each returns the number of model calls the router made ---------

Send = Callable[[int], Awaitable[int]]


def grpc_sender(stub: router_pb2_grpc.RouterServiceStub, policy: str) -> Send:
    requests = [router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                                        policy=policy) for prompt in (AGREE, DISAGREE)]

    async def send(number: int) -> int:
        response = await stub.Route(requests[number % 2], timeout=30)
        if not response.answer:
            raise RuntimeError(f"gRPC {policy}: empty answer")
        return len(response.calls)
    return send


def http_sender(session: aiohttp.ClientSession, url: str, policy: str) -> Send:
    bodies = [{"model": "xrouter", "messages": [{"role": "user", "content": prompt}],
               "xrouter": {"policy": policy}} for prompt in (AGREE, DISAGREE)]

    async def send(number: int) -> int:
        async with session.post(url, json=bodies[number % 2]) as response:
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"HTTP {policy}: status {response.status}: {body}")
        if not body["choices"][0]["message"]["content"]:
            raise RuntimeError(f"HTTP {policy}: empty answer")
        return len(body["xrouter"]["calls"])
    return send


# --- measurement --------------------------------------------------------------------------------

def overhead_sample() -> tuple[float, float]:
    total = REGISTRY.get_sample_value(f"{OVERHEAD}_sum") or 0.0
    count = REGISTRY.get_sample_value(f"{OVERHEAD}_count") or 0.0
    return total, count


def rpc_samples() -> dict[str, tuple[float, float]]:
    """Server-side (sum seconds, count) of each downstream RPC the router makes, from xrouter_rpc_latency_seconds."""
    samples: dict[str, list[float]] = {}
    for metric in REGISTRY.collect():
        if metric.name != RPC_LATENCY:
            continue
        for sample in metric.samples:
            kind = sample.name.removeprefix(RPC_LATENCY)
            if kind in ("_sum", "_count") and sample.labels["service"] != "router":
                key = f"{sample.labels['service']}/{sample.labels['method']}"
                samples.setdefault(key, [0.0, 0.0])[kind == "_count"] = sample.value
    return {key: (total, count) for key, (total, count) in samples.items()}


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


async def drive(send: Send, requests: int, concurrency: int) -> dict[str, Any]:
    """Send ``requests`` requests from ``concurrency`` workers; latency, throughput, router overhead."""
    latencies: list[float] = []
    calls = 0
    next_number = 0

    async def worker() -> None:
        nonlocal calls, next_number
        while next_number < requests:
            number = next_number
            next_number += 1
            started = time.perf_counter()
            calls += await send(number)
            latencies.append(time.perf_counter() - started)

    overhead_before, rpc_before = overhead_sample(), rpc_samples()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    overhead_after, rpc_after = overhead_sample(), rpc_samples()
    observed = overhead_after[1] - overhead_before[1]
    if observed != requests:  # the histogram is process-wide: nothing else may route meanwhile
        raise RuntimeError(f"routing-overhead histogram counted {observed:.0f} requests, expected {requests}")
    ms = sorted(seconds * 1000 for seconds in latencies)
    return {
        "requests": requests, "concurrency": concurrency, "wall_s": round(wall, 4),
        "throughput_rps": round(requests / wall, 1),
        "latency_ms": {"mean": round(sum(ms) / len(ms), 3), "p50": round(percentile(ms, 0.50), 3),
                       "p90": round(percentile(ms, 0.90), 3), "p99": round(percentile(ms, 0.99), 3),
                       "min": round(ms[0], 3), "max": round(ms[-1], 3)},
        "router_overhead_ms_mean": round((overhead_after[0] - overhead_before[0]) / observed * 1000, 3),
        "model_calls_per_request": round(calls / requests, 3),
        # Where the router's time goes: each downstream service's RPCs, timed by that server.
        "downstream_rpcs": {
            key: {"per_request": round((count - rpc_before.get(key, (0.0, 0.0))[1]) / requests, 3),
                  "mean_ms": round((total - rpc_before.get(key, (0.0, 0.0))[0])
                                   / (count - rpc_before.get(key, (0.0, 0.0))[1]) * 1000, 3)}
            for key, (total, count) in sorted(rpc_after.items()) if count > rpc_before.get(key, (0.0, 0.0))[1]},
    }


async def run_case(send: Send, warmup: int, sequential: int, concurrent: int) -> dict[str, Any]:
    await drive(send, warmup, 1)
    await drive(send, warmup, CONCURRENCY)
    return {"sequential": await drive(send, sequential, 1),
            "concurrent": await drive(send, concurrent, CONCURRENCY)}


async def run_all(warmup: int, sequential: int, concurrent: int) -> list[dict[str, Any]]:
    cases = []
    with tempfile.TemporaryDirectory(prefix="xrouter-bench-") as folder:
        stack = await InProcessStack(sqlite_url(pathlib.Path(folder)), adapter_core=instant_core()).start()
        try:
            key = await asyncio.to_thread(stack.tenant_key, "bench")  # a tenant key: the hot path, cache included
            async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(key)) as channel, \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
                                          headers={"Authorization": f"Bearer {key}"}) as session:
                stub = router_pb2_grpc.RouterServiceStub(channel)
                url = stack.http_url + "/v1/chat/completions"
                for path in PATHS:
                    for policy in POLICIES:
                        send = grpc_sender(stub, policy) if path == "grpc" else http_sender(session, url, policy)
                        started = time.perf_counter()
                        case = {"path": path, "policy": policy, **await run_case(send, warmup, sequential, concurrent)}
                        case["case_wall_s"] = round(time.perf_counter() - started, 2)
                        cases.append(case)
                        print(f"  {path:4} {policy:26} done in {case['case_wall_s']:.1f}s", file=sys.stderr, flush=True)
        finally:
            await stack.stop()
    return cases


# --- reporting ----------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu_model = ""
    try:
        cpu_model = next((line.split(":", 1)[1].strip() for line in
                          pathlib.Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {}
    for package in ("grpcio", "aiohttp", "protobuf", "SQLAlchemy", "opentelemetry-sdk", "prometheus-client"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model, "platform": platform.platform(),
        "python": platform.python_version(), "python_implementation": platform.python_implementation(),
        "packages": versions, "git_commit": commit,
    }


def table(cases: list[dict[str, Any]]) -> str:
    header = ("path", "policy", "calls/req", "c=1 p50 ms", "c=1 p99 ms", "c=1 req/s", "router-own ms c=1",
              f"c={CONCURRENCY} req/s", f"c={CONCURRENCY} p50 ms", f"c={CONCURRENCY} p99 ms",
              f"router-own ms c={CONCURRENCY}")
    rows = [header]
    for case in cases:
        seq, con = case["sequential"], case["concurrent"]
        rows.append((case["path"], case["policy"], f"{seq['model_calls_per_request']:.2f}",
                     f"{seq['latency_ms']['p50']:.2f}", f"{seq['latency_ms']['p99']:.2f}",
                     f"{seq['throughput_rps']:.0f}", f"{seq['router_overhead_ms_mean']:.2f}",
                     f"{con['throughput_rps']:.0f}", f"{con['latency_ms']['p50']:.2f}",
                     f"{con['latency_ms']['p99']:.2f}", f"{con['router_overhead_ms_mean']:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def breakdown(cases: list[dict[str, Any]]) -> str:
    """Mean server-side time of each downstream RPC (per call) and calls per request, for the c=1 phases."""
    keys = sorted({key for case in cases for key in case["sequential"]["downstream_rpcs"]})
    rows = [("path", "policy", *keys)]
    for case in cases:
        rpcs = case["sequential"]["downstream_rpcs"]
        rows.append((case["path"], case["policy"], *(
            f"{rpcs[key]['mean_ms']:.2f} x{rpcs[key]['per_request']:g}" if key in rpcs else "-" for key in keys)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke, about 10 s)")
    args = parser.parse_args(argv)
    warmup, sequential, concurrent = QUICK if args.quick else FULL
    print(f"routing overhead ({'quick' if args.quick else 'full'}): instant backend, "
          f"{sequential} sequential + {concurrent} at concurrency {CONCURRENCY} per case "
          f"(after {warmup}+{warmup} warm-up)", file=sys.stderr, flush=True)
    began = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    cases = asyncio.run(run_all(warmup, sequential, concurrent))
    duration = time.perf_counter() - started
    machine = machine_info()
    # Other work on the machine skews the figures: keep the load averages beside them.
    machine["loadavg_1_5_15_before"] = load_before
    machine["loadavg_1_5_15_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {
        "benchmark": "routing_overhead", "mode": "quick" if args.quick else "full",
        "started_at": began.isoformat(timespec="seconds"), "duration_s": round(duration, 2),
        "machine": machine,
        "setup": {
            "note": NOTE,
            "backend": "InstantBackend: every catalog model answers at once with a fixed short text "
                       "and token counts (cost priced from the catalog)",
            "catalog": str(DEFAULT_CATALOG.relative_to(ROOT)) if DEFAULT_CATALOG.is_relative_to(ROOT)
            else str(DEFAULT_CATALOG),
            "prompts": "alternating: one all models agree on, one they disagree on (cascade: 2 or 3 calls)",
            "metering_db": "sqlite (temporary file)", "tracing": "spans created, not exported",
            "paths": {"grpc": "router Route RPC over a grpc.aio channel",
                      "http": "POST /v1/chat/completions with aiohttp"},
            "policies": list(POLICIES), "concurrency": CONCURRENCY,
            "warmup_requests_per_level": warmup, "sequential_requests": sequential,
            "concurrent_requests": concurrent,
            "router_overhead": f"{OVERHEAD} histogram (_sum/_count delta per phase): router time per "
                               "request excluding model-call wall time",
        },
        "cases": cases,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    print(f"Routing overhead with an instant backend — {machine['cpus_usable']} CPUs "
          f"({machine['cpu_model'] or 'unknown CPU'}), Python {machine['python']}")
    print(f"Note: {NOTE}.")
    print("router-own = mean of xrouter_routing_overhead_seconds (router time excluding model calls); "
          "latencies are end to end at the client.")
    print()
    print(table(cases))
    print()
    print("Downstream RPCs at c=1: mean ms per RPC (server side) x RPCs per request")
    print(breakdown(cases))
    print()
    if load_before is not None:
        print(f"load average (1 min) before {load_before[0]:.2f}, after {machine['loadavg_1_5_15_after'][0]:.2f} "
              f"on {machine['cpus_usable']} CPUs")
    print(f"{len(cases)} cases in {duration:.1f}s; results in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
