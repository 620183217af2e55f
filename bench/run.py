"""Run every benchmark in turn: ``python -m bench.run [--quick]`` (``make bench``).

Each benchmark is a module with ``main(argv) -> int`` that prints its table and writes
bench-results/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

BENCHMARKS = (
    "bench.grpc_round_trip",
    "bench.routing_overhead",
    "bench.metering_record",
    "bench.metering_flow",
    "bench.reward_verifiers",
    "bench.policy_latency",
    "bench.adapters_overhead",
    "bench.answer_checks",
    "bench.encoder_throughput",
    "bench.eval_throughput",
    "bench.memory_kernel",
    "bench.traffic_learning",
    "bench.traffic_learning_family",
    "bench.streaming_ttft",
    "bench.fresh_prompts",
    "bench.router_profile",
    "bench.lm_rollout_speed",
    "bench.lm_decision_latency",
    "bench.token_counting",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="Run all xrouter benchmarks.")
    parser.add_argument("--quick", action="store_true", help="short runs (CI smoke)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        if importlib.import_module(name).main(["--quick"] if args.quick else []) != 0:
            failed.append(name)
    print(f"\n{len(BENCHMARKS)} benchmark(s) in {time.perf_counter() - started:.1f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
