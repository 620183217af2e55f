"""Proof of the verifiers on real data: ``python -m xrouter.reward.proof [--quick] [--only ...]``.

GSM8K and MATH-500 through the math verifier (in its worker processes), MBPP and HumanEval through
the code sandbox, RouterBench through the multiple-choice extractor. Every case whose score is not
the one it must be is listed in bench-results/reward_proof.json, for a person to inspect.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from xrouter.reward.proof import routerbench
from xrouter.reward.proof.cases import (DEFAULT_DATA, Case, gsm8k_cases, humaneval_cases,
                                        math500_cases, mbpp_cases, read_jsonl, tally)
from xrouter.reward.sandbox import Sandbox, SandboxLimits
from xrouter.reward.verifiers import MathVerifier, Verdict, verify_code

ROOT = pathlib.Path(__file__).resolve().parents[4]
RESULTS = ROOT / "bench-results" / "reward_proof.json"
SECTIONS = ("gsm8k", "math500", "mbpp", "humaneval", "routerbench")
QUICK_ITEMS = 60  # items per set in --quick


def run_cases(name: str, cases: list[Case], verify: Callable[[Case], Verdict],
              parallel: int) -> dict[str, Any]:
    """Score every case (``parallel`` at once), showing progress; the tally and the misses."""
    started = time.perf_counter()
    verdicts: list[Verdict | None] = [None] * len(cases)
    step = max(1, len(cases) // 10)

    def one(index: int) -> None:
        verdicts[index] = verify(cases[index])
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for done, _ in enumerate(pool.map(one, range(len(cases))), 1):
            if done % step == 0 or done == len(cases):
                print(f"  {name}: {done}/{len(cases)} ({time.perf_counter() - started:.0f}s)",
                      file=sys.stderr, flush=True)
    scores = [v.score if v else float("nan") for v in verdicts]
    misses = [{"source": c.source, "kind": c.kind, "expected": c.expected, "got": v.score,
               "detail": v.detail, "response": c.response[-300:]}
              for c, v in zip(cases, verdicts, strict=True) if v is not None and v.score != c.expected]
    return {"cases": len(cases), "as_expected": len(cases) - len(misses),
            "seconds": round(time.perf_counter() - started, 1), "by_kind": tally(cases, scores),
            "misses": misses}


def _sample(rows: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    return random.Random(0).sample(rows, min(QUICK_ITEMS, len(rows))) if quick else rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proof, print the figures, write bench-results/reward_proof.json."""
    parser = argparse.ArgumentParser(prog="python -m xrouter.reward.proof", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA, help="the benchmarks folder")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ITEMS} items per set")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--write-sample", type=pathlib.Path, metavar="PATH",
                        help="write the fixed sample the tests use to PATH and stop")
    args = parser.parse_args(argv)
    if args.write_sample:
        write_sample(args.data, args.write_sample)
        return 0
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    parallel = os.cpu_count() or 2
    report: dict[str, Any] = {"started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "mode": "quick" if args.quick else "full", "data": str(args.data), "sections": {}}
    math = MathVerifier(workers=parallel, deadline_s=30.0) if {"gsm8k", "math500"} & set(sections) else None
    # The service's default limits, but a longer wall limit: this run loads the machine itself.
    sandbox = Sandbox(dataclasses.replace(SandboxLimits(), wall_s=90.0), max_parallel=parallel) \
        if {"mbpp", "humaneval"} & set(sections) else None
    try:
        for section in sections:
            print(f"== {section}", file=sys.stderr, flush=True)
            if section == "routerbench":
                result = routerbench.agreement()
            elif section in ("gsm8k", "math500"):
                assert math is not None
                if section == "gsm8k":
                    cases = [c for split in ("test", "train")
                             for c in gsm8k_cases(_sample(read_jsonl(args.data / f"gsm8k.{split}.jsonl.gz"), args.quick), split)]
                else:
                    cases = list(math500_cases(_sample(read_jsonl(args.data / "math500.test.jsonl.gz"), args.quick)))
                result = run_cases(section, cases, lambda c: math.verify(c.response, c.gold), parallel)
            else:
                assert sandbox is not None
                rows = _sample(read_jsonl(args.data / f"{section}.jsonl.gz"), args.quick)
                cases = list(mbpp_cases(rows) if section == "mbpp" else humaneval_cases(rows))
                result = run_cases(section, cases, lambda c: verify_code(c.response, c.tests, sandbox),
                                   parallel)
            report["sections"][section] = result
            print(summary_line(section, result), flush=True)
    finally:
        if math is not None:
            math.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# Items the tests run (tests/data/reward_sample.json): a fixed random draw, plus the MBPP tasks
# whose set-up code needs the solution's classes (the proof found the order mattered).
SAMPLE = {"gsm8k.test": 12, "math500.test": 40, "mbpp": 14, "humaneval": 8}
MBPP_WITH_SETUP = (367, 927)


def write_sample(data: pathlib.Path, path: pathlib.Path) -> None:
    """A small, fixed slice of each set (with its provenance) for the tests."""
    sample: dict[str, Any] = {
        "provenance": "Drawn by `python -m xrouter.reward.proof --write-sample` (seed 0) from "
                      "../shared/data/benchmarks: GSM8K (MIT, OpenAI grade-school-math), MATH-500 "
                      "(MIT, MATH), MBPP (CC-BY-4.0, Google Research), HumanEval (MIT, OpenAI)."}
    for name, count in SAMPLE.items():
        rows = read_jsonl(data / f"{name}.jsonl.gz")
        chosen = random.Random(0).sample(rows, count)
        if name == "mbpp":
            chosen += [r for r in rows if r["task_id"] in MBPP_WITH_SETUP and r not in chosen]
        sample[name.split(".")[0]] = chosen
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sample, indent=1) + "\n")
    print(f"wrote {path}: " + ", ".join(f"{k} {len(v)}" for k, v in sample.items() if k != "provenance"))


def summary_line(section: str, result: dict[str, Any]) -> str:
    """One printable line per section, with a line per kind of case below it."""
    if section == "routerbench":
        return (f"{section}: {result['agree']}/{result['rows']} rows agree ({result['agreement']:.3%}); "
                f"{len(result['disagreements'])} disagreements listed")
    lines = [f"{section}: {result['as_expected']}/{result['cases']} as expected in {result['seconds']}s"]
    for kind, counts in result["by_kind"].items():
        lines.append(f"    {kind}: {counts['as expected']}/{counts['cases']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
