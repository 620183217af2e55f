"""The transport floor under the router's added latency: one unary gRPC round trip between two
processes on this machine, doing nothing (the standard health Check), with grpc.aio on asyncio,
grpc.aio on uvloop (what the services run) and the threaded sync server.

A routed request makes three such round trips in sequence (router → metering Authorize, router →
adapters Invoke, router → metering Settle), so three of these are the least a request can add
over the bare backend with four separate services, before any work is done.

    .venv/bin/python -m bench.grpc_round_trip [--quick]

Writes bench-results/grpc_round_trip.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

RESULTS = pathlib.Path("bench-results") / "grpc_round_trip.json"
SERVERS = ("aio-asyncio", "aio-uvloop", "sync")


def serve(kind: str, port: int) -> None:
    """Run a health server of ``kind`` on ``port`` until killed (the child process)."""
    from grpc_health.v1 import health

    if kind == "sync":
        from concurrent import futures

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def run() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    if kind == "aio-uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


async def round_trips(port: int, count: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=30)
        for _ in range(min(200, count)):  # warm-up
            await stub.Check(health_pb2.HealthCheckRequest())
        seconds = []
        for _ in range(count):
            started = time.perf_counter()
            await stub.Check(health_pb2.HealthCheckRequest())
            seconds.append(time.perf_counter() - started)
    return seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def measure(kind: str, count: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.grpc_round_trip", "--serve", kind, "--port", str(port)])
    try:
        ms = sorted(s * 1000 for s in asyncio.run(round_trips(port, count)))
    finally:
        server.kill()
        server.wait()
    return {"p50_ms": round(ms[len(ms) // 2], 3), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
            "mean_ms": round(sum(ms) / len(ms), 3), "round_trips": len(ms)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_round_trip")
    parser.add_argument("--quick", action="store_true", help="300 round trips per server instead of 3,000")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    count = 300 if args.quick else 3000
    result = {"benchmark": "grpc_round_trip", "machine": platform.machine(), "cpus": os.cpu_count(),
              "servers": {}}
    print(f"{'server (client: grpc.aio)':<28}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for kind in SERVERS:
        figures = result["servers"][kind] = measure(kind, count)
        print(f"{kind:<28}{figures['p50_ms']:>9.3f}{figures['p99_ms']:>9.3f}{figures['mean_ms']:>9.3f}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {RESULTS.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
