"""What served verdicts say about a model's bias, against the truth: the winner's curse.

A policy trained without one outcome source serves its prompts as in ``bench.traffic_learning``
(500 requests, ε 0.1, each verdict learned at once). For every model, the residuals (verdict −
the network's own prediction) of the answers it returned are split by how the first call was
chosen — by the policy, or by exploration — and compared with the start's true bias: its mean
residual over the source's validation prompts, every model scored. A model is chosen on the prompts
where its prediction is too high, so the residuals of chosen answers are biased low; explored ones
are not, but there are few. This is why a calibration waits for its verdicts to show more than
noise (router/compact/memory.py, CALIBRATION_Z).

    .venv/bin/python -m bench.calibration_bias [--source routerbench] [--seed 2] [--calibration-z 0] [--quick]

Writes bench-results/calibration_bias.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
from collections.abc import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "calibration_bias.json"


async def measure(start: pathlib.Path, source: str, requests: int, seed: int, validation_prompts: int) -> dict:
    from xrouter.router.compact.checkpoint import load_policy
    from xrouter_training.environment import MixedEnvironment
    from xrouter_training.traffic import complete_prompts, simulate

    served: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: {"chosen": [], "explored": []})

    def on_verdict(policy, text, outcomes, explored) -> None:  # type: ignore[no-untyped-def]
        judged = [option for option in policy_options if option.id in outcomes]
        for option, predicted in zip(judged, policy.network_prediction(text, judged), strict=True):
            served[option.id]["explored" if explored else "chosen"].append(outcomes[option.id] - predicted)

    env = MixedEnvironment([source])
    pool = sorted(env.options)
    policy_options = [env.options[model] for model in pool]
    report = await simulate(start, None, source, requests, requests, 0.1, seed, on_verdict=on_verdict)
    fresh = load_policy(start, policy_options)
    truth: dict[str, list[float]] = collections.defaultdict(list)
    for prompt in complete_prompts(env, "validation", pool)[:validation_prompts]:
        for model, predicted in zip(pool, fresh.network_prediction(prompt.text, policy_options), strict=True):
            truth[model].append(env.scores[prompt.prompt_id][model] - predicted)

    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    models = {model: {"true_bias": mean(truth[model]),
                      "chosen": {"n": len(served[model]["chosen"]), "mean_residual": mean(served[model]["chosen"])},
                      "explored": {"n": len(served[model]["explored"]),
                                   "mean_residual": mean(served[model]["explored"])}} for model in pool}
    return {"source": source, "start": str(start), "seed": seed, "requests": requests,
            "validation_prompts": len(truth[pool[0]]) if pool else 0,
            "apgr": {"start": report["curve"][0]["apgr"], "after": report["curve"][-1]["apgr"]}, "models": models}


def main(argv: Sequence[str] | None = None) -> int:
    from bench.traffic_learning import start_checkpoint

    parser = argparse.ArgumentParser(prog="python -m bench.calibration_bias", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="routerbench")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--start", help="checkpoint trained without the source (default: trained as "
                        "bench.traffic_learning does)")
    parser.add_argument("--quick", action="store_true", help="tiny start, 40 requests (smoke run)")
    parser.add_argument("--calibration-z", type=float, help="the memory's CALIBRATION_Z for this run (0: every "
                        "calibration as measured, the memory before 2026-12-07)")
    args = parser.parse_args(argv)
    if args.calibration_z is not None:
        from xrouter.router.compact import memory

        memory.CALIBRATION_Z = args.calibration_z
    start = start_checkpoint(args.source, args.start, args.quick)
    requests, validation = (40, 40) if args.quick else (500, 300)
    report = asyncio.run(measure(start, args.source, requests, args.seed, validation))
    report["calibration_z"] = args.calibration_z
    print(f"{args.source}, seed {args.seed}: residual = verdict - the start's prediction")
    print(f"{'model':38s} {'true bias':>9s} {'chosen (n)':>16s} {'explored (n)':>16s}")

    def cell(part: dict) -> str:
        return f"{part['mean_residual']:+.3f} ({part['n']})" if part["n"] else "- (0)"

    for model, row in report["models"].items():
        print(f"{model[:38]:38s} {row['true_bias']:+9.3f} {cell(row['chosen']):>16s} {cell(row['explored']):>16s}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
