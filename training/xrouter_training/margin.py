"""How sure is "the learned policy is above kNN"? A paired bootstrap of APGR margins over prompts.

A validation split of 63 prompts (Arena-Hard's) moves APGR by several hundredths when a handful of
prompts change, so a margin of −0.05 may be the policy or the draw. Each resample draws the
evaluated prompts with replacement and recomputes, on the same draw, every run's mean score and
cost, the weak and strong references (the same two models as the full split's), and so each
policy's APGR; the margin's interval is read from those paired differences. Paired, because both
policies face the same hard and easy prompts in every resample, which is what the comparison is
about. Resamples where the draw leaves no gap between weak and strong are dropped and counted.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

import numpy as np

from xrouter_training.metrics import CurvePoint, GapMetrics, Reference

RESAMPLES = 2000
CONFIDENCE = 0.90


def apgr_margins(records: Sequence[Mapping], subject: str, rivals: Sequence[str], weak: str, strong: str,
                 resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Per rival policy: APGR(subject) − APGR(rival) on the full split, its ``CONFIDENCE`` interval
    over ``resamples`` paired bootstrap draws of the prompts, and the share of draws in which the
    subject is above. ``weak``/``strong`` are the reference models (``fixed:`` runs of the records).
    Prompts missing from any run are left out of every resample (the comparison stays paired)."""
    by_run: dict[tuple[str, float | None], dict[str, tuple[float, float]]] = collections.defaultdict(dict)
    for record in records:
        by_run[(record["policy"], record["lambda"])][record["prompt_id"]] = (record["score"], record["cost_usd"])
    wanted = {subject, *rivals, f"fixed:{weak}", f"fixed:{strong}"}
    runs = [key for key in by_run if key[0] in wanted]
    missing = wanted - {name for name, _ in runs}
    if missing:
        raise ValueError(f"no records of {sorted(missing)}")
    prompts = sorted(set.intersection(*(set(by_run[key]) for key in runs)))
    if not prompts:
        raise ValueError("no prompt was played by every run compared")
    scores = np.array([[by_run[key][p][0] for p in prompts] for key in runs])  # [runs, prompts]
    costs = np.array([[by_run[key][p][1] for p in prompts] for key in runs])
    rng = np.random.default_rng(seed)
    n = len(prompts)
    full = _apgrs(runs, scores.mean(1)[None], costs.mean(1)[None], subject, rivals, weak, strong)[0]
    # Each draw as counts per prompt: the means of every run at once are one matrix product.
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    sampled = _apgrs(runs, counts @ scores.T / n, counts @ costs.T / n, subject, rivals, weak, strong)
    if full is None:
        raise ValueError(f"no gap between {weak} and {strong} on the evaluated prompts")
    tail = (1.0 - CONFIDENCE) / 2
    result = {}
    for rival in rivals:
        margins = np.array([a[subject] - a[rival] for a in sampled if a is not None])
        result[rival] = {
            "margin": full[subject] - full[rival],
            "interval": [float(np.quantile(margins, tail)), float(np.quantile(margins, 1 - tail))],
            "confidence": CONFIDENCE, "share_above": float((margins > 0).mean()),
            "resamples": len(margins), "resamples_without_gap": resamples - len(margins), "prompts": n,
        }
    return result


def _apgrs(runs: Sequence[tuple[str, float | None]], accuracy: np.ndarray, cost: np.ndarray, subject: str,
           rivals: Sequence[str], weak: str, strong: str) -> list[dict[str, float] | None]:
    """For each draw (rows of ``accuracy``/``cost`` [draws, runs]): every compared policy's APGR, or
    None where the draw has no gap to recover."""
    index = {key: i for i, key in enumerate(runs)}
    weak_i, strong_i = index[(f"fixed:{weak}", None)], index[(f"fixed:{strong}", None)]
    out: list[dict[str, float] | None] = []
    for acc, usd in zip(accuracy, cost, strict=True):
        try:
            gap = GapMetrics(Reference(weak, acc[weak_i], usd[weak_i]), Reference(strong, acc[strong_i], usd[strong_i]))
        except ValueError:
            out.append(None)
            continue
        out.append({name: gap.apgr([CurvePoint(usd[i], acc[i], key[1]) for key, i in index.items() if key[0] == name])
                    for name in (subject, *rivals)})
    return out
