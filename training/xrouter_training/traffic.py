"""Learning from the router's own traffic, simulated on recorded outcomes (``xrouter learn-sim``,
part of ``make bench``).

A policy trained without one outcome source (the leave-one-source-out checkpoint: the source's
prompts, task families and models are all new to it) serves that source's train-split prompts as
traffic, with ε-exploration of the first call (favouring the models the memory knows least). Each answered request's verdict — the
recorded score of the answer it returned, as a user's thumbs or the reward service would give it —
is added to the policy's outcome memory at once, with the network's own prediction so that its
residual calibrates the model (router/compact/memory.py). Every ``every``
requests the greedy policy is evaluated on the source's validation prompts (never served) over a λ
grid: APGR against the frozen start and the ceiling (the policy trained with the source), plotted
against requests served.

Why the memory first: a verdict on (prompt, model) is a label for that pair whichever policy chose
it, so adding it needs no importance weight and no second training stack, and the next request
already routes with it. The memory alone stalls far below the ceiling on a new kind of traffic,
though: ``--fine-tune-epochs`` also fits the network to the verdicts (fine_tune.py)."""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import random
import time
from collections.abc import Callable, Sequence

import numpy as np

from xrouter.router.compact.checkpoint import load_policy, read_manifest
from xrouter.router.compact.memory import OutcomeMemory
from xrouter.router.compact.policy import CompactPolicy
from xrouter.router.exploration import ExploringPolicy
from xrouter.router.policy import ModelOption
from xrouter_training.environment import MixedEnvironment, Prompt
from xrouter_training.fine_tune import Verdicts, fine_tune, replay_environment
from xrouter_training.learn import Lesson, hold_back
from xrouter_training.publish_rule import PUBLISH, judge
from xrouter_training.metrics import CurvePoint, GapMetrics, Reference

LAMBDAS = (0.0, 10.0, 100.0, 1000.0, 10000.0)


def references(env: MixedEnvironment, prompts: Sequence[Prompt], pool: Sequence[str]) -> GapMetrics:
    """Weak = the cheapest single model on these prompts, strong = the most accurate (metrics.py)."""
    refs = [Reference(m, float(np.mean([env.scores[p.prompt_id][m] for p in prompts])),
                      float(np.mean([env.costs[p.prompt_id][m] for p in prompts]))) for m in pool]
    weak = min(refs, key=lambda r: (r.cost_usd, -r.accuracy))
    strong = max(refs, key=lambda r: (r.accuracy, -r.cost_usd))
    return GapMetrics(weak, strong)


async def frontier(policy: CompactPolicy, env: MixedEnvironment, prompts: Sequence[Prompt], pool: Sequence[str],
                   lambdas: Sequence[float]) -> list[CurvePoint]:
    points = []
    for cost_lambda in lambdas:
        with policy.batched():
            episodes = await asyncio.gather(*(env.play(policy, p, pool, cost_lambda) for p in prompts))
        points.append(CurvePoint(float(np.mean([e.cost_usd for e in episodes])),
                                 float(np.mean([e.score for e in episodes])), cost_lambda))
    return points


def complete_prompts(env: MixedEnvironment, split: str, pool: Sequence[str]) -> list[Prompt]:
    return [p for p in env.split(split) if set(pool) <= env.answered[p.prompt_id]]


