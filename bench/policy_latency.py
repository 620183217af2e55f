"""Decision latency of the compact policy: everything the router spends deciding a turn, the query
encoder included (the issue's target: p50 ≤ 10 ms for a short prompt on this machine).

Measured on the first turn of fresh prompts (the encoder runs each time: no cache hit), for a short
prompt and for one at the encoder's 256-token limit, and on a later turn (encoder cached per
episode). The weights' values do not change the cost, so a checkpoint is built from a freshly
initialised network unless ``--checkpoint DIR`` names a trained one.

    .venv/bin/python -m bench.policy_latency [--quick] [--checkpoint DIR]

Writes bench-results/policy_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence

from xrouter.adapters.catalog import load_catalog
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.router.compact.checkpoint import load_policy, save
from xrouter.router.compact.encoder import ONNX_NAME, QueryEncoder, cache_dir
from xrouter.router.compact.features import Vocabulary
from xrouter.router.compact.network import CompactRouter
from xrouter.router.policy import CallOutcome, CallStatus, EpisodeState
from xrouter_training.environment import option_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "policy_latency.json"
SHORT = "Which is heavier, a kilogram of feathers or a kilogram of iron? A) feathers B) iron C) the same"
LONG_WORDS = ("The committee reviewed the quarterly figures and asked whether the new routing policy "
              "reduced spending without hurting answer quality for the customers who rely on it. ")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(policy, options, texts: list[str], second_turn: bool) -> list[float]:  # type: ignore[no-untyped-def]
    timings = []
    for text in texts:
        state = EpisodeState([("user", text)], list(options), 10.0, None, 3, 0)
        if second_turn:
            await policy.decide(state)  # encodes the query (cached for the episode)
            state.calls.append(CallOutcome(0, 1, options[0].id, "", 0.0, CallStatus.OK, text="C", attempted=True))
            state.turn = 2
        started = time.perf_counter()
        await policy.decide(state)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_latency")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoint", help="a trained checkpoint directory (default: a fresh network)")
    args = parser.parse_args(argv)
    options = [option_of(spec) for spec in load_catalog(DEFAULT_CATALOG).values()]
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(args.checkpoint) if args.checkpoint else pathlib.Path(tmp) / "ckpt"
        if not args.checkpoint:
            QueryEncoder.load()  # exports the encoder once if this machine has no cached copy
            vocabulary = Vocabulary(tuple(o.id for o in options), tuple(sorted({t for o in options for t in o.tags})))
            save(directory, CompactRouter(len(vocabulary.models), len(vocabulary.tags)), vocabulary,
                 cache_dir() / ONNX_NAME, {"version": "bench"})
        policy = load_policy(directory, options)
        count = 40 if args.quick else 300
        cases = {
            "short_prompt_first_turn": ([f"{SHORT} (case {i})" for i in range(count)], False),
            "256_token_prompt_first_turn": ([f"{i} " + LONG_WORDS * 12 for i in range(count)], False),
            "short_prompt_second_turn": ([f"{SHORT} (again {i})" for i in range(count)], True),
        }
        asyncio.run(measure(policy, options, [SHORT + " warm-up"] * 10, False))
        results = {}
        print(f"{'case':<30} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for name, (texts, second) in cases.items():
            timings = asyncio.run(measure(policy, options, texts, second))
            results[name] = {"p50_ms": statistics.median(timings), "p99_ms": percentile(timings, 0.99),
                             "mean_ms": statistics.fmean(timings), "decisions": len(timings)}
            row = results[name]
            print(f"{name:<30} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['mean_ms']:>8.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "compact policy decision latency (encoder included, one thread)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "pool_size": len(options), "target_p50_ms_short": 10.0, "results": results}, indent=2))
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
