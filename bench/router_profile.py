"""Where a routed request's time goes: the four services as processes (bench/gateway_stack.py), a
Postgres ledger (SQLite when none answers), the instant bench backend, the fixed policy, N
sequential requests through the OpenAI face, one keep-alive connection.

The split comes from the services' own OpenTelemetry spans, exported over OTLP to a receiver in
this process: the router's HTTP server span, its ``xrouter.route`` span, its gRPC client span of
every Authorize/Invoke/Record/Settle and the callee's server span of the same RPC, the adapters'
HTTP client span to the backend; and from metering's database time (every psycopg execute/commit
timed by bench/metering_db_timing.py). Tracing and the timing wrapper cost time themselves: the
end-to-end figures here are higher than ``make bench-gateway``'s; the split is what this is for.

Each variant is one stack start with its own environment, measured in the same run:
``asyncio`` (the stdlib event loop in every service: the code before uvloop), ``uvloop``, and
``untraced`` (uvloop, no OTLP endpoint: the services export no spans, as a deployment without a
collector; end-to-end figures only, no split). Tracing costs the traced variants time of its own.

    .venv/bin/python -m bench.router_profile [--quick] [--requests N]

Writes bench-results/router_profile.json.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench import gateway_stack

RESULTS = pathlib.Path("bench-results")
VARIANTS = {"asyncio": {"XROUTER_EVENT_LOOP": "asyncio"}, "uvloop": {"XROUTER_EVENT_LOOP": "uvloop"},
            "untraced": {"XROUTER_EVENT_LOOP": "uvloop"}}
UNTRACED = {"untraced"}  # no spans exported: no split
BODY = {"model": "xrouter", "messages": [{"role": "user", "content": "count to twenty"}],
        "xrouter": {"policy": "fixed:instant"}}
WARM_UP = 20
_SERVER, _CLIENT = 2, 3  # OTLP SpanKind values


class SpanSink(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver keeping (service, name, kind, trace, start ns, end ns) of each span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, int, bytes, int, int]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 - the proto's name
        rows = []
        for resource in request.resource_spans:
            service = next((a.value.string_value for a in resource.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource.scope_spans:
                rows.extend((service, s.name, s.kind, s.trace_id, s.start_time_unix_nano, s.end_time_unix_nano)
                            for s in scope.spans)
        with self._lock:
            self.spans.extend(rows)
        return trace_service_pb2.ExportTraceServiceResponse()


def send(base: str, path: str, key: str, body: bytes, count: int) -> list[float]:
    """``count`` sequential POSTs on one keep-alive connection; each one's seconds."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        payload = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {payload[:300]!r}")
    connection.close()
    return times


def split(spans: list[tuple[str, str, int, bytes, int, int]], window: tuple[float, float],
          db_times: list[tuple[float, float]], requests: int) -> dict[str, float]:
    """Mean ms per request of each part, over the traces whose HTTP server span began in ``window``."""
    by_trace: dict[bytes, list[tuple[str, str, int, int, int]]] = collections.defaultdict(list)
    for service, name, kind, trace_id, start, end in spans:
        by_trace[trace_id].append((service, name, kind, start, end))
    start_ns, end_ns = (int(t * 1e9) for t in window)
    totals: dict[str, float] = collections.defaultdict(float)
    counted = 0
    for trace in by_trace.values():
        http_span = next((s for s in trace if s[0] == "xrouter-router" and s[2] == _SERVER
                          and s[1] == "POST /v1/chat/completions"), None)
        route = next((s for s in trace if s[0] == "xrouter-router" and s[1] == "xrouter.route"), None)
        if http_span is None or route is None or not start_ns <= http_span[3] <= end_ns:
            continue
        counted += 1
        totals["router: HTTP face (aiohttp, auth, JSON in/out)"] += (http_span[4] - http_span[3]) - (route[4] - route[3])
        rpcs = [s for s in trace if s[0] == "xrouter-router" and s[2] == _CLIENT and s[1].startswith("/xrouter.")]
        totals["router: core (its own time between RPCs)"] += (route[4] - route[3]) - _union(
            [(s[3], s[4]) for s in rpcs if route[3] <= s[3] <= route[4]])
        for _, name, _, start, end in rpcs:
            service, method = name.strip("/").split("/")
            callee = next((s for s in trace if s[2] == _SERVER and s[1] == name), None)
            label = f"{service.split('.')[1]} {method}"
            totals[f"gRPC {label}: round trip"] += end - start
            if callee is not None:
                totals[f"gRPC {label}: callee server span"] += callee[4] - callee[3]
                totals[f"gRPC {label}: transport (round trip - server span)"] += (end - start) - (callee[4] - callee[3])
        backend = [s for s in trace if s[0] == "xrouter-adapters" and s[2] == _CLIENT and s[1] == "POST"]
        totals["adapters: backend HTTP call"] += sum(s[4] - s[3] for s in backend)
        metering = [s for s in trace if s[0] == "xrouter-metering" and s[2] == _SERVER]
        totals["metering: server spans, all RPCs"] += sum(s[4] - s[3] for s in metering)
    if counted == 0:
        raise RuntimeError("no request traces arrived from the services")
    figures = {name: round(value / counted / 1e6, 3) for name, value in sorted(totals.items())}
    db = sum(seconds for wall, seconds in db_times if window[0] <= wall <= window[1])
    figures["metering: database (psycopg execute/commit)"] = round(db / requests * 1000, 3)
    figures["metering: CPU and thread hops (server spans - database)"] = round(
        figures["metering: server spans, all RPCs"] - figures["metering: database (psycopg execute/commit)"], 3)
    figures["traces counted"] = counted
    return figures


