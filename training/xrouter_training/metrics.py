"""Cost-accuracy metrics of a router against the strongest single model, after RouteLLM.

RouteLLM (Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data", arXiv 2406.18665,
§5.1; code: lm-sys/RouteLLM, ``routellm/evals/evaluate.py``) routes between a weak and a strong
model and measures cost as c = the percentage of calls sent to the strong model:

- PGR(router) = (r(router) − r(weak)) / (r(strong) − r(weak)): the performance gap recovered.
- APGR = ∫₀¹ PGR(c) dc, the area under the PGR-vs-cost curve (``apgr_metric``: ``np.trapz`` of
  accuracy over strong_percentage/100, minus the weak model's area, over the strong-minus-weak area).
- CPT(x%) = the minimum percentage of calls to the strong model that reaches PGR = x%
  (``pct_call_metric``: ``np.interp(x·(strong − weak) + weak, accuracy, strong_percentage)``).

Our routers choose among many models and pay real dollars, so c is the router's mean dollar cost
per query, normalised so that the weak model costs 0 and the strong model costs 1:
c = (cost − cost_weak) / (cost_strong − cost_weak). For a router that sends each query to the weak
or the strong model this is (up to per-query cost variation) RouteLLM's strong-call fraction.
"Strong" is the single model with the highest accuracy on the evaluated prompts, "weak" the single
model with the lowest mean cost. The curve is read as "the best a router achieves spending at most
c": points are sorted by cost, a point no more accurate than a cheaper one is dropped, consecutive
points are joined linearly (mixing two settings per query reaches any point between them, which is
what RouteLLM's trapezoid and ``np.interp`` assume), the curve stays flat beyond the dearest point,
and the weak model itself (c = 0, PGR = 0) is always available. On a monotone curve spanning
[0, 1] this is exactly RouteLLM's computation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Reference:
    """A single model's mean accuracy and mean dollar cost per query on the evaluated prompts."""

    model: str
    accuracy: float
    cost_usd: float


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """One measured setting of a router (e.g. one λ): mean cost per query and accuracy."""

    cost_usd: float
    accuracy: float
    cost_lambda: float | None = None


def budget_curve(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(x, y) points sorted by x keeping only those more accurate than every cheaper point."""
    curve: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not curve or y > curve[-1][1]:
            curve.append((x, y))
    return curve


class GapMetrics:
    """RouteLLM's metrics for routers between ``weak`` and ``strong`` (see the module docstring)."""

    def __init__(self, weak: Reference, strong: Reference) -> None:
        if strong.cost_usd <= weak.cost_usd:
            raise ValueError(f"the strongest model {strong.model} (${strong.cost_usd:.6f}/query) is not dearer "
                             f"than the cheapest {weak.model} (${weak.cost_usd:.6f}/query): no cost axis")
        if strong.accuracy <= weak.accuracy:
            raise ValueError(f"the strongest model {strong.model} is not more accurate than the cheapest "
                             f"{weak.model}: there is no performance gap to recover")
        self.weak, self.strong = weak, strong

    def normalised_cost(self, cost_usd: float) -> float:
        return (cost_usd - self.weak.cost_usd) / (self.strong.cost_usd - self.weak.cost_usd)

    def usd(self, normalised_cost: float) -> float:
        return self.weak.cost_usd + normalised_cost * (self.strong.cost_usd - self.weak.cost_usd)

    def pgr(self, accuracy: float) -> float:
        return (accuracy - self.weak.accuracy) / (self.strong.accuracy - self.weak.accuracy)

    def _curve(self, points: Sequence[CurvePoint]) -> list[tuple[float, float]]:
        normalised = [(self.normalised_cost(p.cost_usd), self.pgr(p.accuracy)) for p in points]
        return budget_curve([*normalised, (0.0, 0.0)])

    def apgr(self, points: Sequence[CurvePoint]) -> float:
        """Area under the PGR(c) curve for c in [0, 1] (exact for the piecewise-linear curve)."""
        curve = self._curve(points)
        xs, ys = np.array([p[0] for p in curve]), np.array([p[1] for p in curve])
        grid = np.unique(np.concatenate([[0.0, 1.0], xs[(xs > 0.0) & (xs < 1.0)]]))
        values = np.interp(grid, xs, ys)  # first x <= 0 (the weak anchor); flat beyond the last
        return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))

    def cpt(self, points: Sequence[CurvePoint], fraction: float) -> float | None:
        """Least normalised cost at which PGR reaches ``fraction`` (None: never reached)."""
        curve = self._curve(points)
        for i, (x, y) in enumerate(curve):
            if y >= fraction:
                if i == 0:
                    return x
                (x0, y0) = curve[i - 1]
                return x0 + (fraction - y0) / (y - y0) * (x - x0)
        return None

    def summary(self, points: Sequence[CurvePoint], fractions: Sequence[float] = (0.5, 0.8, 0.95)) -> dict:
        """APGR and CPT(x%) as JSON: CPT in normalised cost, dollars and share of the strong model's cost."""
        cpts = {}
        for fraction in fractions:
            c = self.cpt(points, fraction)
            cpts[f"{round(fraction * 100)}%"] = None if c is None else {
                "normalised_cost": c, "cost_usd": self.usd(c),
                "share_of_strong_cost": self.usd(c) / self.strong.cost_usd}
        return {"apgr": self.apgr(points), "cpt": cpts}


def cheapest_reaching(points: Sequence[CurvePoint], accuracy: float, strictly: bool = False) -> CurvePoint | None:
    """The cheapest measured point whose accuracy reaches (or, ``strictly``, exceeds) ``accuracy``."""
    reaching = [p for p in points if (p.accuracy > accuracy if strictly else p.accuracy >= accuracy)]
    return min(reaching, key=lambda p: (p.cost_usd, -p.accuracy), default=None)


def best_within(points: Sequence[CurvePoint], cost_usd: float) -> CurvePoint | None:
    """The most accurate measured point costing at most ``cost_usd`` (None: none is that cheap)."""
    affordable = [p for p in points if p.cost_usd <= cost_usd]
    return max(affordable, key=lambda p: (p.accuracy, -p.cost_usd), default=None)
