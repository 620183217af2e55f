"""Reward verifiers: verifications per second for each verifier on this machine, sandbox included.

Inputs are real: RouterBench's recorded answers (multiple choice, recorded labels, exact match and
token F1 against the prompt's recorded answers), and the fixed GSM8K / MATH-500 / MBPP / HumanEval
sample the tests use (tests/data/reward_sample.json), repeated to the run's length.

- cheap verifiers run sequentially in this process;
- math runs both in this process (main thread, sequential) and in the service's killable worker
  pool (one worker per CPU, as many calls in flight);
- code runs in the real sandbox, sequentially (latency) and one per CPU (throughput), beside a
  plain ``python -c pass`` subprocess measured in the same run, so the sandbox's own cost reads as a
  ratio on a noisy machine;
- the judge is timed through a real adapters gRPC server to an instant in-process model: the
  reward side's own cost (prompt, gRPC, parse), not a model's.

    .venv/bin/python -m bench.reward_verifiers [--quick]

Writes bench-results/reward.json (and reward.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "reward.json"
SAMPLE = ROOT / "tests" / "data" / "reward_sample.json"
# (cheap items, math items, code runs) per mode.
FULL = (20_000, 400, 120)
QUICK = (2_000, 40, 16)


def timed(name: str, calls: Callable[[], int], note: str = "") -> dict[str, Any]:
    """Run ``calls`` (which returns how many verifications it did) and report the rate."""
    started = time.perf_counter()
    count = calls()
    seconds = time.perf_counter() - started
    row = {"verifier": name, "verifications": count, "seconds": round(seconds, 3),
           "per_second": round(count / seconds, 1), "note": note}
    print(f"  {name:<34} {row['per_second']:>10.1f}/s  ({count} in {seconds:.2f}s) {note}",
          flush=True)
    return row


def cheap_rows(items: int) -> list[dict[str, Any]]:
    from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
    from xrouter.reward.proof.routerbench import OPTIONS
    from xrouter.reward.verifiers import RecordedLabels, exact_match, multiple_choice, token_f1

    rows = [r for r in read_outcomes(ROUTERBENCH) if r.response is not None]
    labels = RecordedLabels(rows, name="routerbench")
    choice = [r for r in rows if r.task in OPTIONS][:items]
    texts = [(r.response or "", rows[(i * 7919) % len(rows)].response or "") for i, r in enumerate(rows[:items])]
    lookups = rows[:items]
    return [
        timed("multiple_choice", lambda: sum(1 for r in choice if multiple_choice(
            r.response or "", "A", OPTIONS[r.task]) is not None), "RouterBench ARC/Winogrande answers"),
        timed("exact_match", lambda: sum(1 for a, b in texts if exact_match(a, b)), "pairs of recorded answers"),
        timed("token_f1", lambda: sum(1 for a, b in texts if token_f1(a, b)), "pairs of recorded answers"),
        timed("recorded_label", lambda: sum(1 for r in lookups if labels.verdict(r.prompt_id, r.response or "")),
              "RouterBench lookups"),
    ]


def math_rows(sample: dict[str, Any], items: int) -> list[dict[str, Any]]:
    from xrouter.reward.proof.cases import gsm8k_cases, math500_cases
    from xrouter.reward.verifiers import MathVerifier, verify_math
    from xrouter.reward.verifiers.math import warm_up

    cases = list(gsm8k_cases(sample["gsm8k"], "test")) + list(math500_cases(sample["math500"]))
    work = [cases[i % len(cases)] for i in range(items)]
    warm_up()  # the same start-up as each worker's, outside the timing
    rows = [timed("math (in process)", lambda: sum(1 for c in work if verify_math(c.response, c.gold)),
                  "GSM8K + MATH-500 sample cases, main thread")]
    workers = os.cpu_count() or 2
    pool = MathVerifier(workers=workers, deadline_s=30.0)
    try:
        pool.start()

        def pooled() -> int:
            with ThreadPoolExecutor(workers) as threads:
                return sum(1 for _ in threads.map(lambda c: pool.verify(c.response, c.gold), work))
        rows.append(timed(f"math (worker pool x{workers})", pooled, "what the service runs"))
    finally:
        pool.close()
    return rows


def code_rows(sample: dict[str, Any], runs: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from xrouter.reward.proof.cases import humaneval_cases, mbpp_cases
    from xrouter.reward.sandbox import Sandbox
    from xrouter.reward.verifiers import verify_code

    cases = [c for c in list(mbpp_cases(sample["mbpp"])) + list(humaneval_cases(sample["humaneval"]))
             if c.kind in ("canonical solution", "canonical completion", "functions return None",
                           "body returns None")]
    work = [cases[i % len(cases)] for i in range(runs)]
    workers = os.cpu_count() or 2
    sandbox = Sandbox(max_parallel=workers)
    sandbox.probe()
    latencies: list[float] = []

    def one(case: Any) -> None:
        started = time.perf_counter()
        verdict = verify_code(case.response, case.tests, sandbox)
        latencies.append(time.perf_counter() - started)
        if verdict.score != case.expected:
            raise RuntimeError(f"{case.source} {case.kind}: {verdict.detail}")

    def plain_python() -> int:
        for _ in range(runs):
            subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        return runs

    rows = [timed("python -c pass (baseline)", plain_python, "bare interpreter start, no sandbox")]
    rows.append(timed("code sandbox (sequential)", lambda: sum(1 for c in work if one(c) is None),
                      "MBPP + HumanEval sample, right and wrong"))
    sequential = sorted(latencies)
    latencies.clear()

    def parallel() -> int:
        with ThreadPoolExecutor(workers) as threads:
            return sum(1 for _ in threads.map(one, work))
    rows.append(timed(f"code sandbox (x{workers} parallel)", parallel, "what the service runs"))
    trivial = [sandbox.run("pass").wall_s for _ in range(min(runs, 30))]
    latency = {"sequential_p50_s": round(statistics.median(sequential), 4),
               "sequential_p95_s": round(sequential[int(0.95 * (len(sequential) - 1))], 4),
               "trivial_program_p50_s": round(statistics.median(trivial), 4),
               "sandbox_vs_bare_python": round(rows[0]["per_second"] / rows[1]["per_second"], 2)}
    print(f"  sandbox latency {latency}", flush=True)
    return rows, latency


def judge_row(items: int) -> dict[str, Any]:
    import grpc
    from opentelemetry.sdk.trace import TracerProvider

    from xrouter.adapters.backends import BackendReply
    from xrouter.adapters.catalog import ModelSpec
    from xrouter.adapters.core import AdapterCore
    from xrouter.adapters.server import register
    from xrouter.common.grpc_server import GrpcServer
    from xrouter.reward.verifiers.judge import Judge

    class InstantJudge:
        async def invoke(self, spec, messages, temperature, max_tokens):  # type: ignore[no-untyped-def]
            return BackendReply("Fine.\nSCORE: 7", 100, 5, True, "stop")

    async def run() -> int:
        spec = ModelSpec("judge", "instant", Decimal(1), Decimal(1), 4096, 512, "instant judge")
        server = GrpcServer("adapters", register(AdapterCore({"judge": spec}, {"instant": InstantJudge()})),
                            TracerProvider())
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            judge = Judge(channel, "judge")
            semaphore = asyncio.Semaphore(16)

            async def one(number: int) -> None:
                async with semaphore:
                    verdict = await judge.judge(f"question {number}", "an answer")
                    assert verdict.score == 0.7
            await asyncio.gather(*(one(i) for i in range(items)))
        await server.stop(0)
        return items
    return timed("judge (instant model, 16 in flight)", lambda: asyncio.run(run()),
                 "prompt + gRPC to the adapters + strict parse; no model time")


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> bool:
    """A bar chart of the rates (log scale), when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    axis.barh([r["verifier"] for r in rows][::-1], [r["per_second"] for r in rows][::-1], color="#4a7ab5")
    axis.set_xscale("log")
    axis.set_xlabel("verifications per second (log scale)")
    axis.set_title("xrouter reward verifiers on this machine")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write bench-results/reward.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.reward_verifiers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (CI smoke)")
    args = parser.parse_args(argv)
    cheap, maths, runs = QUICK if args.quick else FULL
    sample = json.loads(SAMPLE.read_text())
    began = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    rows = cheap_rows(cheap) + math_rows(sample, maths)
    code, latency = code_rows(sample, runs)
    rows += code + [judge_row(cheap // 10)]
    result = {
        "benchmark": "reward_verifiers", "mode": "quick" if args.quick else "full",
        "started_at": began.isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
        "rates": rows, "sandbox_latency": latency,
        "note": "machines are shared and noisy: compare ratios within one run",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    drew = plot(rows, RESULTS.with_suffix(".png"))
    print(f"wrote {RESULTS}" + (f" and {RESULTS.with_suffix('.png').name}" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
