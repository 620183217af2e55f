"""What the compact policy sees of an episode state, as arrays (one row per model in the pool).

Per model: its catalog descriptor (log prices, log context, capability tags, the estimated cost of
calling it on this prompt; the id of its learned embedding, 0 for a model never trained with, and
its description embedded by the query encoder — see ``descriptor_text``) and what the episode learned
about it so far (called, succeeded, answer length, an option letter extracted, agreement with the
other answers). Global: λ, the turn, the spend so far, answers so far.

Why λ and the spend are kept apart from everything else: the network's learned parts never see them
(network.py); λ enters only through the closed-form cost term of the prior, which is what makes a
larger λ never choose a dearer call. Nothing here saturates in λ or in cost: a penalty capped at the
reward's ``cost_max`` made every call look equally dear at large λ, and the policy then went back to
the most accurate — most expensive — model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from xrouter.common.outcomes import is_placeholder
from xrouter.router.compact.answer_checks import CHECK_NAMES, as_features, check_answer
from xrouter.router.compact.memory import CALIBRATION, EVIDENCE, LOCAL_MEAN, MEMORY_FEATURES
from xrouter.router.baselines import answer_key
from xrouter.router.policy import EpisodeState, ModelOption

# See encode_state: 12 of the model and the episode, then the answer checks (answer_checks.py) of
# its answer, all 0 when it has none: what a look at a cheap answer says before returning it; then
# what the outcome memory (memory.py) holds on this model for prompts like this one.
BASE_FEATURES = 12
MEMORY_COLUMNS = slice(BASE_FEATURES + len(CHECK_NAMES), BASE_FEATURES + len(CHECK_NAMES) + MEMORY_FEATURES)
MODEL_FEATURES = MEMORY_COLUMNS.stop
# What the network's update by the memory reads (network.py) and its trunk does not.
LOCAL_MEAN_COLUMN, EVIDENCE_COLUMN = MEMORY_COLUMNS.start + LOCAL_MEAN, MEMORY_COLUMNS.start + EVIDENCE
CALIBRATION_COLUMN = MEMORY_COLUMNS.start + CALIBRATION
ANSWERED_COLUMN = 3  # model_x: the model's call succeeded
ESTIMATE_COLUMN = 9  # model_x: log(estimated call cost in micro-dollars + 1) / COST_SCALE
COST_SCALE = 10.0
GLOBAL_FEATURES = 6
LAMBDA_COLUMN, SPENT_COLUMN = 0, GLOBAL_FEATURES - 1  # the two columns only the prior reads
LAMBDA_SCALE = 6.0
SPENT_SCALE = 20.0


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Model ids and tags known at training time; unknown models share embedding row 0."""

    models: tuple[str, ...]
    tags: tuple[str, ...]

    def model_index(self, model: str) -> int:
        return self.models.index(model) + 1 if model in self.models else 0


def lambda_feature(cost_lambda: float) -> float:
    # λ spans orders of magnitude (reward per dollar): log scale; the prior inverts it exactly.
    return math.log1p(cost_lambda) / LAMBDA_SCALE


def spent_feature(spent_usd: float) -> float:
    return math.log1p(spent_usd * 1e6) / SPENT_SCALE


def descriptor_text(option: ModelOption) -> str:
    """What the encoder reads of a catalog entry: a platform team's new model is described, not trained."""
    tags = ", ".join(option.tags) or "none"
    return (f"{option.id}. {option.description} Capabilities: {tags}. Price per million tokens: "
            f"${option.input_usd_per_mtok:g} in, ${option.output_usd_per_mtok:g} out.")


@dataclasses.dataclass
class StateArrays:
    """Arrays for one decision; ``models`` lists the pool in row order."""

    models: list[str]
    model_ids: np.ndarray  # [M] int64, embedding rows
    model_x: np.ndarray  # [M, MODEL_FEATURES + len(tags)] float32
    global_x: np.ndarray  # [GLOBAL_FEATURES] float32
    callable_: np.ndarray  # [M] bool: not called yet
    selectable: np.ndarray  # [M] bool: answered successfully


def encode_state(state: EpisodeState, vocabulary: Vocabulary, lambda_top: float = math.inf,
                 answer_checks: bool = True, memory_x: np.ndarray | None = None) -> StateArrays:
    """The arrays of one decision; λ above ``lambda_top`` (the top of the trained range) counts as it;
    ``answer_checks=False`` leaves the answer-check columns at 0 (an ablation); ``memory_x`` [M, MEMORY_FEATURES] is
    the outcome memory's view of each pool model (``OutcomeMemory.features``; None: zeros)."""
    cost_lambda = min(state.cost_lambda, lambda_top)
    models = [option.id for option in state.pool]
    latest = {c.model: c for c in state.calls}  # a model's latest call
    # A replayed answer whose text was not recorded is known to exist but says nothing: no key.
    keys = {c.model: answer_key(c.text) for c in state.calls if c.ok and not is_placeholder(c.text)}
    tag_count = len(vocabulary.tags)
    model_x = np.zeros((len(models), MODEL_FEATURES + tag_count), dtype=np.float32)
    for row, option in enumerate(state.pool):
        call = latest.get(option.id)
        ok = call is not None and call.ok
        seen = ok and option.id in keys
        others = [key for model, key in keys.items() if model != option.id]
        agreement = sum(key == keys.get(option.id) for key in others) / len(others) if seen and others else 0.0
        estimate_micro = state.estimate_call_usd(option) * 1e6
        if ok and answer_checks:
            model_x[row, BASE_FEATURES:MEMORY_COLUMNS.start] = as_features(check_answer(state.prompt, call.text))
        model_x[row, :BASE_FEATURES] = (
            math.log10(option.input_usd_per_mtok + 1e-3) / 2, math.log10(option.output_usd_per_mtok + 1e-3) / 2,
            call is not None, ok, math.log1p(len(call.text)) / 8 if seen else 0.0,
            seen and len(keys[option.id]) == 1, agreement, seen and bool(others) and agreement == 1.0,
            seen and "def " in call.text, math.log1p(estimate_micro) / COST_SCALE,
            math.log2(option.context_tokens) / 20 if option.context_tokens > 0 else 0.0,
            ok and not seen)
        for tag in option.tags:
            if tag in vocabulary.tags:
                model_x[row, MODEL_FEATURES + vocabulary.tags.index(tag)] = 1.0
    if memory_x is not None:
        model_x[:, MEMORY_COLUMNS] = memory_x
    global_x = np.array([lambda_feature(cost_lambda), state.turn / 4, state.final_turn,
                         math.log1p(state.spent_usd() * 1000), len(keys) / 3, spent_feature(state.spent_usd())],
                        dtype=np.float32)
    called = {c.model for c in state.calls}
    answered = {c.model for c in state.calls if c.ok}
    return StateArrays(
        models, np.array([vocabulary.model_index(m) for m in models], dtype=np.int64), model_x, global_x,
        np.array([m not in called for m in models]), np.array([m in answered for m in models]))
