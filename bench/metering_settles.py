"""The router's Settles (each carrying its request's calls) through its own metering client, the
way the router sends them: concurrent ones coalesced into SettleMany round trips, or, for
comparison in the same run, one Settle round trip each, or journaled (the chart's default: each
settle made durable in the router's journal, then delivered behind the answers by its shipper; the
rate counts until metering holds every one). Used by ``bench.metering_record``, which owns the
service process and the raw baseline."""

from __future__ import annotations

import asyncio
import pathlib
import tempfile
import time
import uuid
from typing import Any

import grpc
from prometheus_client import REGISTRY

from xrouter.router.clients import MeteringClient
from xrouter.router.journal import SettleJournal
from xrouter.router.policy import CallOutcome, CallStatus

CALLS_PER_REQUEST = 3  # a cascade's calls, or a call, a check and a second opinion
# settle_round_trips: how many go out before queueing (the journal's shipper has its own: one)
MODES = {"coalesced": 2, "one round trip each": 1_000_000, "journaled": 2}
DRAIN_TIMEOUT_S = 120.0


def calls() -> list[CallOutcome]:
    return [CallOutcome(index, 0, "gpt-4o", "", 0.8125, CallStatus.OK, input_tokens=812, output_tokens=164,
                        cost_micro_usd=4_030, attempted=True) for index in range(CALLS_PER_REQUEST)]


async def drive_settles(channel: grpc.aio.Channel, mode: str, concurrency: int, seconds: float,
                        summarise: Any) -> tuple[dict[str, Any], int]:
    """Settle new requests from ``concurrency`` workers for ``seconds``; (figures, call rows written).
    ``summarise`` turns latencies (s) into the percentile summary."""
    client = MeteringClient(channel, settle_round_trips=MODES[mode])
    latencies: list[float] = []
    made = calls()
    journal_dir = tempfile.TemporaryDirectory(prefix="xrouter-bench-journal-") if mode == "journaled" else None
    if journal_dir is not None:
        client.journal = SettleJournal(pathlib.Path(journal_dir.name), client.deliver)
        await client.journal.start()
    stop_at = time.perf_counter() + seconds

    async def worker(number: int) -> None:
        tenant = f"tenant-{number % 10}"
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            held = await client.settle(uuid.uuid4().hex, tenant, "cascade", "ok", 4_030 * len(made), len(made), 30.0,
                                       policy_version="cascade@1", call_records=made, call_policy_version="cascade@1")
            latencies.append(time.perf_counter() - started)
            if held != len(made):
                raise RuntimeError(f"metering holds {held} of a settle's {len(made)} calls")

    round_trips = _round_trips()
    began = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    extra: dict[str, Any] = {}
    if client.journal is not None:  # the rate counts until metering holds every journaled settlement
        extra["pending_when_load_stopped"] = client.journal.pending
        drained = await client.journal.drain(DRAIN_TIMEOUT_S)
        await client.journal.close()
        journal_dir.cleanup()  # type: ignore[union-attr]
        if not drained:
            raise RuntimeError(f"metering did not take the journal's settlements within {DRAIN_TIMEOUT_S:g} s")
    wall = time.perf_counter() - began
    round_trips = _round_trips() - round_trips
    rows = len(latencies) * len(made)
    return {"router_client": mode, "concurrency": concurrency, "settles": len(latencies), **extra,
            "settles_per_round_trip": round(len(latencies) / max(1.0, round_trips), 2),
            "calls_per_settle": len(made), "wall_s": round(wall, 3), "settles_per_s": round(len(latencies) / wall, 1),
            "records_per_s": round(rows / wall, 1), "latency_ms": summarise(latencies)}, rows


def _round_trips() -> float:
    """Metering round trips the router's client has made for settlements (its own histogram)."""
    return REGISTRY.get_sample_value("xrouter_settles_per_metering_call_count") or 0.0