def _union(intervals: list[tuple[int, int]]) -> int:
    """Total length covered by ``intervals`` (calls in one turn overlap)."""
    covered, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            covered, reach = covered + end - start, end
        elif end > reach:
            covered, reach = covered + end - reach, end
    return covered


def profile(name: str, env: dict[str, str], requests: int, home: pathlib.Path, backend: str,
            database_url: str) -> dict[str, Any]:
    sink = SpanSink()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    db_file = home / f"db-times-{name}.json"
    otel = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "500", "OTEL_BSP_MAX_QUEUE_SIZE": "65536"}
    if name in UNTRACED:  # and none inherited from this shell
        otel = {"OTEL_TRACES_EXPORTER": "none"}
    otel["XROUTER_BENCH_DB_TIMES"] = str(db_file)
    body = json.dumps(BODY).encode()
    try:
        with gateway_stack.xrouter(home / name, backend, database_url, "fixed:instant", extra_env={**otel, **env},
                                   modules={"metering": "bench.metering_db_timing"}) as (url, key):
            send(url, "/v1/chat/completions", key, body, WARM_UP)
            window_start = time.time()
            times = send(url, "/v1/chat/completions", key, body, requests)
            window = (window_start, time.time())
        # The services flushed their spans (and metering its database times) on SIGTERM.
        figures = {} if name in UNTRACED else split(sink.spans, window, json.loads(db_file.read_text()), requests)
    finally:
        receiver.stop(0)
    ms = sorted(t * 1000 for t in times)
    return {"env": env, "end_to_end_ms": {"mean": round(statistics.fmean(ms), 3), "p50": round(ms[len(ms) // 2], 3),
                                          "p99": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 3)},
            "split_ms_per_request": figures}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.router_profile")
    parser.add_argument("--quick", action="store_true", help="50 requests per variant")
    parser.add_argument("--requests", type=int, default=0, help="requests per variant (default 300; 50 quick)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    args = parser.parse_args(argv)
    requests = args.requests or (50 if args.quick else 300)
    chosen = [v for v in args.variants.split(",") if v]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or requests < 1:
        parser.error(f"--variants: unknown {unknown}" if unknown else "--requests must be >= 1")
    result: dict[str, Any] = {"benchmark": "router_profile", "requests": requests, "variants": {}}
    with tempfile.TemporaryDirectory() as folder, gateway_stack.backend() as backend, \
            gateway_stack.ledger_database() as (database_url, result["ledger"]):
        home = pathlib.Path(folder)
        bare = send(backend, "/v1/chat/completions", "unused", json.dumps({**BODY, "model": "instant"}).encode(),
                    WARM_UP + requests)[WARM_UP:]
        result["bare_backend_mean_ms"] = round(statistics.fmean(bare) * 1000, 3)
        for name in chosen:
            result["variants"][name] = figures = profile(name, VARIANTS[name], requests, home, backend, database_url)
            print(f"== {name}: end to end {figures['end_to_end_ms']} (bare backend {result['bare_backend_mean_ms']} ms)")
            for part, value in figures["split_ms_per_request"].items():
                print(f"  {part:<62} {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
