"""The paired bootstrap of APGR margins (training/xrouter_training/margin.py)."""

from __future__ import annotations

import random

import pytest

from xrouter_training.margin import apgr_margins
from xrouter_training.metrics import CurvePoint, GapMetrics, Reference


def records(prompts: int, seed: int = 0, better_on: int = 0) -> list[dict]:
    """weak (cost 1) and strong (cost 10) single models; a rival that pays 4 per prompt for a coin
    flip's answer; a subject that is the rival with ``better_on`` of its wrong answers made right."""
    rng = random.Random(seed)
    rows = []
    rival = [float(rng.random() < 0.5) for _ in range(prompts)]
    wrong = [i for i, score in enumerate(rival) if score == 0.0][:better_on]
    for i in range(prompts):
        pid = f"p{i}"
        rows.append({"policy": "fixed:weak", "lambda": None, "prompt_id": pid, "score": float(rng.random() < 0.2),
                     "cost_usd": 1.0})
        rows.append({"policy": "fixed:strong", "lambda": None, "prompt_id": pid, "score": float(rng.random() < 0.9),
                     "cost_usd": 10.0})
        rows.append({"policy": "rival", "lambda": 1.0, "prompt_id": pid, "score": rival[i], "cost_usd": 4.0})
        rows.append({"policy": "subject", "lambda": 1.0, "prompt_id": pid,
                     "score": 1.0 if i in wrong else rival[i], "cost_usd": 4.0})
    return rows


def full_split_apgr(rows: list[dict], policy: str) -> float:
    def mean(name: str, key: str) -> float:
        values = [r[key] for r in rows if r["policy"] == name]
        return sum(values) / len(values)
    gap = GapMetrics(Reference("weak", mean("fixed:weak", "score"), 1.0),
                     Reference("strong", mean("fixed:strong", "score"), 10.0))
    return gap.apgr([CurvePoint(mean(policy, "cost_usd"), mean(policy, "score"), 1.0)])


def test_the_margin_is_the_full_splits_apgr_difference() -> None:
    rows = records(60, better_on=5)
    margin = apgr_margins(rows, "subject", ["rival"], "weak", "strong")["rival"]
    assert margin["margin"] == pytest.approx(full_split_apgr(rows, "subject") - full_split_apgr(rows, "rival"))
    assert margin["margin"] > 0 and margin["prompts"] == 60 and margin["confidence"] == 0.9


def test_paired_resamples_never_put_a_policy_that_is_better_on_some_prompts_and_equal_elsewhere_below() -> None:
    """The subject differs from its rival on 3 of 40 prompts, always for the better: in every draw
    it is at least as good. Unpaired draws of the mean scores (each policy its own prompts) put it
    below in 22% of them, the rival's coin flips swamping a 3-prompt difference."""
    margin = apgr_margins(records(40, better_on=3), "subject", ["rival"], "weak", "strong")["rival"]
    assert margin["interval"][0] >= 0.0
    assert 0.85 < margin["share_above"] < 1.0  # a draw without those 3 prompts shows no difference


def test_the_interval_narrows_with_more_prompts() -> None:
    """The same per-prompt advantage (1 prompt in 8) measured on 40 and on 640 prompts: the interval
    is about 4 = sqrt(16) times narrower."""
    small = apgr_margins(records(40, seed=1, better_on=5), "subject", ["rival"], "weak", "strong")["rival"]
    large = apgr_margins(records(640, seed=1, better_on=80), "subject", ["rival"], "weak", "strong")["rival"]
    width = [m["interval"][1] - m["interval"][0] for m in (small, large)]
    assert 2.5 < width[0] / width[1] < 6.5
    assert large["interval"][0] > 0.0 and large["share_above"] == 1.0


def test_a_policy_without_records_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="knn"):
        apgr_margins(records(10), "subject", ["knn"], "weak", "strong")