async def simulate(start: pathlib.Path, ceiling: pathlib.Path | None, source: str, requests: int, every: int,
                   epsilon: float, seed: int, lambdas: Sequence[float] = LAMBDAS, verdicts: str = "returned",
                   publish_gate: bool = False, on_verdict: Callable[..., None] | None = None,
                   task: str | None = None, fine_tune_epochs: int = 0, fine_tune_every: int = 100) -> dict:
    """``verdicts``: "returned" — the score of the answer the user got (a thumbs up/down); "called" —
    every answered call scored (a request carrying a reference, scored by the reward service).
    ``publish_gate``: what the product does (``xrouter learn`` every ``every`` requests): the verdicts
    not yet learned, less the newest 20% held back, go into a candidate, which serves only if the
    publish rule passes on the held-back ones; otherwise they wait for the next run.
    ``on_verdict(policy, text, outcomes, explored)``: called with each request's verdicts before the
    serving policy learns them (``explored``: its first call was drawn by exploration).
    ``task``: serve and evaluate only the source's prompts of this task family (the start trained
    without it, ``exclude_tasks``: a platform team's new kind of traffic on models the router knows).
    ``fine_tune_epochs``: also fit the network to every verdict so far, from the start's weights,
    every ``fine_tune_every`` requests (fine_tune.py; 0: the memory alone learns); behind the publish
    gate, each candidate is fine-tuned on the verdicts it learns, as ``xrouter learn`` does."""
    if verdicts not in ("returned", "called"):
        raise ValueError(f"verdicts must be 'returned' or 'called', got {verdicts!r}")
    if publish_gate and verdicts != "returned":
        raise ValueError("publish_gate: xrouter learn learns the returned answer's verdict; use verdicts='returned'")
    env = MixedEnvironment([source])
    options = list(env.options.values())
    pool = sorted(env.options)
    validation, traffic = complete_prompts(env, "validation", pool), complete_prompts(env, "train", pool)
    if task is not None:
        validation, traffic = ([p for p in prompts if p.task == task] for prompts in (validation, traffic))
        if not validation or not traffic:
            raise ValueError(f"task: {source} has no prompt of {task!r} in both splits")
    random.Random(seed).shuffle(traffic)
    traffic = traffic[:requests]
    gap = references(env, validation, pool)
    policy = _learner(start, options)
    behaviour = ExploringPolicy(policy, epsilon, seed)
    replay = replay_environment(read_manifest(start)) if fine_tune_epochs else None
    start_weights = {k: v.clone() for k, v in policy.network.state_dict().items()}
    heard: list[Verdicts] = []  # every verdict so far (fine-tuning refits them all from the start)
    fine_tunes: list[dict] = []
    rng = random.Random(seed + 1)
    curve = []
    learned: list[Lesson] = []  # publish_gate: verdicts the serving policy holds, and those waiting
    waiting: list[Lesson] = []
    decisions: list[dict] = []

    async def measure(served: int) -> None:
        points = await frontier(policy, env, validation, pool, lambdas)
        curve.append({"requests": served, "apgr": gap.apgr(points), "memory_rows": len(policy.memory),
                      "points": [vars(p) for p in points]})
        print(f"  {served:>5} requests served: APGR {curve[-1]['apgr']:.3f} (memory {len(policy.memory)} rows)",
              flush=True)

    started = time.perf_counter()
    await measure(0)
    for served, prompt in enumerate(traffic, 1):
        # Traffic comes at every cost preference: λ log-uniform over the trained range.
        cost_lambda = math.expm1(rng.uniform(0, math.log1p(max(lambdas))))
        policy.greedy = True
        logged = len(behaviour.log)
        episode = await env.play(behaviour, prompt, pool, cost_lambda)
        if episode.result is not None:
            answered = episode.calls[episode.result.selected_call].model
            outcomes = {answered: episode.score}
            if verdicts == "called":
                outcomes.update({c.model: env.scores[prompt.prompt_id][c.model] for c in episode.calls if c.ok})
            first = behaviour.log[-1] if len(behaviour.log) > logged else None  # its first call, as logged
            if on_verdict is not None:
                on_verdict(policy, prompt.text, outcomes, first is not None and first.explored)
            if not publish_gate:
                policy.record_verdicts(prompt.text, options, outcomes)
                heard.append(Verdicts(prompt.text, outcomes))
            elif first is not None:
                waiting.append(Lesson(f"r{served}", f"{served:08d}", prompt.text, first.model, answered,
                                      episode.score, cost_lambda, episode.cost_usd, first.probability))
        if fine_tune_epochs and not publish_gate and len(heard) >= 2 and served % fine_tune_every == 0:
            policy.network.load_state_dict(start_weights)
            fine_tunes.append({"requests": served, **await fine_tune(policy, heard, options, replay, fine_tune_epochs,
                                                                     seed)})
            print(f"  fine-tuned on {len(heard)} verdicts (epoch {fine_tunes[-1]['best_epoch']} kept)", flush=True)
        if served % every == 0 or served == len(traffic):
            if publish_gate and waiting:
                train, held_out = hold_back(waiting)
                candidate = _learner(start, options)
                candidate.reuse_encodings(policy)
                for lesson in learned + train:
                    candidate.record_verdicts(lesson.text, options, {lesson.returned_model: lesson.verdict})
                if fine_tune_epochs and len(learned + train) >= 2:  # as `xrouter learn --fine-tune-epochs`
                    taught = [Verdicts(lesson.text, {lesson.returned_model: lesson.verdict})
                              for lesson in learned + train]
                    fine_tunes.append({"requests": served, **await fine_tune(candidate, taught, options, replay,
                                                                             fine_tune_epochs, seed)})
                before, after, difference, decision = judge(policy, candidate, options, held_out)
                # What the rule cannot see, the simulation can: both policies' true APGR on the
                # validation prompts, so each decision can be scored (a worse candidate published?).
                truth = gap.apgr(await frontier(candidate, env, validation, pool, lambdas))
                decisions.append({"requests": served, "decision": decision, "serving": before["value"],
                                  "candidate": after["value"], "matches": after["matches"],
                                  "held_out": len(held_out), "difference": difference,
                                  "serving_apgr": curve[-1]["apgr"], "candidate_apgr": truth})
                if decision == PUBLISH:
                    learned += train
                    waiting = held_out
                    policy = candidate
                    behaviour.policy = policy
            await measure(served)
    report = {"source": source, "task": task, "start": str(start), "epsilon": epsilon, "every": every, "seed": seed,
              "verdicts": verdicts, "publish_gate": publish_gate, "publish_decisions": decisions,
              "fine_tune_epochs": fine_tune_epochs, "fine_tune_every": fine_tune_every,
              "fine_tunes": [{k: v for k, v in f.items() if k != "weights"} for f in fine_tunes],
              "publish_scores": score_decisions(decisions),
              "lambdas": list(lambdas), "validation_prompts": len(validation), "traffic": len(traffic),
              "weak": vars(gap.weak), "strong": vars(gap.strong), "curve": curve,
              "explored_share": float(np.mean([e.explored for e in behaviour.log])) if behaviour.log else 0.0,
              "seconds": time.perf_counter() - started}
    if ceiling is not None:
        ceiling_policy = load_policy(ceiling, options)
        report["ceiling"] = {"checkpoint": str(ceiling),
                             "apgr": gap.apgr(await frontier(ceiling_policy, env, validation, pool, lambdas))}
    report["frozen_start_apgr"] = curve[0]["apgr"]
    return report


