"""The compact policy's supervised side: outcome labels, the expected-reward prior its logits start
from, and the warm start that fits the correctness and cost heads on recorded outcomes."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
import torch

from test_training import fake_embed
from xrouter.router.compact.features import lambda_feature
from xrouter.router.compact.network import INITIAL_SHARPNESS, CompactRouter
from xrouter_training import grpo, warm_start
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.train import Trainer, sample_lambda, sample_pool


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> Trainer:  # type: ignore[no-untyped-def]
    config = TrainConfig(steps=1, prompts_per_step=6, group_size=3, limit_prompts=60, seed=5)
    return Trainer(config, tmp_path_factory.mktemp("train"), embed=fake_embed, env=ReplayEnvironment())


def test_outcome_labels_are_the_recorded_score_and_cost_of_each_pool_model(trainer: Trainer) -> None:
    groups, turns = asyncio.run(trainer.rollout(trainer.train_prompts[:3]))
    flat = [(group[e].prompt.prompt_id, turn) for group, group_turns in zip(groups, turns)
            for e, episode in enumerate(group_turns) for turn in episode]
    labels = grpo.outcome_labels([t for _, t in flat], [trainer.env.scores[p] for p, _ in flat],
                                 [trainer.env.costs[p] for p, _ in flat], width=12)
    for row, (prompt_id, turn) in enumerate(flat):
        for column, model in enumerate(turn.arrays.models):
            assert labels.known[row, column]
            assert labels.score[row, column] == trainer.env.scores[prompt_id][model]
            expected = math.log(trainer.env.costs[prompt_id][model] * 1e6 + 1)
            assert labels.log_cost[row, column].item() == pytest.approx(expected, rel=1e-5)
        assert not labels.known[row, len(turn.arrays.models):].any()  # padding is never a target


def _prior(network: CompactRouter, cost_lambda: float, spent_penalty: float = 0.0,
           answered: tuple[bool, bool] = (False, False)) -> dict[str, torch.Tensor]:
    p = torch.tensor([[0.9, 0.8]])  # a premium model and a cheaper, slightly worse one
    log_cost = torch.log(torch.tensor([[5000.0, 300.0]]) + 1)  # micro-dollars per call
    global_x = torch.zeros((1, 6))
    global_x[0, 0] = lambda_feature(cost_lambda)
    global_x[0, 5] = spent_penalty / 0.7
    return network._prior(p, log_cost, global_x, torch.tensor([answered]))


def test_the_prior_is_the_expected_reward_and_shifts_to_cheaper_models_as_lambda_grows() -> None:
    network = CompactRouter(n_models=2, n_tags=0)
    free = _prior(network, 0.0)["call"] / INITIAL_SHARPNESS
    assert free[0].tolist() == pytest.approx([0.9, 0.8], rel=1e-5)  # cost does not matter at λ=0
    dear = _prior(network, 100.0)["call"] / INITIAL_SHARPNESS
    # 0.9 × (1 − 100 × $0.005) vs 0.8 × (1 − 100 × $0.0003)
    assert dear[0].tolist() == pytest.approx([0.45, 0.776], rel=1e-4)
    assert dear[0, 1] > dear[0, 0]
    stopped = _prior(network, 100.0, spent_penalty=0.2, answered=(False, True))
    # Stopping returns the best answered model: 0.8 × (1 − 0.2 already spent).
    assert (stopped["stop"] / INITIAL_SHARPNESS).item() == pytest.approx(0.64, rel=1e-4)


def test_the_warm_start_lowers_the_held_out_loss_and_keeps_the_best_epoch(trainer: Trainer) -> None:
    rng = random.Random(0)
    config = trainer.config
    prompts = trainer.train_prompts

    def states(part):  # type: ignore[no-untyped-def]
        return asyncio.run(warm_start.outcome_states(
            trainer.env, part, fake_embed, trainer.vocabulary, lambda p: sample_pool(trainer.env, p, config, rng),
            lambda: sample_lambda(config, rng), rng, 3, config.max_turns))

    held_out, fit = states(prompts[:12]), states(prompts[12:])
    assert len(fit[0]) == 3 * len(prompts[12:])
    assert any(t.arrays.selectable.any() for t in fit[0])  # some states already have answers to learn from
    network = CompactRouter(len(trainer.vocabulary.models), len(trainer.vocabulary.tags), hidden=16)
    with torch.no_grad():
        before = warm_start._losses(network, trainer.env, *held_out, len(trainer.vocabulary.tags), 0.1)
    result = warm_start.fit_outcomes(network, trainer.env, fit, held_out, len(trainer.vocabulary.tags), epochs=15,
                                     learning_rate=3e-3, weight_decay=0.0, cost_coef=0.1, batch_size=64, rng=rng,
                                     progress=False)
    # Per-model base rates and costs alone (the fake embeddings carry no signal) beat the untrained heads.
    assert result["held_out_loss"] < 0.8 * float(before[0] + before[1])
    assert 1 <= result["best_epoch"] <= 15
    with torch.no_grad():  # the weights kept are those of the best epoch
        after = warm_start._losses(network, trainer.env, *held_out, len(trainer.vocabulary.tags), 0.1)
    assert float(after[0] + after[1]) == pytest.approx(result["held_out_loss"], rel=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    ({"warm_start_epochs": -1}, "warm_start_epochs=-1"),
    ({"warm_start_held_out": 1.0}, "held-out share"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"correctness_coef": -1}, "correctness_coef=-1"),
])
def test_bad_warm_start_settings_say_how_to_fix_them(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change)


def test_a_seeded_run_reproduces_its_checkpoint_weights(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Warm start (with dropout) and GRPO from the same config give the same weights, bit for bit."""
    from test_training import CONFIGS
    from xrouter.cli import main
    from xrouter.router.compact.checkpoint import read_manifest

    digests = []
    for run in ("a", "b"):
        assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path / run)]) == 0
        digests.append(read_manifest(tmp_path / run / "checkpoint")["sha256"]["policy.safetensors"])
    assert digests[0] == digests[1]
