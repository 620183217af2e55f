"""GRPO/DAPO pieces as pure functions: group-normalised advantages, dynamic sampling, the
clip-higher surrogate with a token-mean (here: decision-mean) loss, and turn batching."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import torch

from xrouter.router.compact.distribution import Actions
from xrouter.router.compact.batch import pad_decisions
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import Turn


def group_advantages(rewards: np.ndarray, eps: float = 1e-6, scale: str = "batch") -> np.ndarray:
    """rewards [groups, G] → advantages [groups, G]: r minus its group's mean, divided by the std of
    the group ("group", GRPO as published) or of the whole batch ("batch").

    Why "batch" is the default here: on a prompt every model answers correctly, rewards differ only
    by cost (0.99 vs 0.96); dividing by that group's tiny std blows a cost-only difference up to the
    same ±1 as a right/wrong difference, and the policy learns "cheapest model" (seen: every run
    collapsed onto mistral-7b). A batch-wide scale keeps each group's signal proportional to what is
    really at stake in it (the Dr. GRPO remedy for the same bias)."""
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    if scale == "group":
        return centred / (rewards.std(axis=1, keepdims=True) + eps)
    if scale == "batch":
        return centred / (rewards.std() + eps)
    raise ValueError(f"scale={scale!r}: use 'group' or 'batch'")


def informative_groups(rewards: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
    """Dynamic sampling: groups whose rewards all agree carry no gradient and are dropped."""
    return rewards.std(axis=1) > tolerance


def clipped_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                 clip_low: float, clip_high: float) -> torch.Tensor:
    """−mean over decisions of min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped).mean()


def batch_turns(turns: list[Turn], n_tags: int,
                descriptors: Mapping[str, np.ndarray] | None = None) -> dict[str, object]:
    """Pad a list of recorded turns (pools of different sizes) into one batch; ``descriptors`` maps
    model ids to their catalog-description embeddings (None: the network reads none)."""
    decisions = pad_decisions(
        [t.query for t in turns], [t.arrays for t in turns], [t.final for t in turns], n_tags,
        None if descriptors is None else [np.stack([descriptors[m] for m in t.arrays.models]) for t in turns])

    def stack(name: str) -> torch.Tensor:
        return torch.cat([getattr(t.actions, name) for t in turns])

    return {
        "decisions": decisions, "present": decisions.present, "masks": decisions.masks,
        "actions": Actions(stack("stop"), stack("first"), stack("more"), stack("second"), stack("select")),
        "old_log_prob": torch.tensor([t.log_prob for t in turns]),
    }


def forward(network: CompactRouter, batch: dict) -> dict[str, torch.Tensor]:
    """The network on a batch from :func:`batch_turns`, exactly as the policy calls it per decision."""
    return batch["decisions"].forward(network)


@dataclasses.dataclass
class OutcomeLabels:
    """Targets of the supervised heads for a batch of turns, [B, width] each: every pool model's
    recorded score and log micro-dollar cost on the turn's prompt, and which entries have one
    (padding and unrecorded models do not)."""

    score: torch.Tensor
    log_cost: torch.Tensor
    known: torch.Tensor

    def loss(self, out: dict[str, torch.Tensor], cost_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary cross-entropy of ``correct``, cost deviance of ``log_cost``) over known entries."""
        known = self.known
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out["correct"][known], self.score[known])
        return bce, cost_coef * cost_deviance(out["log_cost"][known], self.log_cost[known])


# Past this log-ratio the deviance goes on as a line: a prediction far below a label early in
# training must not make an exp() large enough to swamp the other losses.
_DEVIANCE_LINEAR_FROM = 4.0


def cost_deviance(predicted: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean Gamma deviance with a log link, 2·(e^d − d − 1) with d = label − prediction (log
    micro-dollars): its minimiser is the log of the *mean* cost, which the decision's λ·ĉ needs.
    Squared error of the logs (what this replaced) is minimised by the mean *log* cost, the
    geometric mean: below the mean by more the more a model's cost varies (answer lengths), so a
    verbose cheap model looked cheaper than it is (Arena-Hard's llama-13b: $0.000060 predicted,
    $0.000093 paid, on validation prompts). Near the optimum it equals the squared error (d² for
    small d), so ``cost_coef`` keeps its meaning."""
    d = label - predicted
    capped = d.clamp(max=_DEVIANCE_LINEAR_FROM)
    exp_d = torch.exp(capped) * (1.0 + d - capped)  # e^d up to the cap, then its tangent line
    return (2.0 * (exp_d - d - 1.0)).mean()


def outcome_labels(turns: list[Turn], scores: list[dict[str, float]], costs: list[dict[str, float]],
                   width: int) -> OutcomeLabels:
    labels = OutcomeLabels(torch.zeros((len(turns), width)), torch.zeros((len(turns), width)),
                           torch.zeros((len(turns), width), dtype=torch.bool))
    for row, (turn, prompt_scores, prompt_costs) in enumerate(zip(turns, scores, costs, strict=True)):
        for column, model in enumerate(turn.arrays.models):
            if model in prompt_scores:
                labels.score[row, column] = prompt_scores[model]
                labels.log_cost[row, column] = math.log(prompt_costs.get(model, 0.0) * 1e6 + 1.0)
                labels.known[row, column] = True
    return labels
