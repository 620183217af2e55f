"""Metering Record throughput and latency against PostgreSQL, beside raw psycopg INSERTs on the
same server.

- service: the real ``python -m xrouter.metering`` process (PostgreSQL ledger, no spool, auth off
  on loopback) fed ``Record`` RPCs over a grpc.aio channel by ``concurrency`` workers for a fixed
  time; every RPC is a new call (no duplicates). Throughput is acknowledged records per second,
  latency is end to end at the client. The ledger's row count is checked against the
  acknowledgements afterwards.
- raw: the same rows into a copy of ``ledger_calls`` with psycopg alone: ``executemany`` of a
  batch of INSERTs per transaction (batch 100: "plain batched INSERTs"), and one INSERT per
  transaction (batch 1: what a record costs the database when it is committed on its own).

- router settles: the router's own metering client (``bench.metering_settles``) settling new
  requests that carry 3 calls each, at concurrency 16 and 64, coalesced into SettleMany round trips
  (as the router sends them) and, in the same run, one Settle round trip each. Throughput is call
  rows per second, the figure comparable with the raw INSERTs.

- ledger: ``Ledger.record_many`` in this process, no gRPC: a batch of 30 (what the service's group
  commit gathers at concurrency 64) and of 300 calls per transaction. It separates the ledger's own
  write path from the service's per-RPC cost.

The ratio service / raw-batched is what the service costs over the database's best case.
All of it shares this machine's CPUs with PostgreSQL and the client (see ``machine``).

    .venv/bin/python -m bench.metering_record [--quick]

PostgreSQL: $XROUTER_BENCH_POSTGRES_URL, else $XROUTER_TEST_POSTGRES_URL, else
postgresql+psycopg://postgres@127.0.0.1:5432/test (a fresh schema, dropped afterwards).
Writes bench-results/metering.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import psycopg
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.metering_settles import MODES as SETTLE_MODES
from bench.metering_settles import drive_settles
from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.metering import migrate
from xrouter.metering.store import make_engine

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "metering.json"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CONCURRENCY = (1, 16, 64)
RAW_BATCHES = (1, 100)
LEDGER_BATCHES = (30, 300)
SETTLE_CONCURRENCY = (16, 64)
FULL_SECONDS, QUICK_SECONDS = 10.0, 2.5
COLUMNS = ("request_id", "call_index", "tenant", "model", "input_tokens", "output_tokens", "cost_micro_usd",
           "latency_ms", "status", "policy_version", "trace_id", "created_at")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50": round(percentile(ms, 0.5), 3), "p90": round(percentile(ms, 0.9), 3),
            "p99": round(percentile(ms, 0.99), 3), "max": round(ms[-1], 3)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def row(number: int) -> dict[str, Any]:
    return {"request_id": f"bench-{number // 3}", "call_index": number % 3, "tenant": f"tenant-{number % 10}",
            "model": "gpt-4o", "input_tokens": 812, "output_tokens": 164, "cost_micro_usd": 4_030,
            "latency_ms": 812.5, "status": "CALL_STATUS_OK", "policy_version": "cascade@1",
            "trace_id": "0af7651916cd43dd8448eb211c80319c"}


# --- the service ----------------------------------------------------------------------------------

class Service:
    """``python -m xrouter.metering`` on a free port, stopped with SIGTERM."""

    def __init__(self, url: str, log: pathlib.Path) -> None:
        self.target = f"127.0.0.1:{free_port()}"
        self.metrics_port = free_port()
        env = {**os.environ, "XROUTER_METERING_DATABASE_URL": url,
               "XROUTER_METERING_PORT": self.target.rsplit(":", 1)[1],
               "XROUTER_METERING_METRICS_PORT": str(self.metrics_port)}
        env.pop("XROUTER_METERING_SPOOL_DIR", None)
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "xrouter.metering"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.log = log

    async def wait_serving(self, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"metering exited: {self.log.read_text()[-2000:]}")
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("metering did not become SERVING within 60 s")

    def batch_sizes(self) -> tuple[float, float]:
        """(transactions, records) so far, from the service's group-commit histogram."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                  if line.startswith("xrouter_metering_record_batch_size_")}
        return values["xrouter_metering_record_batch_size_count"], values["xrouter_metering_record_batch_size_sum"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


async def drive_service(stub: metering_pb2_grpc.MeteringServiceStub, first: int, concurrency: int,
                        seconds: float) -> tuple[dict[str, Any], int]:
    """Record for ``seconds`` from ``concurrency`` workers; (figures, next unused row number)."""
    latencies: list[float] = []
    number = first
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal number
        while time.perf_counter() < stop_at:
            values = row(number)
            number += 1
            request = metering_pb2.RecordRequest(
                request_id=values["request_id"], call_index=values["call_index"], tenant=values["tenant"],
                model=values["model"], input_tokens=values["input_tokens"], output_tokens=values["output_tokens"],
                cost_micro_usd=values["cost_micro_usd"], latency_ms=values["latency_ms"],
                status=common_pb2.CALL_STATUS_OK, policy_version=values["policy_version"],
                trace_id=values["trace_id"])
            started = time.perf_counter()
            reply = await stub.Record(request, timeout=30)
            latencies.append(time.perf_counter() - started)
            if reply.duplicate or reply.spooled:
                raise RuntimeError(f"unexpected reply {reply} for a new record")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    return {"concurrency": concurrency, "records": len(latencies), "wall_s": round(wall, 3),
            "records_per_s": round(len(latencies) / wall, 1), "latency_ms": latency_summary(latencies)}, number


async def bench_service(url: str, seconds: float, log: pathlib.Path) -> tuple[list[dict[str, Any]], int,
                                                                             list[dict[str, Any]], int]:
    """Record RPCs at each concurrency, then the router's Settles (``bench.metering_settles``):
    (Record figures, records acknowledged, Settle figures, call rows those settled)."""
    service = Service(url, log)
    channel = grpc.aio.insecure_channel(service.target)
    try:
        await service.wait_serving(channel)
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        number, results, settles, settled_rows = 10_000_000, [], [], 0
        _, number = await drive_service(stub, number, 16, min(1.0, seconds / 2))  # warm-up
        warmup_rows = number - 10_000_000
        for concurrency in CONCURRENCY:
            print(f"  service, concurrency {concurrency}: {seconds:.0f} s...", file=sys.stderr, flush=True)
            before = await asyncio.to_thread(service.batch_sizes)
            figures, number = await drive_service(stub, number, concurrency, seconds)
            after = await asyncio.to_thread(service.batch_sizes)
            figures["records_per_transaction"] = round((after[1] - before[1]) / max(1.0, after[0] - before[0]), 2)
            results.append(figures)
        for concurrency in SETTLE_CONCURRENCY:
            for mode in SETTLE_MODES:
                print(f"  router's settles ({mode}), concurrency {concurrency}: {seconds:.0f} s...", file=sys.stderr,
                      flush=True)
                figures, rows = await drive_settles(channel, mode, concurrency, seconds, latency_summary)
                settles.append(figures)
                settled_rows += rows
    finally:
        await channel.close()
        service.stop()
    return results, warmup_rows + sum(r["records"] for r in results), settles, settled_rows


# --- the raw baseline ---------------------------------------------------------------------------

def bench_raw(conninfo: str, schema: str, batch: int, seconds: float) -> dict[str, Any]:
    """INSERT ``batch`` rows per transaction (executemany) for ``seconds``."""
    insert = (f'INSERT INTO "{schema}".raw_calls ({", ".join(COLUMNS)}) '
              f'VALUES ({", ".join(["%s"] * len(COLUMNS))})')
    commits: list[float] = []
    rows = 0
    number = batch * 1_000_000
    with psycopg.connect(conninfo) as connection:
        stop_at = time.perf_counter() + seconds
        began = time.perf_counter()
        while time.perf_counter() < stop_at:
            now = datetime.datetime.now(datetime.timezone.utc)
            values = [tuple({**row(number + i), "created_at": now}[c] for c in COLUMNS) for i in range(batch)]
            number += batch
            started = time.perf_counter()
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(insert, values)
            commits.append(time.perf_counter() - started)
            rows += batch
        wall = time.perf_counter() - began
    return {"batch": batch, "records": rows, "wall_s": round(wall, 3), "records_per_s": round(rows / wall, 1),
            "transaction_latency_ms": latency_summary(commits)}


def bench_ledger(url: str, batch: int, seconds: float) -> dict[str, Any]:
    """``Ledger.record_many`` of ``batch`` new calls per transaction for ``seconds``."""
    from xrouter.metering.ledger import CallRecord, Ledger

    engine = make_engine(url)
    ledger = Ledger(engine, 60.0)
    number, rows = batch * 2_000_000, 0
    began = time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - began < seconds:
        ledger.record_many([CallRecord(**row(number + i)) for i in range(batch)])
        number += batch
        rows += batch
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    engine.dispose()
    return {"batch": batch, "records": rows, "wall_s": round(wall, 3), "records_per_s": round(rows / wall, 1),
            "process_cpu_us_per_record": round(cpu / rows * 1e6, 1)}


# --- the run --------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text()
                      .splitlines() if line.startswith("model name")), "") if os.path.exists("/proc/cpuinfo") else ""
    return {"cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": cpu_model, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_1_5_15": os.getloadavg() if hasattr(os, "getloadavg") else None}


def postgres_settings(conninfo: str) -> dict[str, str]:
    with psycopg.connect(conninfo) as connection:
        return {name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")}


def run(url: str, seconds: float, quick: bool) -> dict[str, Any]:
    schema = f"bench_metering_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    conninfo = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    scoped_url = f"{url}{separator}options=-csearch_path%3D{schema}"
    try:
        engine = make_engine(scoped_url)
        migrate.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE raw_calls (LIKE ledger_calls INCLUDING ALL)"))
        log = RESULTS.parent / "metering-service.log"
        service, acknowledged, settles, settled_rows = asyncio.run(bench_service(scoped_url, seconds, log))
        acknowledged += settled_rows
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT count(*) FROM ledger_calls")).scalar_one()
        engine.dispose()
        if stored != acknowledged:
            raise RuntimeError(f"the ledger holds {stored} calls but {acknowledged} Records were acknowledged")
        ledger = []
        for batch in LEDGER_BATCHES:
            print(f"  ledger.record_many, {batch} per transaction: {seconds:.0f} s...", file=sys.stderr, flush=True)
            ledger.append(bench_ledger(scoped_url, batch, seconds))
        raw = []
        for batch in RAW_BATCHES:
            print(f"  raw psycopg, {batch} INSERT(s) per transaction: {seconds:.0f} s...", file=sys.stderr, flush=True)
            raw.append(bench_raw(conninfo, schema, batch, seconds))
        settings = postgres_settings(conninfo)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    best = max(service, key=lambda r: r["records_per_s"])
    by_batch = {r["batch"]: r for r in raw}
    return {
        "benchmark": "metering", "mode": "quick" if quick else "full",
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "postgres": {"url": sa.engine.make_url(url).render_as_string(), **settings},
        "setup": {"seconds_per_case": seconds, "service": "python -m xrouter.metering, PostgreSQL ledger, no spool, "
                  "auth off (loopback); one grpc.aio client process", "raw": "psycopg executemany into a "
                  "LIKE ledger_calls INCLUDING ALL copy (same indexes), one transaction per batch",
                  "acknowledged_records_checked_in_ledger": acknowledged},
        "service": service, "router_settles": settles, "ledger": ledger, "raw": raw,
        "summary": {
            "service_best_records_per_s": best["records_per_s"], "service_best_concurrency": best["concurrency"],
            "service_p99_ms_at_best": best["latency_ms"]["p99"],
            "raw_batched_records_per_s": by_batch[max(RAW_BATCHES)]["records_per_s"],
            "raw_single_insert_records_per_s": by_batch[1]["records_per_s"],
            "ratio_service_to_raw_batched": round(
                best["records_per_s"] / by_batch[max(RAW_BATCHES)]["records_per_s"], 4),
            "ratio_service_to_raw_single": round(best["records_per_s"] / by_batch[1]["records_per_s"], 3),
            "router_settles_best_call_rows_per_s": max(r["records_per_s"] for r in settles),
            "ratio_router_settles_to_raw_batched": {f"{r['router_client']}, concurrency {r['concurrency']}": round(
                r["records_per_s"] / by_batch[max(RAW_BATCHES)]["records_per_s"], 3) for r in settles},
            "ratio_ledger_to_raw_batched": {str(r["batch"]): round(
                r["records_per_s"] / by_batch[max(RAW_BATCHES)]["records_per_s"], 3) for r in ledger},
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\nMetering Record on PostgreSQL {result['postgres']['server_version']} "
          f"(fsync={result['postgres']['fsync']}, synchronous_commit={result['postgres']['synchronous_commit']}), "
          f"{result['machine']['cpus_usable']} CPUs, {result['setup']['seconds_per_case']:.0f} s per case")
    print(f"{'path':<34} {'records/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for case in result["service"]:
        lat = case["latency_ms"]
        print(f"{'service, concurrency ' + str(case['concurrency']):<34} {case['records_per_s']:>10.0f} "
              f"{lat['p50']:>8.2f} {lat['p99']:>8.2f}  ({case['records_per_transaction']:.1f} records/transaction)")
    for case in result["router_settles"]:
        lat = case["latency_ms"]
        label = f"router settles, {case['router_client']}, c {case['concurrency']}"
        print(f"{label:<42} {case['records_per_s']:>10.0f} {lat['p50']:>8.2f} {lat['p99']:>8.2f}  "
              f"({case['calls_per_settle']} call rows per settle, {case['settles_per_round_trip']:.1f} settles "
              f"per round trip)")
    for case in result["ledger"]:
        print(f"{'ledger.record_many, ' + str(case['batch']) + ' per transaction':<34} {case['records_per_s']:>10.0f} "
              f"{'':>8} {'':>8}  ({case['process_cpu_us_per_record']:.0f} us CPU per record)")
    for case in result["raw"]:
        lat = case["transaction_latency_ms"]
        print(f"{'raw psycopg, ' + str(case['batch']) + ' per transaction':<34} {case['records_per_s']:>10.0f} "
              f"{lat['p50']:>8.2f} {lat['p99']:>8.2f}  (per transaction)")
    summary = result["summary"]
    print(f"service / raw batched = {summary['ratio_service_to_raw_batched']:.3f}; "
          f"service / raw one-per-transaction = {summary['ratio_service_to_raw_single']:.2f}; ledger alone / raw "
          f"batched = " + ", ".join(f"{v:.2f} (batch {k})" for k, v in summary["ratio_ledger_to_raw_batched"].items()))
    print("router settles' call rows / raw batched = " + ", ".join(
        f"{v:.3f} ({k})" for k, v in summary["ratio_router_settles_to_raw_batched"].items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metering_record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_SECONDS:g} s per case instead of {FULL_SECONDS:g}")
    args = parser.parse_args(argv)
    url = os.environ.get("XROUTER_BENCH_POSTGRES_URL") or os.environ.get("XROUTER_TEST_POSTGRES_URL") or DEFAULT_URL
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        with psycopg.connect(sa.engine.make_url(url).set(drivername="postgresql")
                             .render_as_string(hide_password=False), connect_timeout=5):
            pass
    except psycopg.OperationalError as error:
        message = f"PostgreSQL not reachable at {sa.engine.make_url(url).render_as_string()}: metering bench SKIPPED"
        print(f"!!! {message} ({error}) !!!", file=sys.stderr)
        RESULTS.write_text(json.dumps({"benchmark": "metering", "skipped": message}, indent=2) + "\n")
        return 0
    result = run(url, QUICK_SECONDS if args.quick else FULL_SECONDS, args.quick)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(result)
    print(f"results in {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
