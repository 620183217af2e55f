"""Evaluation throughput: episodes per second that ``xrouter eval`` plays through the router's own
episode loop on replayed outcomes (replay backend, recorded-label verifier, reward), for the
``cascade`` baseline, the kNN baseline and, when one exists, a learned checkpoint.

N validation prompts of one bundled source × a λ grid, played once per policy, on one thread.
Setup (reading the set, building the replay, embedding the prompts for kNN) is timed apart.
The checkpoint is ``--checkpoint DIR``, else the newest ``runs/*/checkpoint``, else the bundled
policy; with none of them the row is skipped with a note.

    .venv/bin/python -m bench.eval_throughput [--quick] [--prompts N] [--source NAME] [--checkpoint DIR]

Writes bench-results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import time
from collections.abc import Sequence


from xrouter.router.baselines import make_baseline
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.eval_baselines import KnnPolicy, KnnRouter, OutcomeTable
from xrouter_training.evaluate import EvalConfig, EvalError, default_embedder, load_checkpoint_policy, plan_evaluation
from xrouter_training.evaluate_sources import resolve_sources

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "eval_throughput.json"
LAMBDAS = (0.0, 10.0, 100.0, 1000.0)


def find_checkpoint(explicit: str | None) -> tuple[pathlib.Path | None, str]:
    from xrouter.router.policy_store import BUNDLED_POLICY

    if explicit:
        return pathlib.Path(explicit), "--checkpoint"
    if BUNDLED_POLICY.is_dir():
        return BUNDLED_POLICY, "bundled policy"
    runs = sorted((ROOT / "runs").glob("*/checkpoint"), key=lambda p: p.stat().st_mtime)
    if runs:
        return runs[-1], "newest runs/*/checkpoint"
    return None, "no bundled policy and no runs/*/checkpoint"


async def play(env: ReplayEnvironment, policy, prompts, pool, lambdas) -> float:  # type: ignore[no-untyped-def]
    """As ``xrouter eval`` plays: a policy that batches its decisions plays every prompt at once."""
    started = time.perf_counter()
    batched = getattr(policy, "batched", None)
    for cost_lambda in lambdas:
        if batched:
            with batched():
                await asyncio.gather(*(env.play(policy, prompt, pool, cost_lambda, 3) for prompt in prompts))
        else:
            for prompt in prompts:
                await env.play(policy, prompt, pool, cost_lambda, 3)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--prompts", type=int, help="validation prompts (default 200, 40 with --quick)")
    parser.add_argument("--source", default="routerbench", help="bundled source (default routerbench)")
    parser.add_argument("--checkpoint", help="a checkpoint directory for the learned-policy row")
    args = parser.parse_args(argv)
    count = args.prompts or (40 if args.quick else 200)
    try:
        source = resolve_sources(args.source)[args.source]
        config = EvalConfig(pathlib.Path(source.data), "cascade", ROOT / "bench-results", lambdas=LAMBDAS,
                            catalog=pathlib.Path(source.catalog), limit=count, allow_partial=True, progress=False)
        started = time.perf_counter()
        pool, _, selection = plan_evaluation(config)
        env = ReplayEnvironment(config.data, config.catalog)
        table = OutcomeTable.from_file(config.data, env.options)
    except EvalError as error:
        print(f"error: {error}")
        return 1
    prompts = selection.prompts
    setup_s = time.perf_counter() - started
    policies, notes = {"cascade": make_baseline("cascade", set(env.options))}, {}
    started = time.perf_counter()
    embed = default_embedder(progress=False)
    train = [p for p in env.split("train") if p.prompt_id in table.scores]
    vectors = embed(train)
    policies["knn"] = KnnPolicy(KnnRouter(vectors, table, pool, None, LAMBDAS), embed(prompts), table)
    knn_setup_s = time.perf_counter() - started
    checkpoint, why = find_checkpoint(args.checkpoint)
    if checkpoint is None:
        notes["checkpoint"] = f"skipped: {why}"
    else:
        try:
            policies[f"checkpoint:{checkpoint.name}"] = load_checkpoint_policy(checkpoint, list(env.options.values()))
            notes["checkpoint"] = f"{checkpoint} ({why})"
        except EvalError as error:
            notes["checkpoint"] = f"skipped: {error}"
    results = {}
    print(f"{len(prompts)} validation prompts of {args.source} × {len(LAMBDAS)} λ, pool of {len(pool)}")
    print(f"{'policy':<36} {'episodes':>9} {'seconds':>8} {'episodes/s':>11}")
    for name, policy in policies.items():
        # Warm-up over every prompt: the learned policy embeds each query once (as training and
        # evaluation do before playing); what is timed is the episodes, not the encoder.
        asyncio.run(play(env, policy, prompts, pool, LAMBDAS[:1]))
        seconds = asyncio.run(play(env, policy, prompts, pool, LAMBDAS))
        episodes = len(prompts) * len(LAMBDAS)
        results[name] = {"episodes": episodes, "seconds": seconds, "episodes_per_s": episodes / seconds}
        print(f"{name:<36} {episodes:>9} {seconds:>8.2f} {episodes / seconds:>11.1f}")
    for key, note in notes.items():
        print(f"note ({key}): {note}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "xrouter eval episodes per second (replay + verifier + reward, one thread; the learned "
                     "policy batched as xrouter eval plays it, its query embeddings computed beforehand)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "source": args.source, "prompts": len(prompts), "skipped_prompts": len(selection.skipped),
        "lambdas": list(LAMBDAS), "pool_size": len(pool), "setup_s": setup_s, "knn_setup_s": knn_setup_s,
        "results": results, "notes": notes}, indent=2) + "\n")
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
