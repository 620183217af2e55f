"""The compact policy network. One forward pass scores, for a batch of decisions padded to the same
pool size: a logit to call each model first, the logit of stopping (select an answer), whether to
also call a second model in the same turn, and a score to select each answered model.

Factorising a turn as first model (or stop) → maybe one more model keeps exact log-probabilities
for GRPO while letting the policy call two models in parallel (the cheap-pair-then-escalate pattern).

The learned parts predict, for every model in the pool, the probability (expected score) that its
answer to this query is right (``correct``) and what the call will cost (``log_cost``, log
micro-dollars, as a correction to the catalog-price estimate), given what the episode has seen so
far. A model is known by its id embedding (row 0 for a model never trained with) plus its catalog
description embedded by the query encoder, so a new model is routable from its catalog entry alone.
The outcome memory's local evidence (memory.py: the neighbours' weighted mean score and the sum of
their weights E) is not an input: the predicted score is updated by it as by observations,
``p = (a·p_net + E·mean) / (a + E)``, with learned pseudo-counts ``a`` (one before the model's answer
is seen, one after), so a few verdicts on a new model count at once and as much as they weigh.
Before that, ``p_net`` is shifted by the model's calibration (its mean residual over the verdicts
added while serving; 0 in training): a prior that is off for a new model everywhere is corrected
everywhere after a few verdicts, not one neighbourhood at a time.

λ never enters a learned part. The prior logit of each choice is its expected utility,
``K·p − λ·ĉ`` (the cost is paid whether the answer is right or not), times a learned sharpness,
and GRPO's residual heads add λ-free terms. Each logit is then a line in λ whose slope is minus the
call's predicted cost (0 for stopping), so as λ grows the greedy choice can only move to a call
predicted cheaper (or to stopping): a larger λ never picks a dearer call. The paper's reward caps
the penalty at ``cost_max``; used as the decision utility, that cap made every call look equally
dear at large λ and sent requests back to the most expensive model."""

from __future__ import annotations

import torch
from torch import nn

from xrouter.router.compact.features import (
    ANSWERED_COLUMN, CALIBRATION_COLUMN, COST_SCALE, ESTIMATE_COLUMN, EVIDENCE_COLUMN, GLOBAL_FEATURES, LAMBDA_COLUMN, LAMBDA_SCALE, LOCAL_MEAN_COLUMN, MEMORY_COLUMNS, MODEL_FEATURES, SPENT_COLUMN)

INITIAL_SHARPNESS = 20.0  # prior logits are expected utilities (about 0..1) times this
# Pseudo-counts of the network's prediction against the memory's evidence (sum of kernel weights).
INITIAL_PSEUDO_COUNT, INITIAL_PSEUDO_COUNT_ANSWERED = 4.0, 16.0
CONTEXT_FEATURES = GLOBAL_FEATURES - 2  # the λ-free global columns the learned parts see
DESCRIPTOR_DIM = 384


