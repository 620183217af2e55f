"""Whole request flows through metering on PostgreSQL, in-memory budgets against the database check.

A flow is what the router sends for one request: Authorize (against a tenant with a daily budget
large enough never to refuse, so the check runs in full) → Settle carrying two calls (``--flow
settle``, the router's since Settle carries calls), or → two Records → Settle (``--flow records``:
the router's before, and still a metering client's way to record calls one at a time). The real
``python -m xrouter.metering`` process runs once with ``XROUTER_METERING_BUDGETS=memory`` and once
with ``database``; ``concurrency`` workers run flows for a fixed time. Reported: flows/s, Authorize
latency at the client, ledger call rows/s, and those rows/s as a share of raw batched psycopg
INSERTs into a copy of ``ledger_calls`` on the same server (100 per transaction, as in
``bench.metering_record``). Every acknowledged record is checked in the ledger afterwards.

    .venv/bin/python -m bench.metering_flow [--quick] [--flow settle|records]

PostgreSQL as in ``bench.metering_record``. Writes bench-results/metering_flow.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import psycopg
import sqlalchemy as sa

from bench.metering_record import (DEFAULT_URL, RESULTS, Service, bench_raw, latency_summary, machine_info,
                                   postgres_settings)
from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.metering import migrate
from xrouter.metering.store import make_engine

OUT = RESULTS.parent / "metering_flow.json"
CONCURRENCY = (1, 16, 64)
MODES = ("memory", "database")
FULL_SECONDS, QUICK_SECONDS = 10.0, 3.0
TENANTS = 10


FLOWS = {"settle": "Authorize (daily budget set) -> Settle carrying 2 calls",
         "records": "Authorize (daily budget set) -> 2 Records -> Settle"}


def two_calls(request_id: str = "", tenant: str = "") -> list[metering_pb2.RecordRequest]:
    """The flow's two calls (request_id and tenant empty inside a Settle: it supplies its own)."""
    return [metering_pb2.RecordRequest(request_id=request_id, call_index=index, tenant=tenant, model="gpt-4o",
                                       input_tokens=812, output_tokens=164, cost_micro_usd=4_030, latency_ms=812.5,
                                       status=common_pb2.CALL_STATUS_OK) for index in range(2)]


async def drive(stub: metering_pb2_grpc.MeteringServiceStub, concurrency: int, seconds: float,
                flow: str) -> dict[str, Any]:
    authorize: list[float] = []
    flows: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(number: int) -> None:
        tenant = f"tenant-{number % TENANTS}"
        while time.perf_counter() < stop_at:
            request_id = uuid.uuid4().hex
            started = time.perf_counter()
            granted = await stub.Authorize(metering_pb2.AuthorizeRequest(
                request_id=request_id, tenant=tenant, estimate_micro_usd=20_000, models=["gpt-4o"]), timeout=30)
            authorize.append(time.perf_counter() - started)
            if granted.state != metering_pb2.REQUEST_STATE_NEW:
                raise RuntimeError(f"unexpected state {granted.state} for a new request")
            if flow == "records":
                for call in two_calls(request_id, tenant):
                    await stub.Record(call, timeout=30)
            settled = await stub.Settle(metering_pb2.SettleRequest(
                request_id=request_id, tenant=tenant, strategy="cascade", outcome="ok", total_cost_micro_usd=8_060,
                calls=2, call_records=two_calls() if flow == "settle" else []), timeout=30)
            if flow == "settle" and settled.recorded_calls != 2:
                raise RuntimeError(f"metering holds {settled.recorded_calls} of the 2 calls the Settle carried")
            flows.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    wall = time.perf_counter() - began
    return {"concurrency": concurrency, "flows": len(flows), "wall_s": round(wall, 3),
            "flows_per_s": round(len(flows) / wall, 1), "call_rows_per_s": round(2 * len(flows) / wall, 1),
            "authorize_latency_ms": latency_summary(authorize), "flow_latency_ms": latency_summary(flows)}


