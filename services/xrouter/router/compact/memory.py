"""Outcome memory: recorded (prompt, model, score) outcomes, looked up by query similarity.

For each pool model the compact policy reads what the memory says about prompts like this one: the
similarity-weighted mean score of that model on the nearest prompts it was recorded on and how much
evidence that is (the sum of the weights), how close those prompts are, whether it has any, and the
model's mean score and number of rows over the whole memory, and its calibration: the mean
residual (verdict − the network's own prediction) of the verdicts added while serving.

The network does not learn how far to trust the local evidence: it is a Bayesian update of the
network's own prediction, ``p = (a·p_net + E·mean) / (a + E)`` with one learned pseudo-count ``a``
(network.py). So a handful of verdicts on a new model moves its prediction at once, as far as they
are evidence and no further, and a dense memory makes the policy at least a kNN router. (The first
memory let the network learn the trust from dense rows alone; with the sparse rows of live traffic
it then ignored them.)

Weights are ``exp((sim − 1) / temperature)`` over the ``k`` nearest rows recorded on the model. A
sharp kernel (temperature 0.05) is a mean of two or three prompts: on LLMRouter's train split as a
kNN router it recovered 0.57 of the gap where temperature 0.5 and k = 64 recover 1.08
(``bench/memory_kernel.py``).

Why a memory and not only weights: a platform team's own traffic, and models added after training,
are learned by adding rows (``add``) — the routing changes at the next request, without a gradient
step (issue: the router learns from its own traffic). A served verdict counts once, one of two
ways (``CompactPolicy.record_verdicts`` chooses): on a model the memory holds recorded rows of, as
one more recorded row (local evidence: traffic of a new kind teaches where a known model is right);
on a model it holds none of, as a row added with the network's prediction, which only calibrates
that model (never local evidence: a few dozen verdicts scattered over a new model's prompts made its
"local" mean a noisy global one that outweighed the network's per-prompt prediction, and counted
both ways a verdict counted twice). Rows of the prompt being decided are left out
(matched by text hash), so training on prompts that are in the memory sees exactly what serving an
unseen prompt sees: neighbours, never the answer itself.

Stored in a checkpoint as ``memory.npz``: vectors as int8 (L2-normalised, ×127: cosine similarities
move by < 0.01), scores as float16 with NaN where a model has no recorded score."""

from __future__ import annotations

import hashlib
import pathlib
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
import torch

# Per model: neighbours' weighted mean score, their mean similarity, any at all, evidence (sum of
# weights), the model's mean score over the whole memory, log(1 + its rows) / COUNT_SCALE, and its
# calibration (the sum of its verdicts' residuals over their number + CALIBRATION_PRIOR_ROWS).
MEMORY_FEATURES = 7
LOCAL_MEAN, CLOSENESS, KNOWN, EVIDENCE, GLOBAL_MEAN, GLOBAL_COUNT, CALIBRATION = range(MEMORY_FEATURES)
COUNT_SCALE = 10.0
# Why a calibration: the network's prior for a model it never trained with can be off for every
# prompt at once (LLMRouter's models, described alike, predicted 0.14-0.40 when they score
# 0.17-0.61). Local evidence fixes that one neighbourhood at a time; the model's mean residual fixes
# it everywhere after a few verdicts. Rows recorded offline carry no residual (the network was fit
# on them), so training sees 0 here and serving learns it from traffic alone.
CALIBRATION_PRIOR_ROWS = 4.0
# A calibration moves every prediction of its model, so it waits until the verdicts show a bias
# rather than their own noise: it is scaled by max(0, 1 − (Z/t)²), t the mean residual's t-statistic
# (a positive-part James–Stein shrink: 0 while |t| ≤ Z, nearly all of it once |t| ≫ Z). Without this,
# 30-60 verdicts on a model whose prediction was already right moved it by their noise (±0.07-0.09)
# and the router got worse on RouterBench with every batch of feedback. The residuals' variance
# starts from CALIBRATION_PRIOR_ROWS rows at 0.25, the most a [0, 1] verdict can vary, so a few
# verdicts that agree by chance are not taken for certainty.
CALIBRATION_Z = 2.0
DEFAULT_K, DEFAULT_TEMPERATURE = 64, 0.5
FILE = "memory.npz"
# What reading a memory.npz that is not one raises (not a zip, pickled arrays, a missing array).
UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:8]


