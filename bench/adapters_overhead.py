"""Adapter overhead: what the adapters add per model call on top of the backend's own time.

The backend answers instantly, so the measured latency is the adapters' own work: validation, the
per-model guard (concurrency limit, circuit breaker, deadline), accounting and metrics, and — on the
gRPC path — the servicer and the hop over a real grpc.aio channel. Each case runs unary (Invoke) and
streamed (InvokeStream: 8 deltas then the accounted reply) at concurrency 1, 16 and 64:

- ``core``: ``AdapterCore`` called in-process with the instant backend (no transport at all);
- ``grpc``: the adapters' real gRPC server (port 0) and a client channel, instant backend;
- ``grpc+openai_http``: the same, with the OpenAI-compatible HTTP backend calling a local aiohttp
  server that answers at once (adds JSON/SSE and loopback HTTP).

Caveat (also in the JSON): server, HTTP backend server and load generator share one process and one
event loop on this machine's CPUs; figures are software overhead, not network latency.

    .venv/bin/python -m bench.adapters_overhead [--quick]

Writes bench-results/adapters.json (and adapters.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from bench.routing_overhead import ROOT, machine_info, percentile
from xrouter.adapters.backends import BackendReply
from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import ModelSpec, parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation
from xrouter.adapters.server import register
from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.api.common.v1 import common_pb2
from xrouter.common.grpc_server import GrpcServer

RESULTS = ROOT / "bench-results" / "adapters.json"
PLOT = RESULTS.with_suffix(".png")
CONCURRENCY = (1, 16, 64)
DELTAS = 8
ANSWER = [f"w{i} " for i in range(DELTAS)]
MESSAGES = [("system", "Be brief."), ("user", "Which planet is closest to the Sun?")]
# Calls per (case, mode, concurrency), after a warm-up of a tenth as many.
FULL, QUICK = 2000, 200


class InstantBackend:
    """Answers at once: eight words, streamed as eight deltas; usage reported (nothing estimated)."""

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply:
        return BackendReply("".join(ANSWER), 12, DELTAS, False, "stop")

    async def stream(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> AsyncIterator[str | BackendReply]:
        for word in ANSWER:
            yield word
        yield BackendReply("".join(ANSWER), 12, DELTAS, False, "stop")


async def instant_openai_server() -> tuple[web.AppRunner, str]:
    """A local OpenAI-compatible endpoint that answers at once (plain JSON or SSE)."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        usage = {"prompt_tokens": 12, "completion_tokens": DELTAS, "total_tokens": 12 + DELTAS}
        if not body.get("stream"):
            return web.json_response({"id": "b", "object": "chat.completion", "model": body["model"], "usage": usage,
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "".join(ANSWER)}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ANSWER]
        events += [{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, {"choices": [], "usage": usage}]
        await response.write(b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]  # noqa: SLF001


def catalog(backend: str, endpoint: str = "") -> dict[str, ModelSpec]:
    entry: dict[str, Any] = {"id": "bench", "backend": backend, "input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
                             "context_tokens": 4096, "max_output_tokens": 64, "description": "bench",
                             # Room for every concurrent call: the limit is measured, not hit.
                             "resilience": {"max_concurrency": 128, "max_queue": 128}}
    if backend == "replay":  # the instant backend takes a replay model's place (no data set is read)
        entry["dataset"] = "instant"
    else:
        entry["endpoint"] = endpoint
    return parse_catalog({"models": [entry]})


Call = Callable[[bool], Awaitable[None]]


def core_caller(core: AdapterCore) -> Call:
    async def call(stream: bool) -> None:
        if stream:
            items = [item async for item in core.invoke_stream("bench", MESSAGES, timeout=10)]
            assert len(items) == DELTAS + 1 and isinstance(items[-1], Invocation)
        else:
            assert (await core.invoke("bench", MESSAGES, timeout=10)).output_tokens == DELTAS
    return call


def grpc_caller(stub: adapters_pb2_grpc.AdapterServiceStub) -> Call:
    request = adapters_pb2.InvokeRequest(
        model="bench", messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in MESSAGES])

    async def call(stream: bool) -> None:
        if stream:
            chunks = [chunk async for chunk in stub.InvokeStream(request, timeout=10)]
            assert len(chunks) == DELTAS + 1 and chunks[-1].done.output_tokens == DELTAS
        else:
            assert (await stub.Invoke(request, timeout=10)).output_tokens == DELTAS
    return call


