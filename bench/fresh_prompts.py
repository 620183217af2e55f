"""The compact policy with a new prompt on every request: what ``make bench-gateway`` cannot show,
since h2load repeats one body and the router encodes a repeated prompt once. Here every request
has a prompt never seen before, so the query encoder and the outcome memory's neighbour search run
each time, as they do for real traffic.

The compact stack of bench.gateway (four service processes, Postgres ledger, the bundled policy
over two instant bench models) is loaded by an aiohttp client at c = 1 and 16, with short prompts
(~25 tokens) and long ones (~200 tokens); the fixed policy on the same prompts is the reference.
Figures: req/s, latency, CPU ms per request per process role (bench/cpu_use.py). The client runs on
the same 2 cores, so compare rows of one run, not with h2load's figures.

    .venv/bin/python -m bench.fresh_prompts [--quick]

Writes bench-results/fresh_prompts.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench import cpu_use, gateway_stack
from xrouter.router.policy_store import BUNDLED_POLICY

RESULTS = pathlib.Path("bench-results") / "fresh_prompts.json"
WORDS = ("the committee reviewed quarterly figures and asked whether routing reduced spending without "
         "hurting answer quality for customers who rely on it").split()
LENGTHS = {"short": 20, "long": 160}  # words; ~25 and ~200 tokens
CONCURRENCY = (1, 16)
_numbers = itertools.count()


def prompt(words: int) -> str:
    """A prompt no request has had before (a counter leads it; the words rotate)."""
    number = next(_numbers)
    return f"Request {number}: " + " ".join(WORDS[(number * 7 + k) % len(WORDS)] for k in range(words)) + "?"


async def load(url: str, key: str, policy: dict[str, Any], words: int, clients: int,
               seconds: float) -> list[float]:
    """Each client sends one request at a time for ``seconds``; every request's seconds."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        stop = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                body = {"model": "xrouter", "messages": [{"role": "user", "content": prompt(words)}], **policy}
                started = time.perf_counter()
                async with session.post(f"{url}/chat/completions", json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                latencies.append(time.perf_counter() - started)
        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def figures(latencies: list[float], seconds: float, cpu: dict[str, float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in latencies)
    return {"req_per_s": round(len(ms) / seconds, 1), "requests": len(ms), "mean_ms": round(statistics.fmean(ms), 2),
            "p50_ms": round(ms[len(ms) // 2], 2), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2),
            "cpu_ms_per_request": cpu}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fresh_prompts")
    parser.add_argument("--quick", action="store_true", help="2 s per point instead of 6")
    args = parser.parse_args(argv)
    seconds = 2.0 if args.quick else 6.0
    result: dict[str, Any] = {"benchmark": "fresh_prompts", "cpus": os.cpu_count(), "seconds_per_point": seconds,
                              "words": LENGTHS, "load": {}}
    policies = {"compact": {}, "fixed": {"xrouter": {"policy": "fixed:instant"}}}
    with tempfile.TemporaryDirectory() as folder, gateway_stack.backend(gap_ms=50) as backend, \
            gateway_stack.ledger_database() as (database_url, result["ledger"]):
        with gateway_stack.xrouter(pathlib.Path(folder), backend, database_url, str(BUNDLED_POLICY),
                                   models=("instant", "instant-b")) as (url, key):
            asyncio.run(load(url, key, {}, LENGTHS["short"], 2, 1.0))  # warm-up
            for (name, policy), (length, words), clients in itertools.product(policies.items(), LENGTHS.items(),
                                                                               CONCURRENCY):
                before = cpu_use.snapshot()
                latencies = asyncio.run(load(url, key, policy, words, clients, seconds))
                row = figures(latencies, seconds, cpu_use.per_request_ms(before, cpu_use.snapshot(), len(latencies)))
                result["load"].setdefault(name, {}).setdefault(length, {})[f"c{clients}"] = row
                print(f"  {name:<8} {length:<6} c={clients:<3} {row['req_per_s']:7.1f} req/s  mean {row['mean_ms']:7.2f} ms"
                      f"  router CPU {row['cpu_ms_per_request'].get('router', 0):6.2f} ms/request", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {RESULTS.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
