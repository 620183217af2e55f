"""The outcome memory as a router on its own, and how much live verdicts can teach it.

Two questions behind the compact policy's memory (services/xrouter/router/compact/memory.py):

1. **Kernel.** Used alone as a router (each model's predicted score is the memory's kernel-weighted
   mean over its ``k`` nearest train prompts, pick the best score − λ·cost), which ``k`` and
   temperature recover most of the gap on each source's validation split? The first memory used
   k = 32 and temperature 0.05, which averages two or three prompts.
2. **Learning budget.** How far can a learner get on a pool it never saw from 500 requests of
   traffic? (a) *dense*: every model's score recorded on N random train prompts (a reference-scored
   shadow evaluation); (b) *sparse*: a memory-only bandit that serves N requests with ε-exploration
   and records one verdict per request (the returned answer's score), predicting each model by its
   local mean shrunk to its mean over the memory, shrunk to 0.5. Neither uses the network: they bound
   what the evidence itself carries, for comparison with ``bench.traffic_learning``.

    .venv/bin/python -m bench.memory_kernel [--quick]

Writes bench-results/memory_kernel.json.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
LAMBDAS = (0.0, 10.0, 100.0, 1000.0, 10000.0)
KERNELS = ((32, 0.05), (32, 0.2), (64, 0.2), (64, 0.5), (128, 0.5))


class Source:
    """One outcome set's prompts answered by every model: scores, costs and query vectors."""

    def __init__(self, name: str) -> None:
        from xrouter.common.outcomes import SOURCES, read_outcomes, split_of
        from xrouter.router.compact.encoder import QueryEncoder, embed_prompts

        scores, costs, texts = defaultdict(dict), defaultdict(dict), {}
        for row in read_outcomes(SOURCES[name].data):
            scores[row.prompt_id][row.model] = row.score
            costs[row.prompt_id][row.model] = row.cost_usd or 0.0
            texts[row.prompt_id] = row.prompt
        self.name = name
        self.models = sorted({m for r in scores.values() for m in r})
        complete = [p for p in scores if set(self.models) <= set(scores[p])]
        vectors = embed_prompts(QueryEncoder.load(), [(p, texts[p]) for p in complete], progress=False)
        self.texts = texts
        self.split = {s: [p for p in complete if split_of(p) == s] for s in ("train", "validation")}
        self.scores = {p: np.array([scores[p][m] for m in self.models]) for p in complete}
        self.costs = {p: np.array([costs[p][m] for m in self.models]) for p in complete}
        self.vectors = vectors

    def gap(self):  # type: ignore[no-untyped-def]
        from xrouter_training.metrics import GapMetrics, Reference

        val = self.split["validation"]
        refs = [Reference(m, float(np.mean([self.scores[p][j] for p in val])),
                          float(np.mean([self.costs[p][j] for p in val]))) for j, m in enumerate(self.models)]
        return GapMetrics(min(refs, key=lambda r: (r.cost_usd, -r.accuracy)),
                          max(refs, key=lambda r: (r.accuracy, -r.cost_usd)))


def memory_of(source: Source, rows: dict[str, np.ndarray], k: int, temperature: float):  # type: ignore[no-untyped-def]
    from xrouter.router.compact.memory import OutcomeMemory, text_key

    ids = list(rows)
    vectors = np.stack([source.vectors[p] for p in ids]) if ids else np.zeros((0, 384), np.float32)
    scores = np.stack([rows[p] for p in ids]).astype(np.float32) if ids else np.zeros((0, len(source.models)), np.float32)
    return OutcomeMemory(vectors, [text_key(source.texts[p]) for p in ids], source.models, scores, k, temperature)


