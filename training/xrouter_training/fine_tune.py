"""Learning from traffic by gradient steps: the outcome heads fitted to served verdicts.

The outcome memory alone does not carry a new kind of traffic as far as a policy trained on it.
Measured on LLMRouter's code family (2026-12-08; the start trained without the family, the ceiling
with it: APGR 0.544 and 0.809 on the family's 141 validation prompts):

- every code train prompt's *full* outcome row (all nine models, 534 prompts) added to the memory:
  0.571 — the network's own prediction outweighs neighbours that the MiniLM embedding does not
  single out by family (memory.py's kernel);
- the outcome heads fine-tuned on those same rows (this module): 0.746;
- fine-tuned on 500 single verdicts as serving with ε = 0.1 yields them (the start's own first call
  at a random λ, a random model one time in ten): 0.699.

So it is the prediction that must move. What is fitted: the warm start's supervised loss
(``warm_start.fit_outcomes``, the same trainer) on first-decision states of the lesson prompts (a
random λ, the whole pool, only the judged models labelled), mixed with states of the start's own
training data (the recorded outcomes of the bundled sources its manifest names, train split, its
left-out families and models still left out) so that what it knew is not forgotten; the epoch kept
is the one with the lowest loss on a fifth of the lessons set aside. (Not on replayed prompts too:
the start was trained on them, so their loss is lowest before any step, and with them in the check
the first epoch was kept in four of five fine-tunes, measured.) A verdict says nothing of what a
call costs: the lessons' cost labels are the network's own predictions, and only the replayed
records move the cost head.

Verdicts on a model the memory holds no recorded rows of calibrate it by their residual against the
network's prediction (memory.py). The prediction has just learned them, so the residuals are
recomputed against the fine-tuned network: the bias is not counted twice.
"""

from __future__ import annotations

import dataclasses
import math
import random
import types
from collections.abc import Mapping, Sequence

import torch

from xrouter.router.compact.features import descriptor_text, encode_state
from xrouter.router.compact.policy import CompactPolicy, Turn
from xrouter.router.policy import EpisodeState, ModelOption
from xrouter_training import warm_start
from xrouter_training.environment import MixedEnvironment

EPOCHS, LEARNING_RATE, WEIGHT_DECAY, COST_COEF = 40, 3e-4, 0.01, 0.1
STATES_PER_LESSON, STATES_PER_REPLAYED, REPLAY_PROMPTS, HELD_OUT = 2, 2, 1000, 0.2


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """One served request's verdicts: the prompt and {model: score in [0, 1]}."""

    text: str
    scores: Mapping[str, float]


def replay_environment(manifest: Mapping) -> MixedEnvironment | None:
    """The start's own training data (bundled sources named by its manifest, with what it left out),
    or None for a checkpoint trained on a file of its own (then only the lessons are fitted)."""
    config = manifest.get("config") or {}
    sources = config.get("sources") or []
    if not sources:
        return None
    return MixedEnvironment(sources, exclude_models=config.get("exclude_models", ()),
                            exclude_tasks=config.get("exclude_tasks", ()))


