"""The publish rule of learning from traffic: is a candidate not worse than the serving policy on
traffic neither learned from?

Each policy is valued off-policy on the held-back episodes: the self-normalised importance-weighted
mean of the logged reward (verdict − λ·cost) over the episodes whose logged first call the policy
would also make, weighted by 1/μ (μ: the behaviour probability the router logged, 1 for a request it
did not explore; weights clipped at ``clip``).

Comparing the two values alone is not evidence: with 20-30 matched episodes each moves by about ±0.1
by chance, and in the simulation a candidate that only looked better was published and lost 0.14
APGR (0.795 → 0.657). So the rule is paired and asks for evidence in proportion to the change. The
held-back episodes are resampled (a bootstrap: the same resample values both policies), and the
candidate is published when the ``1 − confidence`` quantile of (candidate − serving) is at least
``−margin``. Where the two make the same first call an episode counts alike for both, in every
resample: a candidate that changes few decisions passes on little evidence; one that changes many
must show, on enough held-back traffic, that the change does not cost more than the margin. A
candidate that fails waits: the next run holds back more episodes (the verdicts not yet learned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xrouter.router.policy import CallModels, EpisodeState, ModelOption

if TYPE_CHECKING:
    from xrouter.router.compact.policy import CompactPolicy
    from xrouter_training.learn import Lesson

# Defaults of `xrouter learn` (--hold-out --clip --min-matches --confidence --margin); learn-sim uses them too.
# The margin is in reward units: 0.02 is two points of accuracy at λ = 0.
HOLD_OUT, CLIP, MIN_MATCHES, CONFIDENCE, MARGIN = 0.2, 10.0, 20, 0.9, 0.02
RESAMPLES = 2000
PUBLISH, TOO_LITTLE, WORSE, UNPROVEN = ("publish", "not enough held-back evidence", "worse: not published",
                                        "not shown to be within the margin: not published")


def first_calls(policy: CompactPolicy, pool: Sequence[ModelOption], held_out: Sequence[Lesson]) -> list[str | None]:
    """The greedy first call ``policy`` makes on each held-back prompt (None: it calls no model)."""
    policy.greedy = True
    states = [EpisodeState([("user", lesson.text)], list(pool), lesson.cost_lambda, None, 3, 0) for lesson in held_out]
    actions = policy.decide_many(states) if states else []
    return [action.calls[0].model if isinstance(action, CallModels) and action.calls else None for action in actions]


def off_policy_value(policy: CompactPolicy, pool: Sequence[ModelOption], held_out: Sequence[Lesson],
                     clip: float = CLIP) -> dict[str, float]:
    """``policy``'s value on ``held_out`` alone (the rule compares two of these, paired)."""
    return snips(_matched(policy, pool, held_out), _weights(held_out, clip), _rewards(held_out))


def _matched(policy: CompactPolicy, pool: Sequence[ModelOption], held_out: Sequence[Lesson]) -> np.ndarray:
    calls = first_calls(policy, pool, held_out)
    return np.array([call == lesson.first_model for call, lesson in zip(calls, held_out, strict=True)], np.float64)


def _rewards(held_out: Sequence[Lesson]) -> np.ndarray:
    return np.array([lesson.reward for lesson in held_out], np.float64)


def _weights(held_out: Sequence[Lesson], clip: float) -> np.ndarray:
    return np.array([min(1.0 / max(lesson.behaviour_probability, 1e-9), clip) for lesson in held_out])


def snips(matched: np.ndarray, weights: np.ndarray, rewards: np.ndarray) -> dict[str, float]:
    """Self-normalised importance-weighted value over the ``matched`` episodes."""
    w = weights * matched
    total = float(w.sum())
    return {"value": float(w @ rewards) / total if total else float("nan"), "matches": int(matched.sum()),
            "effective_samples": total ** 2 / float(w @ w) if total else 0.0}


def paired_lower_bound(serving: np.ndarray, candidate: np.ndarray, weights: np.ndarray, rewards: np.ndarray,
                       confidence: float, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """The ``1 − confidence`` bootstrap quantile of SNIPS(candidate) − SNIPS(serving) over the same
    resamples of the episodes (seeded: the same export gives the same decision). Resamples in
    which either policy matches nothing are left out."""
    n = len(weights)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    values = []
    for matched in (candidate, serving):
        w = weights * matched
        totals = counts @ w
        values.append(np.divide(counts @ (w * rewards), totals, out=np.full(resamples, np.nan), where=totals > 0))
    differences = values[0] - values[1]
    differences = differences[np.isfinite(differences)]
    return float(np.quantile(differences, 1 - confidence)) if len(differences) else float("nan")


def judge(serving: CompactPolicy, candidate: CompactPolicy, pool: Sequence[ModelOption], held_out: Sequence[Lesson],
          clip: float = CLIP, min_matches: int = MIN_MATCHES, confidence: float = CONFIDENCE,
          margin: float = MARGIN) -> tuple[dict[str, float], dict[str, float], dict[str, float], str]:
    """Both policies' off-policy values on ``held_out``, their paired difference and the decision."""
    return decide(_matched(serving, pool, held_out), _matched(candidate, pool, held_out), _weights(held_out, clip),
                  _rewards(held_out), min_matches, confidence, margin)


def decide(serving: np.ndarray, candidate: np.ndarray, weights: np.ndarray, rewards: np.ndarray,
           min_matches: int = MIN_MATCHES, confidence: float = CONFIDENCE, margin: float = MARGIN,
           ) -> tuple[dict[str, float], dict[str, float], dict[str, float], str]:
    """The rule on per-episode data: which episodes each policy matches (0/1), their clipped
    weights and logged rewards. Returns both values, the difference (estimate and lower bound) and
    the decision."""
    before, after = snips(serving, weights, rewards), snips(candidate, weights, rewards)
    difference = {"estimate": after["value"] - before["value"], "lower_bound": float("nan"),
                  "confidence": confidence, "margin": margin,
                  "matched_by_one_only": int(np.sum(serving != candidate))}
    if after["matches"] < min_matches or before["matches"] < min_matches:
        return before, after, difference, TOO_LITTLE
    difference["lower_bound"] = paired_lower_bound(serving, candidate, weights, rewards, confidence)
    if difference["lower_bound"] >= -margin:
        return before, after, difference, PUBLISH
    return before, after, difference, WORSE if difference["estimate"] < -margin else UNPROVEN