class OutcomeMemory:
    def __init__(self, vectors: np.ndarray, keys: Sequence[bytes], models: Sequence[str], scores: np.ndarray,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> None:
        """vectors [N, D] L2-normalised; keys [N] text hashes; scores [N, len(models)] (NaN: unknown)."""
        if len(vectors) != len(keys) or scores.shape != (len(keys), len(models)):
            raise ValueError(f"memory shapes disagree: {vectors.shape}, {len(keys)} keys, {scores.shape}, "
                             f"{len(models)} models")
        self.k, self.temperature = k, temperature
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.keys = np.array([int.from_bytes(key, "little", signed=True) for key in keys], dtype=np.int64)
        self.models = list(models)
        self.column = {model: j for j, model in enumerate(self.models)}
        self.scores = np.asarray(scores, dtype=np.float32)
        # Verdict − the network's prediction, for rows added while serving (NaN: none, offline rows).
        self.residuals = np.full(self.scores.shape, np.nan, dtype=np.float32)
        self._rows: dict[tuple[int, ...], np.ndarray] = {}
        self._totals: tuple[np.ndarray, np.ndarray] | None = None
        self._residual_sums: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_outcomes(cls, texts: Sequence[str], scores: Sequence[Mapping[str, float]],
                      embed: callable, **kwargs: float) -> OutcomeMemory:  # type: ignore[valid-type]
        """One row per prompt: its embedding and every model's recorded score on it."""
        models = sorted({model for row in scores for model in row})
        column = {model: j for j, model in enumerate(models)}
        matrix = np.full((len(texts), len(models)), np.nan, dtype=np.float32)
        for i, row in enumerate(scores):
            for model, score in row.items():
                matrix[i, column[model]] = score
        vectors = np.stack([embed(text) for text in texts]) if texts else np.zeros((0, 384), np.float32)
        return cls(vectors, [text_key(text) for text in texts], models, matrix, **kwargs)

    def rows_of(self, model: str) -> int:
        """How many rows record ``model``."""
        return int(self._global_totals()[1][self.column[model]]) if model in self.column else 0

    def recorded_rows_of(self, model: str) -> int:
        """How many rows record ``model`` as local evidence (offline rows and served verdicts on a
        model the memory knew), not as calibration residuals."""
        if model not in self.column:
            return 0
        column = self.column[model]
        return int((~np.isnan(self.scores[:, column]) & np.isnan(self.residuals[:, column])).sum())

    def add(self, text: str, vector: np.ndarray, outcomes: Mapping[str, float],
            predicted: Mapping[str, float] | None = None) -> None:
        """A new row (a served request's verdicts): the next lookup already sees it. ``predicted``:
        the network's own prediction for the models judged (before the memory's say), whose
        residuals calibrate those models (see CALIBRATION_PRIOR_ROWS)."""
        for model in outcomes:
            if model not in self.column:
                self.column[model] = len(self.models)
                self.models.append(model)
                empty = np.full((len(self.scores), 1), np.nan, np.float32)
                self.scores = np.concatenate([self.scores, empty], 1)
                self.residuals = np.concatenate([self.residuals, empty], 1)
        row = np.full((1, len(self.models)), np.nan, dtype=np.float32)
        residual = np.full((1, len(self.models)), np.nan, dtype=np.float32)
        for model, score in outcomes.items():
            row[0, self.column[model]] = score
            if predicted is not None and model in predicted:
                residual[0, self.column[model]] = score - predicted[model]
        self.residuals = np.concatenate([self.residuals, residual])
        self.vectors = np.concatenate([self.vectors, np.asarray(vector, np.float32)[None]])
        self.keys = np.append(self.keys, int.from_bytes(text_key(text), "little", signed=True))
        self.scores = np.concatenate([self.scores, row])
        self._rows.clear()
        self._totals = self._residual_sums = None

    def has_residual(self, text: str, model: str) -> bool:
        """Whether a served verdict on ``model`` for ``text`` calibrates that model (a residual row)."""
        if model not in self.column:
            return False
        rows = self.keys == int.from_bytes(text_key(text), "little", signed=True)
        return bool((~np.isnan(self.residuals[rows, self.column[model]])).any())

    def set_residuals(self, text: str, residuals: Mapping[str, float]) -> None:
        """Replace the residuals of ``text``'s served verdicts (after the network they were measured
        against has changed: ``fine_tune.recalibrate``)."""
        rows = self.keys == int.from_bytes(text_key(text), "little", signed=True)
        for model, residual in residuals.items():
            column = self.column[model]
            judged = rows & ~np.isnan(self.residuals[:, column])
            self.residuals[judged, column] = residual
        self._residual_sums = None

    def features(self, query: np.ndarray, text: str, models: Sequence[str]) -> np.ndarray:
        """[len(models), MEMORY_FEATURES] (see the constants above), zeros for a model the memory holds
        nothing on. Rows of ``text`` itself are skipped, in the local and the global figures.

        The neighbours of each model are its ``k`` nearest among the ``4k`` nearest rows on which
        any pool model is recorded: exact when the pool's models are recorded on the same prompts
        (one outcome source), and a few vector ops instead of a sort per model."""
        out = np.zeros((len(models), MEMORY_FEATURES), dtype=np.float32)
        columns = [(i, self.column[m]) for i, m in enumerate(models) if m in self.column]
        if not columns or not len(self.keys):
            return out
        slots, cols = (list(x) for x in zip(*columns))
        own = self.keys == int.from_bytes(text_key(text), "little", signed=True)
        total, count = self._global_totals()
        total, count = total[cols].copy(), count[cols].copy()
        if own.any():
            mine = self.scores[own][:, cols]
            total -= np.nansum(mine, 0)
            count -= (~np.isnan(mine)).sum(0)
        seen = count > 0
        out[slots, GLOBAL_MEAN] = np.where(seen, total / np.maximum(count, 1), 0)
        out[slots, GLOBAL_COUNT] = np.log1p(count) / COUNT_SCALE
        residual_sum, residual_squares, judged = (x[cols].copy() for x in self._residual_totals())
        if own.any():
            mine = self.residuals[own][:, cols]
            residual_sum -= np.nansum(mine, 0)
            residual_squares -= np.nansum(mine * mine, 0)
            judged -= (~np.isnan(mine)).sum(0)
        out[slots, CALIBRATION] = calibration(residual_sum, residual_squares, judged)
        candidates = self._rows_for(tuple(cols))
        if not len(candidates):
            return out
        # All rows (cheaper than gathering); through torch, whose thread count the router and the
        # trainer set to 1 — numpy's BLAS threads made this 5x slower on a busy 2-core machine.
        similarity = (torch.from_numpy(self.vectors) @ torch.from_numpy(np.asarray(query, dtype=np.float32))).numpy()
        similarity[own] = -np.inf
        similarity = similarity[candidates]
        width = min(4 * self.k, len(candidates))
        nearest = np.argpartition(-similarity, width - 1)[:width]
        nearest = nearest[np.argsort(-similarity[nearest], kind="stable")]
        sims = similarity[nearest]
        scores = self.scores[candidates[nearest]][:, cols]  # [width, m], nearest first
        use = ~np.isnan(scores) & np.isfinite(sims)[:, None]
        use &= np.cumsum(use, axis=0) <= self.k
        finite = np.where(np.isfinite(sims), sims, 0.0)
        weights = np.exp((finite - 1.0) / self.temperature)[:, None] * use
        count = use.sum(0)
        known = count > 0
        evidence = weights.sum(0)
        mean = (weights * np.nan_to_num(scores)).sum(0) / np.maximum(evidence, 1e-30)
        closeness = np.where(use, finite[:, None], 0.0).sum(0) / np.maximum(count, 1)
        out[slots, LOCAL_MEAN] = np.where(known, mean, 0)
        out[slots, CLOSENESS] = np.where(known, closeness, 0)
        out[slots, KNOWN] = known
        out[slots, EVIDENCE] = evidence
        return out

    def _residual_totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per model column: the sum of its verdicts' residuals, of their squares, and their number
        (cached until ``add``)."""
        if self._residual_sums is None:
            residuals = self.residuals.astype(np.float64)
            self._residual_sums = (np.nansum(residuals, 0), np.nansum(residuals * residuals, 0),
                                   (~np.isnan(residuals)).sum(0).astype(np.float64))
        return self._residual_sums

    def _global_totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Per model column: the sum of its recorded scores and their number (cached until ``add``)."""
        if self._totals is None:
            self._totals = (np.nansum(self.scores, 0).astype(np.float64), (~np.isnan(self.scores)).sum(0))
        return self._totals

    def _rows_for(self, cols: tuple[int, ...]) -> np.ndarray:
        """Rows recorded offline where any of these models is recorded (cached per pool; ``add``
        clears the cache). Served rows (those with a residual) are the calibration's alone."""
        if cols not in self._rows:
            if len(self._rows) > 4096:
                self._rows.clear()
            recorded = ~np.isnan(self.scores[:, list(cols)]).all(1)
            served = ~np.isnan(self.residuals).all(1)
            self._rows[cols] = np.flatnonzero(recorded & ~served)
        return self._rows[cols]

    def save(self, directory: pathlib.Path) -> pathlib.Path:
        path = directory / FILE
        np.savez_compressed(path, vectors=np.round(self.vectors * 127).astype(np.int8), keys=self.keys,
                            models=np.array(self.models), scores=self.scores.astype(np.float16),
                            residuals=self.residuals.astype(np.float16),
                            k=self.k, temperature=self.temperature)
        return path

    @classmethod
    def load(cls, path: pathlib.Path) -> OutcomeMemory:
        with np.load(path, allow_pickle=False) as data:
            vectors = data["vectors"].astype(np.float32) / 127
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            memory = cls(vectors, [b"\0" * 8] * len(vectors), [str(m) for m in data["models"]],
                         data["scores"].astype(np.float32), int(data["k"]), float(data["temperature"]))
            memory.keys = data["keys"].astype(np.int64)
            if "residuals" in data:  # memories saved before calibration have none
                memory.residuals = data["residuals"].astype(np.float32)
        return memory


def calibration(residual_sum: np.ndarray, residual_squares: np.ndarray, judged: np.ndarray) -> np.ndarray:
    """Per model: its verdicts' mean residual (over their number + CALIBRATION_PRIOR_ROWS), scaled
    down while it is not told apart from noise (see CALIBRATION_Z). Zero for a model without verdicts."""
    n = judged
    mean = residual_sum / np.maximum(n, 1.0)
    deviations = np.maximum(residual_squares - n * mean * mean, 0.0)
    variance = (deviations + CALIBRATION_PRIOR_ROWS * 0.25) / (np.maximum(n - 1.0, 0.0) + CALIBRATION_PRIOR_ROWS)
    t_squared = n * mean * mean / variance
    kept = np.maximum(0.0, 1.0 - CALIBRATION_Z ** 2 / np.maximum(t_squared, 1e-12))  # 0 where t is 0
    return (residual_sum / (n + CALIBRATION_PRIOR_ROWS) * kept).astype(np.float32)
