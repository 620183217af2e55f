"""Baselines that evaluation runs beside the learned router, as ordinary policies played through the
same episode loop: uniform random, the label-peeking oracle, and a kNN router over query
embeddings. (Single models, cheapest and the cascade come from ``xrouter.router.baselines``.)"""

from __future__ import annotations

import dataclasses
import pathlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np

from xrouter.adapters.token_count import estimate_tokens
from xrouter.common import outcomes
from xrouter.common.outcomes import read_outcomes
from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.policy import Action, CallModels, EpisodeState, ModelOption, SelectResponse, ToolCall

from xrouter_training.environment import Prompt


def placeholders_supported() -> bool:
    """Whether rows with a score but no response text can be replayed (as a marked placeholder that
    the recorded-label verifier scores), i.e. whether ``xrouter.common.outcomes`` has ``placeholder_text``."""
    return hasattr(outcomes, "placeholder_text")


@dataclasses.dataclass
class OutcomeTable:
    """The recorded score and dollar cost of every (prompt, model) answer of an outcome set.

    Rows without ``cost_usd`` are priced from the catalog with the recorded token counts, or with
    the estimate the replay backend uses when those are missing too. Rows without response text are
    kept when they can be replayed as placeholders (see ``placeholders_supported``); scores may be
    graded (any value in 0..1)."""

    scores: dict[str, dict[str, float]]
    costs: dict[str, dict[str, float]]
    prompt_ids: dict[str, str]  # prompt text → id (the first id recorded for that text, as replay does)
    priced_rows: int = 0  # rows whose cost came from catalog prices

    @classmethod
    def from_file(cls, path: pathlib.Path | str, options: Mapping[str, ModelOption]) -> OutcomeTable:
        table = cls({}, {}, {})
        textless = placeholders_supported()
        for row in read_outcomes(path):
            if row.model not in options or row.score is None or (row.response is None and not textless):
                continue
            table.prompt_ids.setdefault(row.prompt, row.prompt_id)
            cost = row.cost_usd
            if cost is None:
                input_tokens = row.prompt_tokens or estimate_tokens(row.prompt)
                text = row.response if row.response is not None else outcomes.placeholder_text(row.prompt_id, row.model)
                output_tokens = row.completion_tokens or estimate_tokens(text)  # as the replay prices it
                cost = options[row.model].estimate_cost_usd(input_tokens, output_tokens)
                table.priced_rows += 1
            table.scores.setdefault(row.prompt_id, {})[row.model] = float(row.score)
            table.costs.setdefault(row.prompt_id, {})[row.model] = float(cost)
        return table

    def prompt_id(self, text: str) -> str:
        """The id of a recorded prompt; a prompt the set does not hold is a caller bug, so it raises
        KeyError (never an XRouterError, which the environment would score as a silent 0)."""
        try:
            return self.prompt_ids[text]
        except KeyError:
            raise KeyError(f"prompt not in the outcome table ({len(text)} characters, {text[:60]!r})") from None


class RankedPolicy:
    """Calls the first model of a per-query ranking and returns its answer; if that call fails, the
    next model of the ranking is tried while turns remain."""

    kind = "ranked"
    version = "1"
    min_turns = 2

    def rank(self, state: EpisodeState) -> list[str]:
        raise NotImplementedError

    async def decide(self, state: EpisodeState) -> Action:
        answered = next((c.index for c in reversed(state.calls) if c.ok), None)
        if answered is not None or state.final_turn:
            return SelectResponse(-1 if answered is None else answered)
        tried = {c.model for c in state.calls}
        untried = [m for m in self.rank(state) if m not in tried]
        if not untried:
            return SelectResponse(-1)
        return CallModels((ToolCall(untried[0], SYSTEM_PROMPT),))


class RandomPolicy(RankedPolicy):
    """A uniformly random model per query, seeded by (seed, prompt) so reruns and orderings agree."""

    kind = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def rank(self, state: EpisodeState) -> list[str]:
        models = sorted(o.id for o in state.pool)
        random.Random(f"{self.seed}\x00{state.prompt}").shuffle(models)
        return models


class OraclePolicy(RankedPolicy):
    """The upper limit: it reads the recorded labels and costs and picks, per query, the model that
    maximises score − λ·cost (ties: the cheaper). At λ = 0 that is the cheapest correct model."""

    kind = "oracle"

    def __init__(self, table: OutcomeTable) -> None:
        self.table = table

    def rank(self, state: EpisodeState) -> list[str]:
        prompt_id = self.table.prompt_id(state.prompt)
        scores, costs = self.table.scores[prompt_id], self.table.costs[prompt_id]
        known = [o.id for o in state.pool if o.id in scores]
        return sorted(known, key=lambda m: (-(scores[m] - state.cost_lambda * costs[m]), costs[m], m))


class Encoder(Protocol):
    """What the kNN router needs of ``xrouter.router.compact.encoder.QueryEncoder``."""

    def encode(self, texts: list[str]) -> np.ndarray: ...  # [n, d] float32, L2-normalised


# Prompts → {prompt id: vector}; the compact encoder's disk-cached ``embed_prompts`` is one.
Embedder = Callable[[Sequence[Prompt]], Mapping[str, np.ndarray]]