async def measure(call: Call, stream: bool, concurrency: int, calls: int) -> dict[str, Any]:
    """Run ``calls`` calls with ``concurrency`` in flight; per-call latency and throughput."""
    latencies: list[float] = []
    remaining = [calls]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            started = time.perf_counter()
            await call(stream)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, calls // 10)))))  # warm-up
    latencies.clear()
    remaining[0] = calls
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"concurrency": concurrency, "calls": calls, "calls_per_s": round(calls / wall, 1),
            "latency_ms": {"p50": round(percentile(latencies, 0.5), 3), "p99": round(percentile(latencies, 0.99), 3),
                           "mean": round(sum(latencies) / len(latencies), 3)}}


async def run_all(calls: int) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    http_runner, url = await instant_openai_server()
    instant = AdapterCore(catalog("replay"), {"replay:instant": InstantBackend()}, on_call=lambda call: None)
    over_http = AdapterCore(catalog("openai", url), {"openai": OpenAIBackend()}, on_call=lambda call: None)
    servers = []
    callers: list[tuple[str, Call]] = [("core", core_caller(instant))]
    for name, core in (("grpc", instant), ("grpc+openai_http", over_http)):
        server = GrpcServer("adapters", register(core), TracerProvider())
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        callers.append((name, grpc_caller(adapters_pb2_grpc.AdapterServiceStub(channel))))
    try:
        for name, call in callers:
            for stream in (False, True):
                for concurrency in CONCURRENCY:
                    result = {"path": name, "mode": "stream" if stream else "unary", **await measure(
                        call, stream, concurrency, calls)}
                    cases.append(result)
                    print(f"  {name:17s} {result['mode']:6s} c={concurrency:<3d} {result['calls_per_s']:8.1f} calls/s  "
                          f"p50 {result['latency_ms']['p50']:7.3f} ms  p99 {result['latency_ms']['p99']:7.3f} ms",
                          file=sys.stderr, flush=True)
    finally:
        for server, channel in servers:
            await channel.close()
            await server.stop(0)
        await over_http.aclose()
        await http_runner.cleanup()
    return cases


def plot(cases: list[dict[str, Any]]) -> bool:
    """calls/s and p99 per case; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for path in dict.fromkeys(c["path"] for c in cases):
        for mode, style in (("unary", "-o"), ("stream", "--s")):
            rows = [c for c in cases if c["path"] == path and c["mode"] == mode]
            xs = [c["concurrency"] for c in rows]
            left.plot(xs, [c["calls_per_s"] for c in rows], style, label=f"{path} {mode}")
            right.plot(xs, [c["latency_ms"]["p99"] for c in rows], style, label=f"{path} {mode}")
    for axis, title in ((left, "calls/s (higher is better)"), (right, "p99 latency per call, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        axis.set_xlabel("concurrent calls")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    left.legend(fontsize=8)
    figure.suptitle("Adapter overhead against an instant backend (one process, shared event loop)")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    args = parser.parse_args(argv)
    calls = QUICK if args.quick else FULL
    print(f"adapter overhead ({'quick' if args.quick else 'full'}): {calls} calls per case",
          file=sys.stderr, flush=True)
    began = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    started = time.perf_counter()
    cases = asyncio.run(run_all(calls))
    machine = machine_info()
    machine["loadavg_1_5_15_before"], machine["loadavg_1_5_15_after"] = load_before, os.getloadavg()
    result = {
        "benchmark": "adapters", "mode": "quick" if args.quick else "full",
        "started_at": began.isoformat(timespec="seconds"), "duration_s": round(time.perf_counter() - started, 2),
        "machine": machine,
        "setup": {"note": "server, backend and load generator share one process and event loop; software "
                          "overhead, not network", "backend": "instant (no work): 12 prompt tokens, 8 output tokens",
                  "stream": f"InvokeStream: {DELTAS} deltas then the accounted reply",
                  "paths": {"core": "AdapterCore in-process", "grpc": "Invoke/InvokeStream over a grpc.aio channel",
                            "grpc+openai_http": "gRPC, then the OpenAI HTTP backend to a local instant aiohttp server"},
                  "calls_per_case": calls, "warmup_calls": calls // 10, "concurrency": list(CONCURRENCY)},
        "cases": cases,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plotted = plot(cases)
    print(f"wrote {RESULTS.relative_to(ROOT)}" + (f" and {PLOT.relative_to(ROOT)}" if plotted else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
