"""The compact policy network. One forward pass scores, for a batch of decisions padded to the same
pool size: a logit to call each model first, the logit of stopping (select an answer), whether to
also call a second model in the same turn, and a score to select each answered model.

Factorising a turn as first model (or stop) → maybe one more model keeps exact log-probabilities
for GRPO while letting the policy call two models in parallel (the cheap-pair-then-escalate pattern)."""

from __future__ import annotations

import torch
from torch import nn

from xrouter.router.compact.features import GLOBAL_FEATURES, MODEL_FEATURES


class CompactRouter(nn.Module):
    def __init__(self, n_models: int, n_tags: int, query_dim: int = 384, hidden: int = 64,
                 model_embedding: int = 16) -> None:
        super().__init__()
        self.config = {"n_models": n_models, "n_tags": n_tags, "query_dim": query_dim, "hidden": hidden,
                       "model_embedding": model_embedding}
        self.query = nn.Sequential(nn.Linear(query_dim, hidden), nn.ReLU())
        self.model_embedding = nn.Embedding(n_models + 1, model_embedding)  # row 0: unknown model
        width = hidden + GLOBAL_FEATURES + model_embedding + MODEL_FEATURES + n_tags
        self.trunk = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.call_head = nn.Linear(hidden, 1)
        self.select_head = nn.Linear(hidden, 1)
        self.stop_head = nn.Sequential(nn.Linear(2 * hidden + GLOBAL_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, query: torch.Tensor, global_x: torch.Tensor, model_ids: torch.Tensor,
                model_x: torch.Tensor, present: torch.Tensor) -> dict[str, torch.Tensor]:
        """query [B, Q]; global_x [B, G]; model_ids [B, M]; model_x [B, M, F]; present [B, M] bool.
        Returns call/select logits [B, M] and stop/more logits [B]."""
        q = self.query(query)
        context = torch.cat([q, global_x], dim=-1)
        m = model_x.shape[1]
        x = torch.cat([context[:, None, :].expand(-1, m, -1), self.model_embedding(model_ids), model_x], dim=-1)
        h = self.trunk(x)
        weights = present.float()[..., None]
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        stop_more = self.stop_head(torch.cat([q, pooled, global_x], dim=-1))
        return {"call": self.call_head(h).squeeze(-1), "select": self.select_head(h).squeeze(-1),
                "stop": stop_more[:, 0], "more": stop_more[:, 1]}