def encoder_embedder(encoder: Encoder, batch_size: int = 64) -> Embedder:
    """An embedder that runs ``encoder.encode`` over the prompt texts in batches."""
    def embed(prompts: Sequence[Prompt]) -> dict[str, np.ndarray]:
        vectors: dict[str, np.ndarray] = {}
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            matrix = np.asarray(encoder.encode([p.text for p in chunk]), dtype=np.float32)
            if matrix.shape[0] != len(chunk):
                raise ValueError(f"encoder returned {matrix.shape[0]} vectors for {len(chunk)} texts")
            vectors.update({p.prompt_id: matrix[i] for i, p in enumerate(chunk)})
        return vectors
    return embed


# Neighbourhood sizes the kNN router chooses from (leave-one-out on its training prompts).
K_CANDIDATES = (5, 10, 20, 40, 80, 160, 320)


class KnnRouter:
    """k nearest training prompts by cosine similarity of their (L2-normalised) embeddings; per model,
    the neighbours' mean recorded score and mean cost. With ``k=None``, k is the candidate with the
    best leave-one-out utility (mean score − λ·mean cost, averaged over ``lambdas``) on the training
    prompts themselves, so the baseline is tuned without looking at the evaluated split."""

    def __init__(self, train_vectors: Mapping[str, np.ndarray], table: OutcomeTable, models: Sequence[str],
                 k: int | None = None, lambdas: Sequence[float] = (0.0,)) -> None:
        self.ids = sorted(pid for pid in train_vectors if pid in table.scores)
        if not self.ids:
            raise ValueError("the kNN router has no training prompt with recorded outcomes")
        self.matrix = np.stack([train_vectors[pid] for pid in self.ids]).astype(np.float32)
        self.index = {pid: i for i, pid in enumerate(self.ids)}
        self.models = list(models)
        # [train prompts, models]; NaN where the model has no recorded answer to the prompt.
        self.scores = np.array([[table.scores[p].get(m, np.nan) for m in self.models] for p in self.ids])
        self.costs = np.array([[table.costs[p].get(m, np.nan) for m in self.models] for p in self.ids])
        self.loo_utility: dict[int, float] = {}
        if k is None:
            self.loo_utility = self._leave_one_out(lambdas)
            k = max(self.loo_utility, key=lambda c: (self.loo_utility[c], -c))
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = min(k, len(self.ids))

    def neighbours(self, vector: np.ndarray) -> list[str]:
        similarity = self.matrix @ np.asarray(vector, dtype=np.float32)
        nearest = np.argpartition(-similarity, self.k - 1)[: self.k]
        return [self.ids[i] for i in nearest]

    def _means(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.sum(~np.isnan(self.scores[rows]), axis=0)
        with np.errstate(invalid="ignore"):
            return (np.nansum(self.scores[rows], axis=0) / counts, np.nansum(self.costs[rows], axis=0) / counts)

    def value(self, neighbours: Iterable[str], models: Sequence[str]) -> dict[str, tuple[float, float]]:
        """{model: (mean score, mean cost)} over the neighbours that recorded the model."""
        score, cost = self._means(np.array([self.index[pid] for pid in neighbours]))
        column = {m: j for j, m in enumerate(self.models)}
        return {m: (float(score[column[m]]), float(cost[column[m]]))
                for m in models if m in column and not np.isnan(score[column[m]])}

    def _leave_one_out(self, lambdas: Sequence[float]) -> dict[int, float]:
        similarity = self.matrix @ self.matrix.T
        np.fill_diagonal(similarity, -np.inf)  # a prompt is not its own neighbour
        order = np.argsort(-similarity, axis=1)
        grid = np.asarray(lambdas, dtype=np.float64)
        utility = {}
        for k in (c for c in K_CANDIDATES if c < len(self.ids)):
            total = 0.0
            for i in range(len(self.ids)):
                score, cost = self._means(order[i, :k])
                known = np.flatnonzero(~np.isnan(score))
                for lam in grid:
                    # The model KnnPolicy.rank would pick: best value, ties to the cheaper.
                    j = known[np.lexsort((cost[known], -(score[known] - lam * cost[known])))[0]]
                    total += np.nan_to_num(self.scores[i, j]) - lam * np.nan_to_num(self.costs[i, j])
            utility[k] = float(total / (len(self.ids) * len(grid)))
        return utility or {len(self.ids): 0.0}


class KnnPolicy(RankedPolicy):
    """The kNN router as a policy: the model maximising mean_score − λ·mean_cost over the query's k
    nearest training prompts (ties: the cheaper); models no neighbour recorded come last."""

    kind = "knn"

    def __init__(self, router: KnnRouter, query_vectors: Mapping[str, np.ndarray], table: OutcomeTable) -> None:
        self.router, self.query_vectors, self.table = router, query_vectors, table

    def rank(self, state: EpisodeState) -> list[str]:
        vector = self.query_vectors[self.table.prompt_id(state.prompt)]
        models = [o.id for o in state.pool]
        values = self.router.value(self.router.neighbours(vector), models)
        scored = sorted(values, key=lambda m: (-(values[m][0] - state.cost_lambda * values[m][1]), values[m][1], m))
        return scored + sorted(m for m in models if m not in values)
