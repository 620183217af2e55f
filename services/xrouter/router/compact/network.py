"""The compact policy network. One forward pass scores, for a batch of decisions padded to the same
pool size: a logit to call each model first, the logit of stopping (select an answer), whether to
also call a second model in the same turn, and a score to select each answered model.

Factorising a turn as first model (or stop) → maybe one more model keeps exact log-probabilities
for GRPO while letting the policy call two models in parallel (the cheap-pair-then-escalate pattern).

Why the logits have a structured part: the network also predicts, for every model in the pool, the
probability that its answer to this query is right (``correct``) and what the call will cost
(``log_cost``, log micro-dollars: answers to multiple-choice prompts are a token, code answers
hundreds), both supervised on recorded outcomes given what the episode has seen so far (answers,
agreement). From them and the request's λ, the expected reward of "call m, then return its answer"
and of "stop and return the best answer so far" follow in closed form; those, times a learned
sharpness, are the prior logits, and free heads (trained by GRPO) add residuals. Without the prior,
policy-gradient alone on ~2,000 prompts had to discover per-query model strengths from sampled
rewards and collapsed onto a few models at every λ; with it, one checkpoint is λ-conditioned from the
start and RL refines when to stop, escalate or call two models."""

from __future__ import annotations

import torch
from torch import nn

from xrouter.router.compact.features import GLOBAL_FEATURES, LAMBDA_SCALE, MODEL_FEATURES, PENALTY_CAP

SPENT_COLUMN = GLOBAL_FEATURES - 1  # global_x: the penalty of what was spent so far, / PENALTY_CAP
INITIAL_SHARPNESS = 20.0  # prior logits are expected rewards (0..1) times this


class CompactRouter(nn.Module):
    def __init__(self, n_models: int, n_tags: int, query_dim: int = 384, hidden: int = 64,
                 model_embedding: int = 16, reward_k: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"n_models": n_models, "n_tags": n_tags, "query_dim": query_dim, "hidden": hidden,
                       "model_embedding": model_embedding, "reward_k": reward_k, "dropout": dropout}
        self.reward_k = reward_k
        # Dropout on the query only: ~2,000 training prompts are memorised within a few epochs
        # otherwise. Active in train() mode, i.e. in the supervised warm start; rollouts and the
        # GRPO update run in eval() mode so sampled and optimised log-probabilities agree.
        self.query = nn.Sequential(nn.Dropout(dropout), nn.Linear(query_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.model_embedding = nn.Embedding(n_models + 1, model_embedding)  # row 0: unknown model
        width = hidden + GLOBAL_FEATURES + model_embedding + MODEL_FEATURES + n_tags
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        # Correctness and cost: a per-model readout of the query (a multi-label classifier over the
        # catalog, the form that matched a kNN router on held-out prompts) plus a term from the trunk,
        # which sees what the episode learned (answers, agreement).
        self.correct_readout = nn.Linear(hidden, n_models + 1)
        self.cost_readout = nn.Linear(hidden, n_models + 1)
        self.correct_head = nn.Linear(hidden, 1)
        self.cost_head = nn.Linear(hidden, 1)
        self.call_head = nn.Linear(hidden, 1)
        self.select_head = nn.Linear(hidden, 1)
        self.stop_head = nn.Sequential(nn.Linear(2 * hidden + GLOBAL_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.log_sharpness = nn.Parameter(torch.tensor(float(INITIAL_SHARPNESS)).log())
        for head in (self.call_head, self.select_head, self.stop_head[-1]):  # residuals start at zero
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, query: torch.Tensor, global_x: torch.Tensor, model_ids: torch.Tensor,
                model_x: torch.Tensor, present: torch.Tensor, selectable: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """query [B, Q]; global_x [B, G]; model_ids [B, M]; model_x [B, M, F]; present [B, M] bool;
        selectable [B, M] bool (answered models; default: none). Returns call/select/correct logits
        [B, M] and stop/more logits [B]."""
        q = self.query(query)
        context = torch.cat([q, global_x], dim=-1)
        m = model_x.shape[1]
        x = torch.cat([context[:, None, :].expand(-1, m, -1), self.model_embedding(model_ids), model_x], dim=-1)
        h = self.trunk(x)
        weights = present.float()[..., None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        stop_more = self.stop_head(torch.cat([q, pooled, global_x], dim=-1))
        correct = self.correct_readout(q).gather(1, model_ids) + self.correct_head(h).squeeze(-1)
        log_cost = self.cost_readout(q).gather(1, model_ids) + self.cost_head(h).squeeze(-1)
        prior = self._prior(torch.sigmoid(correct), log_cost, global_x, selectable)
        return {"call": prior["call"] + self.call_head(h).squeeze(-1),
                "select": prior["select"] + self.select_head(h).squeeze(-1),
                "stop": prior["stop"] + stop_more[:, 0], "more": stop_more[:, 1], "correct": correct,
                "log_cost": log_cost}

    def _prior(self, p_correct: torch.Tensor, log_cost: torch.Tensor, global_x: torch.Tensor,
               selectable: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Expected reward of each choice, score × (K − min(λ·cost, cap)), scaled by the sharpness.
        The predictions are detached: the prior's job is to steer, the supervised losses train them."""
        p = p_correct.detach()
        spent = global_x[:, SPENT_COLUMN:SPENT_COLUMN + 1] * PENALTY_CAP
        cost_lambda = torch.expm1(global_x[:, :1] * LAMBDA_SCALE)
        penalty = cost_lambda * torch.expm1(log_cost.detach().clamp(max=20)).clamp(min=0) / 1e6
        call = p * (self.reward_k - torch.clamp(spent + penalty, max=PENALTY_CAP))
        answered = selectable if selectable is not None else torch.zeros_like(p, dtype=torch.bool)
        best = torch.where(answered, p, torch.zeros_like(p)).max(-1).values
        stop = best * (self.reward_k - spent.squeeze(-1))
        sharpness = self.log_sharpness.exp()
        return {"call": sharpness * call, "select": sharpness * p, "stop": sharpness * stop}
