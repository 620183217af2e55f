"""The cost-aware reward of the xRouter paper (arXiv 2510.08439):

    r = score * (K - min(lambda * cost_usd, cost_max))

A wrong answer earns nothing however cheap it was; a right one earns K minus a cost penalty that
is capped, so one very expensive call cannot drive the reward arbitrarily negative.
"""

from __future__ import annotations

import dataclasses
import math

from xrouter.common.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The reward's constants: ``k`` is the reward of a free correct answer, ``cost_max`` caps
    the cost penalty."""

    k: float = 1.0
    cost_max: float = 0.7

    def __post_init__(self) -> None:
        if not math.isfinite(self.k) or self.k <= 0:
            raise ValueError(f"RewardConfig.k must be a finite number > 0 (e.g. 1.0), got {self.k}")
        if not math.isfinite(self.cost_max) or self.cost_max < 0:
            raise ValueError(
                f"RewardConfig.cost_max must be a finite number >= 0 (e.g. 0.7), got {self.cost_max}")


def check_cost(cost_usd: float, cost_lambda: float) -> None:
    """Reject a cost or cost preference the formula cannot use (negative, NaN or infinite)."""
    if not math.isfinite(cost_usd) or cost_usd < 0:
        raise InvalidArgument("cost_usd", f"must be a finite number >= 0, got {cost_usd}")
    if not math.isfinite(cost_lambda) or cost_lambda < 0:
        raise InvalidArgument("cost_lambda", f"must be a finite number >= 0, got {cost_lambda}")


def cost_aware_reward(score: float, cost_usd: float, cost_lambda: float,
                      config: RewardConfig = RewardConfig()) -> float:
    """``score * (K - min(cost_lambda * cost_usd, cost_max))``; ``score`` must lie in [0, 1]."""
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise InvalidArgument("score", f"must lie in [0, 1], got {score}")
    check_cost(cost_usd, cost_lambda)
    return score * (config.k - min(cost_lambda * cost_usd, config.cost_max))