async def fine_tune(policy: CompactPolicy, lessons: Sequence[Verdicts], pool: Sequence[ModelOption],
              replay: MixedEnvironment | None, epochs: int = EPOCHS, seed: int = 0,
              replay_prompts: int | None = None, progress: bool = False) -> dict[str, float]:
    """Fit ``policy``'s network (in place) to ``lessons`` (models of ``pool``) and ``replay``'s
    records, then recalibrate its memory's served rows; returns the warm start's figures of the
    kept epoch plus what was fitted. Needs at least two lessons (one to fit, one to stop by)."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: at least one")
    if len(lessons) < 2:
        raise ValueError(f"{len(lessons)} lesson(s): fine-tuning needs at least two (one is set aside to stop by)")
    rng = random.Random(seed)
    lambda_top = policy.lambda_top if math.isfinite(policy.lambda_top) else 10_000.0

    def random_lambda() -> float:
        return math.expm1(rng.uniform(0.0, math.log1p(lambda_top)))

    network = policy.network
    order = list(range(len(lessons)))
    rng.shuffle(order)
    cut = max(1, round(HELD_OUT * len(lessons)))
    labels = types.SimpleNamespace(scores={}, costs={})
    held_out = _lesson_states(policy, [lessons[i] for i in order[:cut]], pool, labels, "held", random_lambda)
    fit = _lesson_states(policy, [lessons[i] for i in order[cut:]], pool, labels, "fit", random_lambda)
    replayed = 0
    descriptors = {o.id: policy.query_vector(descriptor_text(o)) for o in pool}
    if replay is not None:
        prompts = replay.split("train")
        # The same sample on every run with this seed: its query vectors are then encoded once
        # (the policy's cache) when a simulation fine-tunes again and again.
        count = REPLAY_PROMPTS if replay_prompts is None else replay_prompts
        prompts = random.Random(seed).sample(prompts, min(count, len(prompts)))
        replayed = len(prompts)
        turns, ids = await warm_start.outcome_states(
            replay, prompts, policy.query_vector, policy.vocabulary, lambda p: sorted(replay.answered[p.prompt_id]),
            random_lambda, rng, STATES_PER_REPLAYED, 3, lambda_top, policy.answer_checks, policy.memory_features)
        fit = (fit[0] + turns, fit[1] + ids)
        labels.scores.update({p: replay.scores[p] for p in ids})
        labels.costs.update({p: replay.costs[p] for p in ids})
        descriptors.update({o.id: policy.query_vector(descriptor_text(o)) for o in replay.options.values()})
    torch.manual_seed(seed)
    kept = warm_start.fit_outcomes(network, labels, fit, held_out, len(policy.vocabulary.tags), epochs, LEARNING_RATE,
                                   WEIGHT_DECAY, COST_COEF, 256, rng,
                                   descriptors if policy.use_descriptors else None, progress=progress)
    network.eval()  # (the serving graph re-exports itself: the weights' versions moved)
    recalibrated = recalibrate(policy, lessons, pool)
    return {**kept, "lessons": len(lessons), "held_out_lessons": cut, "replayed_prompts": replayed,
            "recalibrated_verdicts": recalibrated, "epochs": epochs}


def _lesson_states(policy: CompactPolicy, lessons: Sequence[Verdicts], pool: Sequence[ModelOption],
                   labels: types.SimpleNamespace, tag: str, random_lambda) -> tuple[list[Turn], list[str]]:  # type: ignore[no-untyped-def]
    """First-decision states of each lesson, labelled with its verdicts; the cost label is the
    network's own prediction (verdicts teach correctness, not prices)."""
    turns, ids = [], []
    for i, lesson in enumerate(lessons):
        key = f"lesson:{tag}:{i}"
        labels.scores[key] = dict(lesson.scores)
        options = list(pool)
        for _ in range(STATES_PER_LESSON):
            state = EpisodeState([("user", lesson.text)], options, random_lambda(), None, 3, 0)
            arrays = encode_state(state, policy.vocabulary, policy.lambda_top, policy.answer_checks,
                                  policy.memory_features(lesson.text, [o.id for o in options]))
            turns.append(Turn(policy.query_vector(lesson.text), arrays, False, warm_start._NO_ACTION, 0.0))
            ids.append(key)
        labels.costs[key] = _own_costs(policy, lesson.text, [o for o in options if o.id in lesson.scores])
    return turns, ids


def _own_costs(policy: CompactPolicy, text: str, judged: Sequence[ModelOption]) -> dict[str, float]:
    """The network's predicted cost (USD) of calling each judged model on ``text``."""
    if not judged:
        return {}
    costs = policy.predicted_costs(text, list(judged))
    return dict(zip((o.id for o in judged), costs, strict=True))


def recalibrate(policy: CompactPolicy, lessons: Sequence[Verdicts], pool: Sequence[ModelOption]) -> int:
    """Recompute the calibration residuals of the lessons' verdicts against the (fine-tuned)
    network; returns how many verdicts carry a residual."""
    memory = policy.memory
    if memory is None:
        return 0
    options = {o.id: o for o in pool}
    count = 0
    for lesson in lessons:
        judged = [options[m] for m in lesson.scores if m in options and memory.has_residual(lesson.text, m)]
        if not judged:
            continue
        predicted = policy.network_prediction(lesson.text, judged)
        residuals = {o.id: lesson.scores[o.id] - p for o, p in zip(judged, predicted, strict=True)}
        memory.set_residuals(lesson.text, residuals)
        count += len(judged)
    policy.forget_memory_cache()
    return count
