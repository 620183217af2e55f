"""The cost-aware reward of the xRouter paper (arXiv 2510.08439):

    r = score * (K - min(lambda * cost_usd, cost_max))

A wrong answer earns nothing however cheap it was; a right one earns K minus a cost penalty that
is capped, so one very expensive call cannot drive the reward arbitrarily negative. An episode that
did not end properly (a format error, truncation, an unknown tool, the turn limit) earns 0.

The router's own tokens: the paper charges only the models the router calls. We charge the
router's own cost too, by default (``charge_router_cost``): it is on the bill, and a policy that is
not charged for it learns to think at length to save a cheap call. Callers that send no router cost
(``router_cost_usd`` 0) get the paper's reward; set ``charge_router_cost=False``
(``XROUTER_REWARD_CHARGE_ROUTER_COST=false``) to reproduce the paper while sending it.
"""

from __future__ import annotations

import dataclasses
import math

from xrouter.common.errors import InvalidArgument


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The reward's constants: ``k`` is the reward of a free correct answer, ``cost_max`` caps
    the cost penalty, ``charge_router_cost`` adds the router's own cost to the models' cost."""

    k: float = 1.0
    cost_max: float = 0.7
    charge_router_cost: bool = True

    def __post_init__(self) -> None:
        if not math.isfinite(self.k) or self.k <= 0:
            raise ValueError(f"RewardConfig.k must be a finite number > 0 (e.g. 1.0), got {self.k}")
        if not math.isfinite(self.cost_max) or self.cost_max < 0:
            raise ValueError(
                f"RewardConfig.cost_max must be a finite number >= 0 (e.g. 0.7), got {self.cost_max}")


def _check_dollars(field: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(field, f"must be a finite number >= 0, got {value}")


def check_cost(cost_usd: float, cost_lambda: float, router_cost_usd: float = 0.0) -> None:
    """Reject a cost or cost preference the formula cannot use (negative, NaN or infinite)."""
    _check_dollars("cost_usd", cost_usd)
    _check_dollars("cost_lambda", cost_lambda)
    _check_dollars("router_cost_usd", router_cost_usd)


def charged_cost(cost_usd: float, router_cost_usd: float, config: RewardConfig) -> float:
    """The dollars the penalty is computed on: the models' cost, plus the router's when charged."""
    return cost_usd + (router_cost_usd if config.charge_router_cost else 0.0)


def cost_aware_reward(score: float, cost_usd: float, cost_lambda: float,
                      config: RewardConfig = RewardConfig(), *, router_cost_usd: float = 0.0,
                      failure: str = "") -> float:
    """``score * (K - min(cost_lambda * cost, cost_max))``, or 0 when ``failure`` says the episode
    did not end properly. ``score`` must lie in [0, 1]; ``cost`` is :func:`charged_cost`."""
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise InvalidArgument("score", f"must lie in [0, 1], got {score}")
    check_cost(cost_usd, cost_lambda, router_cost_usd)
    if failure.strip():
        return 0.0
    cost = charged_cost(cost_usd, router_cost_usd, config)
    return score * (config.k - min(cost_lambda * cost, config.cost_max))