def score_decisions(decisions: Sequence[dict], tolerance: float = 0.01) -> dict[str, int]:
    """How the publish rule did against the truth: candidates published that were worse (true
    APGR below the serving policy's by more than ``tolerance``), and those held back that were better."""
    published = [d for d in decisions if d["decision"] == PUBLISH]
    held = [d for d in decisions if d["decision"] != PUBLISH]
    return {"decisions": len(decisions), "published": len(published),
            "published_worse": sum(d["candidate_apgr"] < d["serving_apgr"] - tolerance for d in published),
            "held_back_better": sum(d["candidate_apgr"] > d["serving_apgr"] + tolerance for d in held)}


def _learner(start: pathlib.Path, options: Sequence[ModelOption]) -> CompactPolicy:
    policy = load_policy(start, list(options))
    if policy.memory is None:  # a checkpoint without a memory starts an empty one
        policy.memory = OutcomeMemory(np.zeros((0, 384), np.float32), [], [], np.zeros((0, 0), np.float32))
    return policy


def plot(report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [row["requests"] for row in report["curve"]]
    unseen = "family" if report.get("task") else "source"
    served = f"{report['source']}/{report['task']}" if report.get("task") else report["source"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    how = "memory and fine-tuning" if report.get("fine_tune_epochs") else "memory"
    ax.plot(xs, [row["apgr"] for row in report["curve"]], marker="o", label=f"learning from traffic ({how})")
    ax.axhline(report["frozen_start_apgr"], color="grey", linestyle=":", label=f"frozen start (never saw the {unseen})")
    if "ceiling" in report:
        ceiling = report["ceiling"]["apgr"]
        ax.axhline(ceiling, color="green", linestyle="--", label=f"ceiling (trained with the {unseen})")
        ax.axhline(0.95 * ceiling, color="green", linestyle=":", linewidth=0.8, label="95% of the ceiling")
    ax.set_xlabel("requests served (with feedback)")
    ax.set_ylabel(f"APGR on {report['validation_prompts']} validation prompts")
    ax.set_title(f"{served}: learning from its own traffic (ε = {report['epsilon']:g})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(start: pathlib.Path, ceiling: pathlib.Path | None, source: str, out: pathlib.Path, requests: int = 500,
        every: int = 50, epsilon: float = 0.1, seed: int = 0, verdicts: str = "returned",
        publish_gate: bool = False, task: str | None = None, fine_tune_epochs: int = 0,
        fine_tune_every: int = 100) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(simulate(start, ceiling, source, requests, every, epsilon, seed, verdicts=verdicts,
                                  publish_gate=publish_gate, task=task, fine_tune_epochs=fine_tune_epochs,
                                  fine_tune_every=fine_tune_every))
    (out / "traffic_learning.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "traffic_learning.png")
    return report