async def bench_mode(url: str, mode: str, seconds: float, flow: str) -> tuple[list[dict[str, Any]], int]:
    os.environ["XROUTER_METERING_BUDGETS"] = mode  # read by the service process's settings
    service = Service(url, RESULTS.parent / f"metering-flow-{mode}.log")
    channel = grpc.aio.insecure_channel(service.target)
    try:
        await service.wait_serving(channel)
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        for number in range(TENANTS):
            await stub.SetBudget(metering_pb2.SetBudgetRequest(
                tenant=f"tenant-{number}", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=10**12))
        done = (await drive(stub, 8, min(1.0, seconds / 2), flow))["flows"]  # warm-up
        results = []
        for concurrency in CONCURRENCY:
            print(f"  {mode} budgets, concurrency {concurrency}: {seconds:.0f} s...", file=sys.stderr, flush=True)
            results.append({"budgets": mode, **await drive(stub, concurrency, seconds, flow)})
            done += results[-1]["flows"]
    finally:
        await channel.close()
        service.stop()
        os.environ.pop("XROUTER_METERING_BUDGETS", None)
    return results, done


def run(url: str, seconds: float, quick: bool, flow: str) -> dict[str, Any]:
    schema = f"bench_flow_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    conninfo = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    scoped_url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        engine = make_engine(scoped_url)
        migrate.upgrade(engine)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE raw_calls (LIKE ledger_calls INCLUDING ALL)"))
        cases, flows = [], 0
        for mode in MODES:
            results, done = asyncio.run(bench_mode(scoped_url, mode, seconds, flow))
            cases += results
            flows += done
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT count(*) FROM ledger_calls")).scalar_one()
            settled = connection.execute(sa.text("SELECT count(*) FROM request_summaries")).scalar_one()
        engine.dispose()
        if (stored, settled) != (2 * flows, flows):
            raise RuntimeError(f"the ledger holds {stored} calls and {settled} summaries for {flows} acknowledged flows")
        print(f"  raw psycopg, 100 INSERTs per transaction: {seconds:.0f} s...", file=sys.stderr, flush=True)
        raw = bench_raw(conninfo, schema, 100, seconds)
        settings = postgres_settings(conninfo)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    for case in cases:
        case["call_rows_share_of_raw_batched"] = round(case["call_rows_per_s"] / raw["records_per_s"], 4)
    return {"benchmark": "metering_flow", "mode": "quick" if quick else "full",
            "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "postgres": settings,
            "setup": {"seconds_per_case": seconds, "flow": FLOWS[flow],
                      "tenants": TENANTS, "acknowledged_flows_checked_in_ledger": flows},
            "cases": cases, "raw_batched": raw}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metering_flow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:g} s per case instead of {FULL_SECONDS:g}")
    parser.add_argument("--flow", choices=sorted(FLOWS), default="settle",
                        help="settle: the calls carried by Settle (the router's flow); records: a Record per call")
    args = parser.parse_args(argv)
    url = os.environ.get("XROUTER_BENCH_POSTGRES_URL") or os.environ.get("XROUTER_TEST_POSTGRES_URL") or DEFAULT_URL
    OUT.parent.mkdir(parents=True, exist_ok=True)
    try:
        with psycopg.connect(sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                             connect_timeout=5):
            pass
    except psycopg.OperationalError as error:
        message = f"PostgreSQL not reachable at {sa.engine.make_url(url).render_as_string()}: metering flow bench SKIPPED"
        print(f"!!! {message} ({error}) !!!", file=sys.stderr)
        OUT.write_text(json.dumps({"benchmark": "metering_flow", "skipped": message}, indent=2) + "\n")
        return 0
    result = run(url, QUICK_SECONDS if args.quick else FULL_SECONDS, args.quick, args.flow)
    OUT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nMetering flows ({result['setup']['flow']}) on PostgreSQL {result['postgres']['server_version']}, "
          f"{result['machine']['cpus_usable']} CPUs, {result['setup']['seconds_per_case']:.0f} s per case")
    print(f"{'budgets, concurrency':<24} {'flows/s':>8} {'Authorize p50/p99 ms':>22} {'call rows/s':>12} {'/ raw batched':>14}")
    for case in result["cases"]:
        lat = case["authorize_latency_ms"]
        print(f"{case['budgets'] + ', ' + str(case['concurrency']):<24} {case['flows_per_s']:>8.0f} "
              f"{lat['p50']:>10.2f} / {lat['p99']:>8.2f} {case['call_rows_per_s']:>12.0f} "
              f"{case['call_rows_share_of_raw_batched']:>14.3f}")
    print(f"raw psycopg, 100 INSERTs per transaction: {result['raw_batched']['records_per_s']:.0f} rows/s")
    print(f"results in {OUT.relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
