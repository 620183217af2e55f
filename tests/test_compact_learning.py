"""The compact policy's supervised side: outcome labels, the expected-reward prior its logits start
from, and the warm start that fits the correctness and cost heads on recorded outcomes."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
import torch

from test_training import fake_embed
from xrouter.router.compact.distribution import Masks, first_logits
from xrouter.router.compact.features import (
    EVIDENCE_COLUMN, GLOBAL_FEATURES, LAMBDA_COLUMN, LOCAL_MEAN_COLUMN, MODEL_FEATURES, lambda_feature)
from xrouter.router.compact.network import INITIAL_PSEUDO_COUNT, INITIAL_SHARPNESS, CompactRouter
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


def _prior(network: CompactRouter, cost_lambda: float, answered: tuple[bool, bool] = (False, False)
           ) -> dict[str, torch.Tensor]:
    p = torch.tensor([[0.9, 0.8]])  # a premium model and a cheaper, slightly worse one
    log_cost = torch.log(torch.tensor([[5000.0, 300.0]]) + 1)  # micro-dollars per call
    global_x = torch.zeros((1, GLOBAL_FEATURES))
    global_x[0, LAMBDA_COLUMN] = lambda_feature(cost_lambda)
    return network._prior(p, log_cost, global_x, torch.tensor([answered]))


def test_the_cost_head_is_fitted_to_the_mean_cost_not_the_geometric_mean() -> None:
    """λ·ĉ prices a call by what it costs on average; the squared error of logs fitted the geometric
    mean, which undercharged models whose cost varies (verbose answers)."""
    costs = torch.tensor([1.0, 3.0, 10.0, 100.0])  # one model's micro-dollar costs on four prompts
    labels = torch.log(costs + 1.0)
    predicted = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([predicted], lr=0.05)
    for _ in range(3000):
        optimizer.zero_grad()
        grpo.cost_deviance(predicted.expand(4), labels).backward()
        optimizer.step()
    mean, geometric = float((costs + 1.0).mean()), math.exp(float(labels.mean()))
    assert math.exp(float(predicted)) == pytest.approx(mean, rel=0.01)
    assert mean > 3 * geometric
    # far below a label, the loss grows as a line, not an exponential
    far = grpo.cost_deviance(torch.tensor([0.0]), torch.tensor([40.0]))
    assert math.isfinite(float(far)) and float(far) < 1e4


def test_the_prior_is_the_expected_utility_and_shifts_to_cheaper_models_as_lambda_grows() -> None:
    network = CompactRouter(n_models=2, n_tags=0)
    free = _prior(network, 0.0)["call"] / INITIAL_SHARPNESS
    assert free[0].tolist() == pytest.approx([0.9, 0.8], rel=1e-5)  # cost does not matter at λ=0
    dear = _prior(network, 100.0)["call"] / INITIAL_SHARPNESS
    # 0.9 − 100 × $0.005 vs 0.8 − 100 × $0.0003: the cost is paid whether the answer is right or not.
    assert dear[0].tolist() == pytest.approx([0.4, 0.77], rel=1e-4)
    assert dear[0, 1] > dear[0, 0]
    stopped = _prior(network, 100.0, answered=(False, True))
    assert (stopped["stop"] / INITIAL_SHARPNESS).item() == pytest.approx(0.8, rel=1e-4)  # best answer in hand


def test_no_lambda_makes_the_dearer_model_attractive_again() -> None:
    """The cause of the old non-monotonicity: a penalty capped at cost_max makes both calls cost the
    same 0.7 at large λ, and the more accurate, dearer model wins again. The utility must keep
    preferring the cheaper model (or stopping) for every λ up to 1e6."""
    network = CompactRouter(n_models=2, n_tags=0)
    for cost_lambda in (200.0, 1e3, 1e4, 1e6):
        calls = _prior(network, cost_lambda)["call"][0]
        assert calls[1] > calls[0], cost_lambda


def test_memory_evidence_moves_the_prediction_as_observations_would_and_only_through_the_update() -> None:
    """p = (a·p_net + E·mean) / (a + E): no evidence leaves the network's prediction alone; a few
    verdicts on a model move it part of the way, many almost all of it; the trunk never reads the
    local mean, so the network cannot learn to ignore it (the sparse rows of live traffic)."""
    torch.manual_seed(0)
    network = CompactRouter(n_models=2, n_tags=0, hidden=8).eval()
    query, global_x = torch.randn(1, 384), torch.zeros(1, GLOBAL_FEATURES)
    ids, present = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool)

    def p_correct(evidence: float, mean: float) -> torch.Tensor:
        model_x = torch.zeros(1, 2, MODEL_FEATURES)
        model_x[..., EVIDENCE_COLUMN], model_x[..., LOCAL_MEAN_COLUMN] = evidence, mean
        with torch.no_grad():
            return torch.sigmoid(network(query, global_x, ids, model_x, present)["correct"])[0]

    alone = p_correct(0.0, 0.0)
    assert p_correct(0.0, 1.0).tolist() == pytest.approx(alone.tolist(), abs=1e-6)  # no evidence, no say
    a = INITIAL_PSEUDO_COUNT
    for evidence in (1.0, 4.0, 100.0):
        expected = (a * alone + evidence * 0.0) / (a + evidence)
        assert p_correct(evidence, 0.0).tolist() == pytest.approx(expected.clamp(min=1e-4).tolist(), rel=1e-4)
    assert (p_correct(100.0, 1.0) > 0.95).all() and (p_correct(100.0, 0.0) < 0.05).all()
    # Once the model's answer is in hand, the answer weighs more against the memory (a larger a).
    assert network.log_pseudo_count[1] > network.log_pseudo_count[0]


def test_greedy_first_choice_never_gets_dearer_as_lambda_grows() -> None:
    """For random predictions, residuals and pools, the predicted cost of the greedy first choice
    (stopping costs nothing) never rises along a λ sweep from 0 to 1e6: λ reaches the logits only
    through the prior's −λ·ĉ term, whatever the learned heads say."""
    torch.manual_seed(0)
    network = CompactRouter(n_models=6, n_tags=0, hidden=8)
    for parameter in network.parameters():  # random residual heads, not the zero start
        torch.nn.init.normal_(parameter, std=0.5)
    lambdas = [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
    batch, models = 64, 6
    query = torch.randn(batch, 384)
    model_x = torch.randn(batch, models, MODEL_FEATURES)
    model_ids = torch.randint(0, models + 1, (batch, models))
    selectable = torch.rand(batch, models) < 0.3
    masks = Masks(~selectable, selectable, torch.zeros(batch, dtype=torch.bool))
    context = torch.rand(batch, GLOBAL_FEATURES)
    previous = None
    for cost_lambda in lambdas:
        global_x = context.clone()
        global_x[:, LAMBDA_COLUMN] = lambda_feature(cost_lambda)
        with torch.no_grad():
            out = network(query, global_x, model_ids, model_x, torch.ones(batch, models, dtype=torch.bool),
                          selectable)
            choice = first_logits(out, masks).argmax(-1)
            cost = torch.expm1(out["log_cost"].clamp(0, 30))
            chosen_cost = torch.where(choice < models, cost.gather(1, choice.clamp(max=models - 1)[:, None]).squeeze(1),
                                      torch.zeros(batch))
        if previous is not None:
            assert (chosen_cost <= previous * (1 + 1e-5)).all(), cost_lambda
        previous = chosen_cost


def test_the_warm_start_lowers_the_held_out_loss_and_keeps_the_best_epoch(trainer: Trainer) -> None:
    torch.manual_seed(0)  # the untrained network's loss depends on its initialisation: the same in every run
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
        before = warm_start._losses(network, trainer.env, *held_out, len(trainer.vocabulary.tags), 0.1, None)
    result = warm_start.fit_outcomes(network, trainer.env, fit, held_out, len(trainer.vocabulary.tags), epochs=15,
                                     learning_rate=3e-3, weight_decay=0.0, cost_coef=0.1, batch_size=64, rng=rng,
                                     progress=False)
    # Per-model base rates and costs alone (the fake embeddings carry no signal) beat the untrained heads.
    # (The cost head starts from the catalog-price estimate, so nearly all the initial loss is the BCE.)
    assert result["held_out_loss"] < 0.85 * float(before[0] + before[1])
    assert 1 <= result["best_epoch"] <= 15
    with torch.no_grad():  # the weights kept are those of the best epoch
        after = warm_start._losses(network, trainer.env, *held_out, len(trainer.vocabulary.tags), 0.1, None)
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
