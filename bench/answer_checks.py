"""What each cheap answer check is worth, per task, on recorded outcomes; and what it costs.

For every recorded (prompt, model, response, score) row of the bundled outcome sets
(routerbench.jsonl.gz, and routerarena.jsonl.gz / arena.jsonl.gz when present), each signal of
:mod:`xrouter.router.compact.answer_checks` is tallied per task: its coverage (share of answers it
applies to), P(correct | passes), P(correct | fails) and the counts, beside the task's base rate.
"Correct" is the recorded score (a mean, for sets with fractional scores). An answer that is
empty, a refusal or a placeholder is "unknown": it counts in the ``known`` signal only.

Sandbox signals (a process per answer):

- ``prompt_tests``: :func:`run_prompt_tests`, the prompt's own asserts. RouterBench's MBPP prompts
  carry none (the bare task text), so this also runs on the RouterBench MBPP prompts that match an
  MBPP row of tests/data/reward_sample.json, rewritten in MBPP's original prompt format with that
  row's asserts (set ``routerbench+mbpp-asserts``). The recorded answers were written without
  seeing those asserts (nor the function name they call), so this measures how the recorded
  label relates to the official tests, on few prompts.
  The same rows again with each answer's last function also bound to the tested name (``renamed``,
  a bench-only edit) estimate what the tests would say had the prompt named the function.
- ``answer_runs``: :func:`run_answer_code`, the answer's own code (examples included) runs to the
  end, on code prompts without asserts.

Timing: p50/p99 of ``check_answer`` per call over the recorded rows, warm (the prompt's analysis
cached, as within an episode) and cold (the cache cleared before every call).

    .venv/bin/python -m bench.answer_checks [--quick]

Writes bench-results/answer_checks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "answer_checks.json"
SAMPLE = ROOT / "tests" / "data" / "reward_sample.json"
SETS = ("routerbench.jsonl.gz", "routerarena.jsonl.gz", "arena.jsonl.gz", "llmrouter.jsonl.gz")
# MBPP's own prompt (Austin et al. 2021), as in the paper's few-shot harness.
MBPP_PROMPT = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n"
# (answer_runs rows per set, timing rows) per mode.
FULL = (100_000, 100_000)
QUICK = (120, 4_000)
TIMEOUT_S = 5.0


def load(path: pathlib.Path, warnings: list[str]) -> list[Any]:
    """The rows of an outcome set via ``read_outcomes``; if its validation refuses the file, the
    raw rows (the fields this bench reads), with the refusal kept as a warning in the results."""
    import gzip
    import types

    from xrouter.common.outcomes import read_outcomes

    try:
        return list(read_outcomes(path))
    except ValueError as error:
        warnings.append(f"read_outcomes refused {path.name} ({error}); read its rows unvalidated")
        print(f"  warning: {warnings[-1]}")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return [types.SimpleNamespace(**{k: row.get(k) for k in ("task", "prompt", "response", "score")})
                    for row in map(json.loads, handle)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def signals() -> dict[str, tuple[Callable[[Any], bool], Callable[[Any], bool]]]:
    """signal -> (applies(checks), passes(checks)); a content check never applies to an unknown answer."""
    def content(applies: str, value: str) -> tuple[Callable[[Any], bool], Callable[[Any], bool]]:
        return (lambda c: getattr(c, applies) and not c.unknown, lambda c: getattr(c, value) == 1.0)

    return {
        "known": (lambda c: True, lambda c: not c.unknown),
        "not_truncated": (lambda c: not c.unknown, lambda c: not c.truncated),
        "choice_found": content("choice_applies", "choice_found"),
        "number_found": content("number_applies", "number_found"),
        "code_parses": content("code_applies", "code_parses"),
        "defines_name": content("name_applies", "defines_name"),
    }


def tally(pairs: list[tuple[bool | None, float]], total: int) -> dict[str, Any]:
    """pairs: (passes, or None when not applicable; score)."""
    applied = [(p, s) for p, s in pairs if p is not None]
    passed = [s for p, s in applied if p]
    failed = [s for p, s in applied if not p]
    return {"coverage": round(len(applied) / total, 4) if total else 0.0, "applies": len(applied),
            "passes": len(passed), "fails": len(failed),
            "p_correct_if_pass": round(statistics.fmean(passed), 4) if passed else None,
            "p_correct_if_fail": round(statistics.fmean(failed), 4) if failed else None}


def cheap_table(rows: list[Any]) -> dict[str, Any]:
    from xrouter.router.compact.answer_checks import check_answer

    by_task: dict[str, list[tuple[Any, float]]] = collections.defaultdict(list)
    for row in rows:
        by_task[row.task].append((check_answer(row.prompt, row.response), float(row.score)))
    table = {}
    for task, checked in sorted(by_task.items()):
        entry: dict[str, Any] = {"answers": len(checked),
                                 "base_rate": round(statistics.fmean(s for _, s in checked), 4),
                                 "empty": sum(c.empty for c, _ in checked),
                                 "refusal": sum(c.refusal for c, _ in checked),
                                 "placeholder": sum(c.placeholder for c, _ in checked), "signals": {}}
        for name, (applies, passes) in signals().items():
            entry["signals"][name] = tally([(passes(c) if applies(c) else None, s) for c, s in checked],
                                           len(checked))
        table[task] = entry
    return table


async def sandbox_rows(cases: list[tuple[str, str, float]], runner: Any, box: Any) -> dict[str, Any]:
    """Run ``runner(prompt, answer)`` on every case, one at a time (latency, not throughput)."""
    results = []
    for prompt, answer, score in cases:
        result = await runner(prompt, answer, TIMEOUT_S, sandbox=box)
        results.append((result, score))
    applied = [(r.outcome == "passed", s) for r, s in results if r.applies]
    latencies = [r.latency_s * 1000 for r, _ in results if r.applies]
    row = tally([(p, s) for p, s in applied] + [(None, s) for r, s in results if not r.applies], len(results))
    row.update(answers=len(results), base_rate=round(statistics.fmean(s for _, s in results), 4) if results else None,
               mean_latency_ms=round(statistics.fmean(latencies), 1) if latencies else None,
               p50_latency_ms=round(statistics.median(latencies), 1) if latencies else None,
               p99_latency_ms=round(percentile(latencies, 0.99), 1) if latencies else None,
               outcomes=dict(collections.Counter(r.outcome for r, _ in results)))
    # What the run adds to the cheap parse check: the same tally among answers whose code parses.
    from xrouter.router.compact.answer_checks import check_answer

    parsed = [(r.outcome == "passed", s) for (prompt, answer, _), (r, s) in zip(cases, results, strict=True)
              if r.applies and check_answer(prompt, answer).code_parses == 1.0]
    row["given_code_parses"] = tally(parsed, len(parsed))
    return row


def sandbox_table(sets: dict[str, list[Any]], limit: int) -> dict[str, Any]:
    from xrouter.reward.sandbox import Sandbox, SandboxUnavailable
    from xrouter.router.compact.answer_checks import prompt_asserts, run_answer_code, run_prompt_tests

    box = Sandbox(max_parallel=1)
    try:
        box.probe()
    except SandboxUnavailable as error:
        print(f"  sandbox unavailable here ({error}): sandbox signals not measured")
        return {"unavailable": str(error)}
    table: dict[str, Any] = {}
    for name, rows in sets.items():
        with_tests = [(r.prompt, r.response, float(r.score)) for r in rows if prompt_asserts(r.prompt)]
        if with_tests:
            table[f"prompt_tests/{name}"] = asyncio.run(sandbox_rows(with_tests, run_prompt_tests, box))
        code = [r for r in rows if r.task in ("mbpp", "humaneval") or "code" in r.task.lower()]
        code = [r for r in code if not prompt_asserts(r.prompt)]
        random.Random(0).shuffle(code)
        if code:
            table[f"answer_runs/{name}"] = asyncio.run(sandbox_rows(
                [(r.prompt, r.response, float(r.score)) for r in code[:limit]], run_answer_code, box))
    # RouterBench MBPP prompts joined with the sample's official asserts.
    sample = json.loads(SAMPLE.read_text())["mbpp"]
    asserts = {row["text"].strip(): row["test_list"] for row in sample}
    joined = [(MBPP_PROMPT.format(text=r.prompt.strip(), tests="\n".join(asserts[r.prompt.strip()])),
               r.response, float(r.score))
              for r in sets.get("routerbench", []) if r.task == "mbpp" and r.prompt.strip() in asserts]
    if joined:
        table["prompt_tests/routerbench+mbpp-asserts"] = asyncio.run(sandbox_rows(joined, run_prompt_tests, box))
        aliased = [(prompt, _aliased(prompt, answer), score) for prompt, answer, score in joined]
        table["prompt_tests/routerbench+mbpp-asserts, renamed"] = asyncio.run(
            sandbox_rows(aliased, run_prompt_tests, box))
    for key, row in table.items():
        print(f"  {key:<42} n={row['answers']:>5} cov={row['coverage']:.2f} "
              f"P(ok|pass)={_fmt(row['p_correct_if_pass'])} P(ok|fail)={_fmt(row['p_correct_if_fail'])} "
              f"pass={row['passes']} fail={row['fails']} mean={row['mean_latency_ms']} ms", flush=True)
        given = row["given_code_parses"]
        print(f"  {'  ...among answers whose code parses':<42} n={given['applies']:>5} "
              f"P(ok|pass)={_fmt(given['p_correct_if_pass'])} P(ok|fail)={_fmt(given['p_correct_if_fail'])} "
              f"pass={given['passes']} fail={given['fails']}", flush=True)
    return table


def _aliased(prompt: str, answer: str) -> str:
    """Bench only: ``answer`` with its last top-level function also bound to the name the asserts
    call, when it does not define that name (the recorded answers never saw it)."""
    import ast

    from xrouter.router.compact.answer_checks import _analyse, answer_code

    name = _analyse(prompt).name
    code = answer_code(answer or "", name)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return answer
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not functions or name in functions:
        return answer
    return f"```python\n{code}\n{name} = {functions[-1]}\n```"


def timing(rows: list[Any], count: int) -> dict[str, Any]:
    from xrouter.router.compact import answer_checks

    picked = rows[:: max(1, len(rows) // count)][:count]
    for row in picked[:200]:  # warm-up: imports, regex caches
        answer_checks.check_answer(row.prompt, row.response)
    out = {}
    for mode in ("warm", "cold"):
        by_task: dict[str, list[float]] = collections.defaultdict(list)
        for row in picked:
            if mode == "cold":
                answer_checks._analyse.cache_clear()
            started = time.perf_counter()
            answer_checks.check_answer(row.prompt, row.response)
            by_task[row.task].append((time.perf_counter() - started) * 1e6)
        every = [t for ts in by_task.values() for t in ts]
        out[mode] = {task: {"calls": len(ts), "p50_us": round(statistics.median(ts), 1),
                            "p99_us": round(percentile(ts, 0.99), 1), "max_us": round(max(ts), 1)}
                     for task, ts in sorted({**by_task, "all": every}.items())}
    return out


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.answer_checks")
    parser.add_argument("--quick", action="store_true", help="fewer sandbox runs and timed calls")
    parser.add_argument("--no-sandbox", action="store_true", help="skip the sandbox signals")
    args = parser.parse_args(argv)
    from xrouter.common.outcomes import DATA_DIR

    run_limit, timed_calls = QUICK if args.quick else FULL
    warnings: list[str] = []
    sets = {name.split(".")[0]: load(DATA_DIR / name, warnings) for name in SETS if (DATA_DIR / name).exists()}
    for name in [name for name, rows in sets.items() if not any(r.response for r in rows)]:
        warnings.append(f"{name}: no row records an answer text (scores only): nothing to check")
        print(f"  {warnings[-1]}")
        del sets[name]
    print(f"outcome sets: {', '.join(f'{k} ({len(v)} rows)' for k, v in sets.items())}")
    cheap = {name: cheap_table(rows) for name, rows in sets.items()}
    print(f"{'set/task':<34} {'signal':<14} {'cover':>6} {'n':>6} {'pass':>6} {'P(ok|pass)':>10} "
          f"{'P(ok|fail)':>10} {'base':>6}")
    for name, tasks in cheap.items():
        for task, entry in tasks.items():
            for signal, row in entry["signals"].items():
                if row["applies"] and row["fails"]:
                    print(f"{name + '/' + task:<34} {signal:<14} {row['coverage']:>6.2f} {row['applies']:>6} "
                          f"{row['passes']:>6} {_fmt(row['p_correct_if_pass']):>10} "
                          f"{_fmt(row['p_correct_if_fail']):>10} {entry['base_rate']:>6.3f}")
    every = [r for rows in sets.values() for r in rows]
    times = timing(every, timed_calls)
    for mode, tasks in times.items():
        row = tasks["all"]
        print(f"check_answer {mode}: p50 {row['p50_us']:.1f} us, p99 {row['p99_us']:.1f} us, "
              f"max {row['max_us']:.1f} us over {row['calls']} calls")
    sandbox = {} if args.no_sandbox else sandbox_table(sets, run_limit)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "cheap answer checks: coverage and P(correct | pass / fail) per task; latency",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "quick": args.quick, "warnings": warnings, "sets": {k: len(v) for k, v in sets.items()},
        "signals": cheap, "check_answer_timing": times, "sandbox": sandbox}, indent=2))
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