class CompactRouter(nn.Module):
    def __init__(self, n_models: int, n_tags: int, query_dim: int = 384, hidden: int = 64,
                 model_embedding: int = 16, reward_k: float = 1.0, dropout: float = 0.0,
                 id_dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"n_models": n_models, "n_tags": n_tags, "query_dim": query_dim, "hidden": hidden,
                       "model_embedding": model_embedding, "reward_k": reward_k, "dropout": dropout,
                       "id_dropout": id_dropout}
        self.reward_k = reward_k
        self.id_dropout = id_dropout
        # Dropout on the query only: training prompts are memorised within a few epochs otherwise.
        # Active in train() mode, i.e. in the supervised warm start; rollouts and the GRPO update run
        # in eval() mode so sampled and optimised log-probabilities agree. Id dropout (same phase)
        # hides a model's id so that its description has to carry the prediction.
        self.query = nn.Sequential(nn.Dropout(dropout), nn.Linear(query_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.model_embedding = nn.Embedding(n_models + 1, model_embedding)  # row 0: unknown model
        self.descriptor = nn.Linear(DESCRIPTOR_DIM, model_embedding)
        width = hidden + CONTEXT_FEATURES + model_embedding + MODEL_FEATURES + n_tags
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        # Correctness: a per-model readout of the query (a multi-label classifier over the catalog),
        # a query × model-descriptor match (what carries to unseen models), and a term from the trunk,
        # which sees what the episode learned (answers, agreement).
        self.correct_readout = nn.Linear(hidden, n_models + 1)
        self.correct_match = nn.Linear(hidden, model_embedding)
        self.cost_readout = nn.Linear(hidden, n_models + 1)
        self.correct_head = nn.Linear(hidden, 1)
        self.cost_head = nn.Linear(hidden, 1)
        self.call_head = nn.Linear(hidden, 1)
        self.select_head = nn.Linear(hidden, 1)
        self.stop_head = nn.Sequential(nn.Linear(2 * hidden + CONTEXT_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        self.log_sharpness = nn.Parameter(torch.tensor(float(INITIAL_SHARPNESS)).log())
        self.log_pseudo_count = nn.Parameter(torch.tensor([INITIAL_PSEUDO_COUNT, INITIAL_PSEUDO_COUNT_ANSWERED]).log())
        for head in (self.call_head, self.select_head, self.stop_head[-1]):  # residuals start at zero
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, query: torch.Tensor, global_x: torch.Tensor, model_ids: torch.Tensor,
                model_x: torch.Tensor, present: torch.Tensor, selectable: torch.Tensor | None = None,
                descriptors: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """query [B, Q]; global_x [B, G]; model_ids [B, M]; model_x [B, M, F]; present [B, M] bool;
        selectable [B, M] bool (answered models; default: none); descriptors [B, M, 384] (catalog
        description embeddings; default: none). Returns call/select/correct/log_cost/penalty [B, M]
        and stop/more [B] logits."""
        if self.training and self.id_dropout > 0:
            hidden_id = torch.rand(model_ids.shape, device=model_ids.device) < self.id_dropout
            model_ids = torch.where(hidden_id, torch.zeros_like(model_ids), model_ids)
        q = self.query(query)
        context = global_x[:, 1:SPENT_COLUMN]
        m = model_x.shape[1]
        model = self.model_embedding(model_ids)
        if descriptors is not None:
            model = model + self.descriptor(descriptors)
        # The memory reaches the prediction only through the update below, never the trunk: a trunk
        # that read it would move its own prediction as verdicts arrive, and the residuals the
        # calibration is made of (verdict − this prediction) would then be counted twice.
        trunk_x = model_x.clone()
        trunk_x[..., MEMORY_COLUMNS] = 0.0
        x = torch.cat([torch.cat([q, context], -1)[:, None, :].expand(-1, m, -1), model, trunk_x], dim=-1)
        h = self.trunk(x)
        weights = present.float()[..., None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        stop_more = self.stop_head(torch.cat([q, pooled, context], dim=-1))
        correct = (self.correct_readout(q).gather(1, model_ids) + (self.correct_match(q)[:, None, :] * model).sum(-1)
                   + self.correct_head(h).squeeze(-1))
        log_cost = (model_x[..., ESTIMATE_COLUMN] * COST_SCALE + self.cost_readout(q).gather(1, model_ids)
                    + self.cost_head(h).squeeze(-1))
        p_correct = self._update(torch.sigmoid(correct), model_x)
        correct = torch.logit(p_correct)
        prior = self._prior(p_correct, log_cost, global_x, selectable)
        return {"call": prior["call"] + self.call_head(h).squeeze(-1),
                "select": prior["select"] + self.select_head(h).squeeze(-1),
                "stop": prior["stop"] + stop_more[:, 0], "more": stop_more[:, 1], "penalty": prior["penalty"],
                "correct": correct, "log_cost": log_cost}

    def _update(self, p_net: torch.Tensor, model_x: torch.Tensor) -> torch.Tensor:
        """The network's prediction, shifted by the model's calibration, then updated by the memory's
        local evidence (a weighted mean of recorded scores over the evidence E):
        (a·p_net + E·mean) / (a + E); with no evidence and no calibration, p_net."""
        evidence = model_x[..., EVIDENCE_COLUMN].clamp(min=0.0)
        answered = model_x[..., ANSWERED_COLUMN] > 0.5
        pseudo = torch.where(answered, self.log_pseudo_count[1], self.log_pseudo_count[0]).exp()
        p_net = (p_net + model_x[..., CALIBRATION_COLUMN]).clamp(1e-4, 1 - 1e-4)
        p = (pseudo * p_net + evidence * model_x[..., LOCAL_MEAN_COLUMN]) / (pseudo + evidence)
        return p.clamp(1e-4, 1 - 1e-4)

    def _prior(self, p_correct: torch.Tensor, log_cost: torch.Tensor, global_x: torch.Tensor,
               selectable: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Expected utility of each choice, K·p − λ·ĉ, scaled by the sharpness (``penalty`` is the
        scaled λ·ĉ of each call). The predictions are detached: the prior's job is to steer, the
        supervised losses train them."""
        p = p_correct.detach()
        cost_lambda = torch.expm1(global_x[:, LAMBDA_COLUMN:LAMBDA_COLUMN + 1] * LAMBDA_SCALE)
        cost_usd = torch.expm1(log_cost.detach().clamp(min=0, max=30)) / 1e6
        sharpness = self.log_sharpness.exp()
        penalty = sharpness * cost_lambda * cost_usd
        answered = selectable if selectable is not None else torch.zeros_like(p, dtype=torch.bool)
        best = torch.where(answered, p, torch.zeros_like(p)).max(-1).values
        return {"call": sharpness * self.reward_k * p - penalty, "select": sharpness * p,
                "stop": sharpness * self.reward_k * best, "penalty": penalty}
