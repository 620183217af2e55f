"""Streaming time to first token: the official ``openai`` client against a backend that streams 20
tokens 50 ms apart, directly and through xrouter's OpenAI face (fixed policy, four service processes,
Postgres ledger when one answers). Requests alternate between the two paths, one at a time.

TTFT is the time from sending the request to the first non-empty content delta; "total" is to the
end of the stream. The target (issue 14): through xrouter ≤ direct + 5 ms. xrouter is sent a tenant
key issued for the run (``xrouter keys create``); the bare backend ignores keys.

    .venv/bin/python -m bench.streaming_ttft [--quick]

Writes bench-results/streaming_ttft.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import openai

from bench import gateway_stack

RESULTS = pathlib.Path("bench-results")


async def one(client: openai.AsyncOpenAI, model: str, extra: dict[str, Any]) -> tuple[float, float, str]:
    started = time.perf_counter()
    first, parts = None, []
    stream = await client.chat.completions.create(model=model, stream=True, extra_body=extra,
                                                  messages=[{"role": "user", "content": "count to twenty"}])
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                first = first or time.perf_counter()
                parts.append(choice.delta.content)
    return (first - started) * 1000, (time.perf_counter() - started) * 1000, "".join(parts)  # type: ignore[operator]


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(values), 2), "p50": round(statistics.median(values), 2),
            "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 2), "min": round(ordered[0], 2)}


async def measure(backend_url: str, xrouter_url: str, xrouter_key: str, requests: int) -> dict[str, Any]:
    direct = openai.AsyncOpenAI(base_url=backend_url, api_key="unused", max_retries=0)  # the backend ignores keys
    routed = openai.AsyncOpenAI(base_url=xrouter_url, api_key=xrouter_key, max_retries=0)
    paths = {"direct": (direct, "slow", {}), "xrouter": (routed, "xrouter", {"xrouter": {"policy": "fixed:slow"}})}
    for client, model, extra in paths.values():  # warm-up: connections, first-request paths
        await one(client, model, extra)
    ttft: dict[str, list[float]] = {name: [] for name in paths}
    total: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(requests):
        for name, (client, model, extra) in paths.items():
            first, whole, text = await one(client, model, extra)
            assert text.startswith("word"), text
            ttft[name].append(first)
            total[name].append(whole)
    await direct.close()
    await routed.close()
    added = [r - d for r, d in zip(ttft["xrouter"], ttft["direct"], strict=True)]
    return {name: {"ttft_ms": summary(ttft[name]), "total_ms": summary(total[name])} for name in paths} | {
        "added_ttft_ms": summary(added)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming_ttft")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    requests = 5 if args.quick else args.requests
    with tempfile.TemporaryDirectory() as home, gateway_stack.backend(gap_ms=50) as backend_url, \
            gateway_stack.ledger_database() as (database_url, ledger), \
            gateway_stack.xrouter(pathlib.Path(home), backend_url, database_url, "fixed:slow") as (xrouter_url, key):
        figures = asyncio.run(measure(backend_url, xrouter_url, key, requests))
    result = {"benchmark": "streaming_ttft", "requests_per_path": requests, "ledger": ledger,
              "backend": "20 tokens, 50 ms apart", "cpus": os.cpu_count(), **figures}
    print(f"TTFT over {requests} requests each ({ledger} ledger), ms:   mean    p50    p90")
    for name in ("direct", "xrouter", "added_ttft"):
        row = figures[name]["ttft_ms"] if name != "added_ttft" else figures["added_ttft_ms"]
        print(f"  {name:<12} {row['mean']:>20} {row['p50']:>6} {row['p90']:>6}")
    print(f"  total (to [DONE]) p50: direct {figures['direct']['total_ms']['p50']} ms, "
          f"xrouter {figures['xrouter']['total_ms']['p50']} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming_ttft.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
