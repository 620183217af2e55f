"""What the compact policy sees of an episode state, as arrays (one row per model in the pool).

Per model: its catalog features (log prices, capability tags, an id for its learned embedding) and
what the episode learned about it so far (called, succeeded, answer length, an option letter
extracted, agreement with the other answers). Global: λ, the turn, the spend so far.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xrouter.router.baselines import answer_key
from xrouter.router.policy import EpisodeState

MODEL_FEATURES = 10  # see encode_state
GLOBAL_FEATURES = 6
# The reward's cost cap (cost_max): a penalty feature saturates where the reward does.
PENALTY_CAP = 0.7


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Model ids and tags known at training time; unknown models share embedding row 0."""

    models: tuple[str, ...]
    tags: tuple[str, ...]

    def model_index(self, model: str) -> int:
        return self.models.index(model) + 1 if model in self.models else 0


LAMBDA_SCALE = 6.0


def lambda_feature(cost_lambda: float) -> float:
    # λ spans orders of magnitude (reward per dollar): log scale, about [0, 1.2] for λ ≤ 1000.
    return math.log1p(cost_lambda) / LAMBDA_SCALE


@dataclasses.dataclass
class StateArrays:
    """Arrays for one decision; ``models`` lists the pool in row order."""

    models: list[str]
    model_ids: np.ndarray  # [M] int64, embedding rows
    model_x: np.ndarray  # [M, MODEL_FEATURES + len(tags)] float32
    global_x: np.ndarray  # [GLOBAL_FEATURES] float32
    callable_: np.ndarray  # [M] bool: not called yet
    selectable: np.ndarray  # [M] bool: answered successfully


def encode_state(state: EpisodeState, vocabulary: Vocabulary) -> StateArrays:
    models = [option.id for option in state.pool]
    latest = {c.model: c for c in state.calls}  # a model's latest call
    keys = {c.model: answer_key(c.text) for c in state.calls if c.ok}
    tag_count = len(vocabulary.tags)
    model_x = np.zeros((len(models), MODEL_FEATURES + tag_count), dtype=np.float32)
    for row, option in enumerate(state.pool):
        call = latest.get(option.id)
        ok = call is not None and call.ok
        others = [key for model, key in keys.items() if model != option.id]
        agreement = sum(key == keys.get(option.id) for key in others) / len(others) if ok and others else 0.0
        model_x[row, :MODEL_FEATURES] = (
            math.log10(option.input_usd_per_mtok + 1e-3) / 2, math.log10(option.output_usd_per_mtok + 1e-3) / 2,
            call is not None, ok, math.log1p(len(call.text)) / 8 if ok else 0.0,
            ok and len(keys[option.id]) == 1, agreement, ok and bool(others) and agreement == 1.0,
            ok and "def " in call.text,
            # What calling this model would cost in reward at this λ: the quantity the policy trades
            # against accuracy, given directly rather than left to be learned from λ and prices.
            min(state.cost_lambda * state.estimate_call_usd(option), PENALTY_CAP) / PENALTY_CAP)
        for tag in option.tags:
            if tag in vocabulary.tags:
                model_x[row, MODEL_FEATURES + vocabulary.tags.index(tag)] = 1.0
    global_x = np.array([lambda_feature(state.cost_lambda), state.turn / 4, state.final_turn,
                         math.log1p(state.spent_usd() * 1000), len(keys) / 3,
                         min(state.cost_lambda * state.spent_usd(), PENALTY_CAP) / PENALTY_CAP], dtype=np.float32)
    called = {c.model for c in state.calls}
    return StateArrays(
        models, np.array([vocabulary.model_index(m) for m in models], dtype=np.int64), model_x, global_x,
        np.array([m not in called for m in models]), np.array([m in keys for m in models]))
