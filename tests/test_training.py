"""GRPO math, the config's refusals, and the trainer doing real updates on recorded outcomes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import pathlib

import numpy as np
import pytest
import torch

from xrouter_training import grpo
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.train import Trainer

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "training" / "configs"


def test_group_advantages_are_normalised_within_each_group() -> None:
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    advantages = grpo.group_advantages(rewards, scale="group")
    assert np.allclose(advantages[0], [1, -1, -1, 1], atol=1e-5)
    assert np.allclose(advantages[1], 0)
    assert grpo.informative_groups(rewards).tolist() == [True, False]


def test_batch_scale_keeps_cost_only_differences_small() -> None:
    # Group 0: everyone right, rewards differ only by cost. Group 1: right vs wrong.
    rewards = np.array([[0.99, 0.96, 0.99, 0.96], [1.0, 0.0, 1.0, 0.0]])
    per_group = grpo.group_advantages(rewards, scale="group")
    assert np.allclose(np.abs(per_group[0]), np.abs(per_group[1]), atol=1e-3)  # the published bias
    batch = grpo.group_advantages(rewards, scale="batch")
    assert np.abs(batch[0]).max() < 0.1 * np.abs(batch[1]).max()


def test_clip_higher_is_asymmetric() -> None:
    old = torch.zeros(2)
    new = torch.log(torch.tensor([1.5, 1.5]))  # ratio 1.5 for both decisions
    positive = grpo.clipped_loss(new, old, torch.tensor([1.0, 1.0]), 0.2, 0.28)
    assert positive.item() == pytest.approx(-1.28)  # clipped at 1 + 0.28, not 1.2
    negative = grpo.clipped_loss(new, old, torch.tensor([-1.0, -1.0]), 0.2, 0.28)
    assert negative.item() == pytest.approx(1.5)  # min() keeps the unclipped, worse term


@pytest.mark.parametrize(("change", "message"), [
    ({"group_size": 1}, "group_size=1: GRPO needs at least 2"),
    ({"clip_low": 0.3, "clip_high": 0.2}, "clip_high >= clip_low"),
    ({"lambda_min": 5, "lambda_max": 1}, "lambda_min <= lambda_max"),
    ({"max_turns": 1}, "needs 2 turns"),
    ({"kl_coef": 0.1}, "set kl_coef: 0"),
    ({"pool_min": 4, "pool_max": 2}, "pool_max"),
    # Each of these trained and failed later with a traceback, or trained on garbage (CLI probe, 2026-12-07).
    ({"learning_rate": math.inf}, "learning_rate=inf: must be a finite number"),
    ({"cost_coef": math.nan}, "cost_coef=nan: must be a finite number"),
    ({"warm_start_lr": math.nan}, "warm_start_lr=nan: must be a finite number"),
    ({"eval_lambdas": (math.nan, 100.0)}, "eval_lambdas"),
    ({"eval_lambdas": (-1.0, 100.0)}, "eval_lambdas"),
    ({"eval_lambdas": ()}, "need at least one cost weight"),
    ({"entropy_coef": -1.0}, "entropy_coef=-1.0: must be >= 0"),
    ({"limit_prompts": -5}, "limit_prompts=-5: must be >= 0"),
    ({"reward_k": 0.0}, "reward_k=0.0: must be > 0"),
])
def test_bad_configs_say_how_to_fix_them(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change)


def test_config_files_reject_unknown_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("steps: 2\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['learning_rat'\]"):
        TrainConfig.from_file(path)
    assert TrainConfig.from_file(CONFIGS / "routerbench.yaml").group_size == 8
    path.write_bytes(b"steps: 2\n\xff\xfe\n")  # not UTF-8: the message named no file
    with pytest.raises(ConfigError, match=f"{path}: cannot read the config"):
        TrainConfig.from_file(path)


def fake_embed(text: str) -> np.ndarray:
    """A deterministic stand-in for the query encoder (the trainer's math does not depend on it)."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, env) -> Trainer:  # type: ignore[no-untyped-def]
    config = TrainConfig(steps=1, prompts_per_step=8, group_size=4, limit_prompts=40, seed=3)
    return Trainer(config, tmp_path_factory.mktemp("train"), embed=fake_embed, env=env)


def test_an_update_changes_every_trainable_parameter(trainer: Trainer) -> None:
    before = {name: p.detach().clone() for name, p in trainer.network.named_parameters()}
    groups, turns = asyncio.run(trainer.rollout(trainer.train_prompts[:8]))
    assert all(len(g) == 4 for g in groups) and all(t for group in turns for t in group)
    stats = trainer.update(groups, turns)
    assert stats["kept_groups"] > 0 and np.isfinite(stats["loss"])
    unchanged = [name for name, p in trainer.network.named_parameters() if torch.equal(before[name], p.detach())]
    # The unknown-model embedding row is never used with a fully known pool, and without an outcome
    # memory there is no evidence for its pseudo-counts to weigh; everything else must move.
    expected = [] if trainer.config.use_memory else ["log_pseudo_count"]
    assert unchanged == expected, f"parameters that did not change: {unchanged}"


def test_episode_rewards_follow_the_paper_formula(trainer: Trainer) -> None:
    groups, _ = asyncio.run(trainer.rollout(trainer.train_prompts[:2]))
    for episode in (e for group in groups for e in group):
        expected = episode.score * (1.0 - min(episode.cost_lambda * episode.cost_usd, 0.7))
        assert episode.reward == pytest.approx(expected)
        assert episode.cost_usd == pytest.approx(sum(c.cost_micro_usd for c in episode.calls) / 1e6)


def test_seeded_rollouts_reproduce(tmp_path, env) -> None:  # type: ignore[no-untyped-def]
    def run() -> list[tuple[str, float, tuple[str, ...]]]:
        config = TrainConfig(steps=1, prompts_per_step=4, group_size=3, limit_prompts=10, seed=11)
        trainer = Trainer(config, tmp_path, embed=fake_embed, env=env)
        groups, _ = asyncio.run(trainer.rollout(trainer.train_prompts[:4]))
        return [(e.prompt.prompt_id, e.reward, tuple(c.model for c in e.calls)) for g in groups for e in g]

    assert run() == run()


def test_train_cli_writes_a_verified_checkpoint(tmp_path, env) -> None:  # type: ignore[no-untyped-def]
    from xrouter.cli import main
    from xrouter.router.compact.checkpoint import load_policy, read_manifest
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--out", str(tmp_path)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert {"reward", "accuracy", "cost_usd", "calls_per_query", "entropy"} <= set(metrics[0])
    manifest = read_manifest(tmp_path / "checkpoint")
    assert manifest["kind"] == "compact" and manifest["eval"]["lambdas"]
    policy = load_policy(tmp_path / "checkpoint", list(env.options.values()))
    assert policy.version == manifest["version"]


def test_config_files_read_numbers_by_type(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 3e-4\nsteps: 5\ndynamic_sampling: false\n")  # YAML 1.1 reads 3e-4 as text
    config = TrainConfig.from_file(path)
    assert config.learning_rate == 3e-4 and config.steps == 5 and config.dynamic_sampling is False
    for bad, message in (("learning_rate: fast\n", "learning_rate='fast' is not a float"),
                         ("steps: 2.5\n", "steps=2.5 is not a int"),
                         ("dynamic_sampling: 3\n", "dynamic_sampling=3 is not a bool"),
                         ("eval_lambdas: [1, x]\n", "eval_lambdas"),
                         # read as the characters "1", "0", "0" before
                         ("eval_lambdas: \"100\"\n", "eval_lambdas='100' is not a list of numbers"),
                         ("learning_rate: true\n", "learning_rate=True is not a float"),  # was 1.0
                         ("steps: 3\nsteps: 5\n", "setting 'steps' is given twice"),  # the last one won
                         ("max_new_tokens: 7\n", r"\['max_new_tokens'\] only apply to policy: lm"),
                         ("policy: lm\nlm_model: tiny\nhidden: 7\n", r"\['hidden'\] only apply to policy: compact")):
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_file(path)


def test_the_models_a_config_names_must_be_in_its_training_data() -> None:
    """exclude_models with a typo excluded nothing; excluding every model failed with a KeyError;
    a pool_min past the catalog was quietly clipped."""
    from xrouter.common.outcomes import ROUTERBENCH
    from xrouter_training.train import build_environment

    for change, message in (({"exclude_models": ("no-such-model",)}, r"exclude_models: \['no-such-model'\] are not"),
                            ({"pool_min": 50}, "pool_min=50: the training data has 11 models")):
        with pytest.raises(ConfigError, match=message):
            build_environment(TrainConfig(**change))
    every = tuple(ReplayEnvironment(ROUTERBENCH).options)
    with pytest.raises(ConfigError, match="excludes every model"):
        build_environment(TrainConfig(sources=("routerbench",), exclude_models=every))


def test_rows_of_models_the_catalog_lacks_are_counted_not_dropped_silently(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import gzip

    from xrouter.common.outcomes import ROUTERBENCH

    with gzip.open(ROUTERBENCH, "rt", encoding="utf-8") as handle:
        rows = [json.loads(next(handle)) for _ in range(30)]
    rows.append({**rows[0], "model": "no-such-model"})
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    assert ReplayEnvironment(path).uncatalogued == {"no-such-model": 1}