def predict(memory, source: Source, prompt: str, local_weight: float = 1.0, global_weight: float = 4.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Each model's score: local mean shrunk to its memory-wide mean, shrunk to 0.5."""
    from xrouter.router.compact.memory import EVIDENCE, GLOBAL_COUNT, GLOBAL_MEAN, LOCAL_MEAN, COUNT_SCALE

    f = memory.features(source.vectors[prompt], source.texts[prompt], source.models)
    count = np.expm1(f[:, GLOBAL_COUNT] * COUNT_SCALE)
    overall = (count * f[:, GLOBAL_MEAN] + global_weight * 0.5) / (count + global_weight)
    return (f[:, EVIDENCE] * f[:, LOCAL_MEAN] + local_weight * overall) / (f[:, EVIDENCE] + local_weight)


def apgr(memory, source: Source, gap) -> float:  # type: ignore[no-untyped-def]
    from xrouter_training.metrics import CurvePoint

    val = source.split["validation"]
    predicted = {p: predict(memory, source, p) for p in val}
    points = []
    for cost_lambda in LAMBDAS:
        picks = [int(np.argmax(predicted[p] - cost_lambda * source.costs[p])) for p in val]
        points.append(CurvePoint(float(np.mean([source.costs[p][j] for p, j in zip(val, picks)])),
                                 float(np.mean([source.scores[p][j] for p, j in zip(val, picks)])), cost_lambda))
    return gap.apgr(points)


def sparse_bandit(source: Source, gap, requests: int, every: int, epsilon: float, seed: int,  # type: ignore[no-untyped-def]
                  k: int, temperature: float) -> list[float]:
    rng = random.Random(seed)
    traffic = source.split["train"][:]
    rng.shuffle(traffic)
    rows: dict[str, np.ndarray] = {}
    curve = [apgr(memory_of(source, rows, k, temperature), source, gap)]
    memory = memory_of(source, rows, k, temperature)
    for served, prompt in enumerate(traffic[:requests], 1):
        cost_lambda = math.expm1(rng.uniform(0, math.log1p(max(LAMBDAS))))
        explored = rng.random() < epsilon
        j = rng.randrange(len(source.models)) if explored else \
            int(np.argmax(predict(memory, source, prompt) - cost_lambda * source.costs[prompt]))
        verdict = {source.models[j]: float(source.scores[prompt][j])}
        memory.add(source.texts[prompt], source.vectors[prompt], verdict)
        if served % every == 0:
            curve.append(apgr(memory, source, gap))
    return curve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_kernel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one source, fewer kernels and requests")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "training"))
    started = time.perf_counter()
    names = ("llmrouter",) if args.quick else ("routerbench", "llmrouter", "arena")
    kernels = KERNELS[:2] if args.quick else KERNELS
    report: dict = {"lambdas": LAMBDAS, "kernel": {}, "learning": {}}
    for name in names:
        source = Source(name)
        gap = source.gap()
        train = {p: source.scores[p] for p in source.split["train"]}
        report["kernel"][name] = {f"k={k},T={t}": apgr(memory_of(source, train, k, t), source, gap) for k, t in kernels}
        print(f"{name}: memory alone as a router, APGR by kernel: "
              + ", ".join(f"{key} {value:.3f}" for key, value in report["kernel"][name].items()), flush=True)
    source = Source("llmrouter")
    gap = source.gap()
    requests, every, seeds = (100, 50, 1) if args.quick else (500, 100, 3)
    dense = {}
    for n in (50, 100, 200, 500):
        if n > requests:
            continue
        values = []
        for seed in range(seeds):
            sample = random.Random(seed).sample(source.split["train"], n)
            values.append(apgr(memory_of(source, {p: source.scores[p] for p in sample}, 64, 0.5), source, gap))
        dense[n] = float(np.mean(values))
    curves = [sparse_bandit(source, gap, requests, every, 0.1, seed, 64, 0.5) for seed in range(seeds)]
    report["learning"] = {
        "source": "llmrouter", "seeds": seeds, "kernel": "k=64,T=0.5",
        "dense_every_model_scored": dense,
        "sparse_one_verdict_per_request": {"every": every, "epsilon": 0.1,
                                           "apgr": [float(np.mean(c)) for c in zip(*curves)]}}
    print(f"llmrouter, every model scored on N prompts: {dense}")
    print(f"llmrouter, one verdict per request, every {every}: "
          + " ".join(f"{v:.3f}" for v in report["learning"]["sparse_one_verdict_per_request"]["apgr"]))
    report["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_kernel.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS / 'memory_kernel.json'} ({report['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
