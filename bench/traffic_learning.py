"""Learning from the router's own traffic (training/xrouter_training/traffic.py), as a benchmark: a
policy trained without one outcome source serves that source's prompts with ε-exploration; each
answered request's recorded verdict goes into its outcome memory; APGR on the source's validation
prompts is measured every N requests, beside the frozen start and the ceiling (a policy trained
with the source: the bundled one unless ``--ceiling``).

The start is ``--start DIR``, else ``runs/gen/without-<source>/checkpoint`` (what ``xrouter
generalise --loso`` trains), else it is trained here with the default config less the source
(minutes; ``--quick``: the tiny config, a smoke run whose figures mean nothing).

    .venv/bin/python -m bench.traffic_learning [--quick] [--source llmrouter] [--requests 500]

Writes bench-results/traffic_learning.json and traffic_learning.png. With ``--task TASK`` the start
is trained without that task family of the source only (``runs/lotf/without-task-<source>-<task>``,
what ``xrouter generalise --lotf`` trains), and the traffic is that family's prompts: known models,
a new kind of request. Then bench-results/traffic_learning_<source>_<task>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import shutil
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"


def start_checkpoint(source: str, explicit: str | None, quick: bool, task: str | None = None) -> pathlib.Path:
    from xrouter_training.config import TrainConfig
    from xrouter_training.train import Trainer

    if explicit:
        return pathlib.Path(explicit)
    name = "mixed-tiny.yaml" if quick else "mixed.yaml"
    config = TrainConfig.from_file(ROOT / "training" / "configs" / name)
    if task:
        out = ROOT / "runs" / ("bench-tiny" if quick else "lotf") / f"without-task-{source}-{task}"
        config = dataclasses.replace(config, exclude_tasks=(f"{source}/{task}",))
    else:
        out = ROOT / "runs" / ("bench-tiny" if quick else "gen") / f"without-{source}"
        config = dataclasses.replace(config, sources=tuple(s for s in config.sources if s != source))
    if (out / "checkpoint" / "manifest.json").exists():
        return out / "checkpoint"
    print(f"training the start: {name} without {source}{'/' + task if task else ''} -> {out}", flush=True)
    return asyncio.run(Trainer(config, out).run())


def main(argv: Sequence[str] | None = None) -> int:
    from xrouter.router.policy_store import BUNDLED_POLICY
    from xrouter_training.traffic import run

    parser = argparse.ArgumentParser(prog="python -m bench.traffic_learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny start policy, 40 requests (smoke run)")
    parser.add_argument("--source", default="llmrouter")
    parser.add_argument("--task", help="one task family of the source: a start trained without that family only")
    parser.add_argument("--start", help="checkpoint trained without the source (the family, with --task)")
    parser.add_argument("--ceiling", help="checkpoint trained with it (default: the bundled policy)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--epsilon", type=float, default=0.1)
    parser.add_argument("--publish-gate", action="store_true",
                        help="learn as `xrouter learn` does every EVERY requests (publish only if not worse)")
    parser.add_argument("--fine-tune-epochs", type=int, default=0,
                        help="also fit the network to the verdicts so far every --fine-tune-every requests")
    parser.add_argument("--fine-tune-every", type=int, default=None, help="default 100; not with --publish-gate")
    args = parser.parse_args(argv)
    if args.fine_tune_every is not None and (not args.fine_tune_epochs or args.publish_gate):
        parser.error("--fine-tune-every: only with --fine-tune-epochs and without --publish-gate")
    requests, every = (40, 20) if args.quick else (args.requests, args.every)
    start = start_checkpoint(args.source, args.start, args.quick, args.task)
    ceiling = pathlib.Path(args.ceiling) if args.ceiling else BUNDLED_POLICY
    staging = RESULTS / "traffic_learning"
    report = run(start, ceiling, args.source, staging, requests, every, args.epsilon, publish_gate=args.publish_gate,
                 task=args.task, fine_tune_epochs=args.fine_tune_epochs,
                 fine_tune_every=min(args.fine_tune_every or 100, requests))
    stem = f"traffic_learning_{args.source}_{args.task}" if args.task else "traffic_learning"
    stem += "_fine_tuned" if args.fine_tune_epochs else ""
    for suffix in (".json", ".png"):
        shutil.move(staging / f"traffic_learning{suffix}", RESULTS / f"{stem}{suffix}")
    staging.rmdir()
    best = max(report["curve"], key=lambda row: row["apgr"])
    target = 0.95 * report["ceiling"]["apgr"]
    reached = next((row["requests"] for row in report["curve"] if row["apgr"] >= target), None)
    served = f"{args.source}/{args.task}" if args.task else args.source
    print(f"{served}: frozen start APGR {report['frozen_start_apgr']:.3f}; after {report['traffic']} requests "
          f"{report['curve'][-1]['apgr']:.3f} (best {best['apgr']:.3f}); ceiling {report['ceiling']['apgr']:.3f}; "
          f"95% of the ceiling " + (f"reached after {reached} requests" if reached is not None else "not reached"))
    if args.publish_gate:
        scores = report["publish_scores"]
        print(f"publish rule: {scores['published']} of {scores['decisions']} candidates published; "
              f"{scores['published_worse']} of those worse on the validation prompts, "
              f"{scores['held_back_better']} better ones held back")
    print(f"wrote {RESULTS / (stem + '.json')} and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
