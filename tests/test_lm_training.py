"""GRPO for the LM policy: the config's refusals, the token-level loss (only generated tokens carry
gradient), real GRPO steps on a tiny Llama over recorded RouterBench outcomes (finite loss, every
parameter moves), and ``xrouter train`` with ``policy: lm`` writing a checkpoint the router loads."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import torch

from xrouter.router.lm import charge
from xrouter.router.lm.charge import RouterLMPrice
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.policy_store import build_policy
from xrouter_training import lm_grpo
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_train import LMTrainer, judge, outcome
from xrouter_training.train import main as train_main

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "training" / "configs"


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


@pytest.mark.parametrize(("change", "message"), [
    ({"policy": "transformer"}, "use 'compact' or 'lm'"),
    ({"policy": "lm"}, "policy: lm needs lm_model: tiny"),
    ({"lm_model": "tiny"}, "only read with policy: lm"),
    ({"policy": "lm", "lm_model": "/no/such/model"}, "not 'tiny', 'smollm2' or an existing model directory"),
    ({"policy": "lm", "lm_model": "tiny", "warm_start_epochs": 5}, "set warm_start_epochs: 0"),
    ({"policy": "lm", "lm_model": "tiny", "rollout_temperature": 0}, "GRPO needs sampled rollouts"),
    ({"policy": "lm", "lm_model": "tiny", "max_new_tokens": 0}, "max_new_tokens=0"),
    ({"policy": "lm", "lm_model": "tiny", "prompts_per_step": 2, "dynamic_sampling_max_groups": 1},
     "dynamic_sampling_max_groups=1: the refill needs dynamic_sampling: true and a limit >= prompts_per_step"),
    ({"policy": "lm", "lm_model": "tiny", "dynamic_sampling": False, "dynamic_sampling_max_groups": 64},
     "the refill needs dynamic_sampling: true"),
    ({"dynamic_sampling_max_groups": 8}, "dynamic_sampling_max_groups is only read with policy: lm"),
    ({"router_input_usd_per_mtok": -0.05}, r"router_input_usd_per_mtok: must be a finite number .*got -0.05; set it"),
    ({"router_output_usd_per_mtok": float("nan")}, r"router_output_usd_per_mtok: must be a finite number .*nan"),
])
def test_bad_lm_configs_say_how_to_fix_them(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**change)


def test_shipped_lm_configs_load() -> None:
    tiny = TrainConfig.from_file(CONFIGS / "lm-tiny.yaml")
    assert (tiny.policy, tiny.lm_model) == ("lm", "tiny")
    assert TrainConfig(policy="lm", lm_model="tiny", max_turns=1).max_turns == 1  # the LM can answer directly
    gpu = TrainConfig.from_file(CONFIGS / "lm-smollm2.yaml")
    assert (gpu.lm_model, gpu.group_size, gpu.clip_high) == ("smollm2", 8, 0.28)
    cpu = TrainConfig.from_file(CONFIGS / "lm-smollm2-grpo.yaml")  # the 2-core CPU run
    assert (cpu.lm_model, cpu.sft_teacher, cpu.lm_batch_group, cpu.lm_eval_prompts) == ("smollm2", "knn", True, 16)
    assert TrainConfig.from_file(CONFIGS / "lm-smollm2-grpo-gpu.yaml").sft_teacher == "oracle"
    refill = TrainConfig.from_file(CONFIGS / "lm-smollm2-grpo-refill.yaml")  # the CPU run with DAPO's refill
    assert refill.dynamic_sampling_max_groups == 6 and dataclasses.replace(refill, dynamic_sampling_max_groups=0) == cpu


def test_masked_tokens_get_no_gradient() -> None:
    log_probs = torch.randn(2, 5, requires_grad=True)
    old = log_probs.detach() + 0.05 * torch.randn(2, 5)
    mask = torch.tensor([[True, True, False, False, True], [False, True, True, False, False]])
    loss = lm_grpo.token_loss(log_probs, old, torch.tensor([1.0, -0.5]), mask, 0.2, 0.28, total_tokens=5)
    loss.backward()
    assert log_probs.grad is not None
    assert torch.all(log_probs.grad[~mask] == 0) and torch.all(log_probs.grad[mask] != 0)
    # A token mean over the whole update: this micro-batch holds all 5 generated tokens.
    ratio = torch.exp(log_probs - old).detach()
    adv = torch.tensor([1.0, -0.5])[:, None].expand(2, 5)
    expected = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.28) * adv)[mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.fixture(scope="module")
def trainer(env: ReplayEnvironment, tmp_path_factory: pytest.TempPathFactory) -> LMTrainer:
    # Short replies: these tests exercise the update, not the format (a random model never stops early).
    config = dataclasses.replace(TrainConfig.from_file(CONFIGS / "lm-tiny.yaml"), learning_rate=1e-3,
                                 max_new_tokens=16)
    return LMTrainer(config, tmp_path_factory.mktemp("lm"), env=env)


async def test_grpo_steps_on_the_tiny_model_change_every_parameter(trainer: LMTrainer) -> None:
    batched = trainer.backend.batched_samples
    groups = await trainer.rollout(trainer.train_prompts[:2])
    assert [len(g) for g in groups] == [2, 2]
    # the group's episodes played concurrently: each has its own transcript, their first turns one decode
    assert all(g[0].transcript is not g[1].transcript for g in groups)
    assert trainer.backend.batched_samples - batched >= 4
    # A random model earns 0 on real prompts (no tool calls, truncated replies), so no group would
    # carry a signal; the rewards are set here to exercise the update on its real rollouts.
    groups = [[dataclasses.replace(r, reward=float(i % 2)) for i, r in enumerate(g)] for g in groups]
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    stats = trainer.update(groups)
    assert math.isfinite(stats["loss"]) and stats["kept_groups"] == 1.0
    assert stats["tokens"] == sum(sum(r.transcript.generated) for g in groups for r in g)
    assert 0 < stats["entropy"] <= math.log(len(trainer.tokenizer)) + 1e-3
    unchanged = [name for name, p in trainer.model.named_parameters() if torch.equal(before[name], p.detach())]
    assert unchanged == []
    # The policy sampled from the old weights: its cached contexts are gone after the step.
    assert trainer.backend._caches == []  # noqa: SLF001
    # Two epochs: the old log-probs come from a pass before the update (one epoch reuses its own).
    config, trainer.config = trainer.config, dataclasses.replace(trainer.config, update_epochs=2)
    try:
        second = trainer.update([[dataclasses.replace(r, reward=1.0 - r.reward) for r in g] for g in groups])
    finally:
        trainer.config = config
    assert math.isfinite(second["loss"]) and second["entropy"] == pytest.approx(stats["entropy"], rel=0.05)


async def test_groups_without_reward_variance_are_dropped(trainer: LMTrainer) -> None:
    groups = await trainer.rollout(trainer.train_prompts[2:3])
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.config = dataclasses.replace(trainer.config, dynamic_sampling=True)
    try:
        stats = trainer.update(groups)  # the random model's rewards: all 0
    finally:
        trainer.config = dataclasses.replace(trainer.config, dynamic_sampling=False)
    assert all(r.reward == 0 for g in groups for r in g) and stats["kept_groups"] == 0.0
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))


async def test_xrouter_train_with_policy_lm_writes_a_checkpoint_the_router_serves(tmp_path: pathlib.Path,
                                                                                env: ReplayEnvironment) -> None:
    import asyncio

    out = tmp_path / "run"
    assert await asyncio.to_thread(train_main, str(CONFIGS / "lm-tiny.yaml"), str(out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert manifest["kind"] == "lm" and manifest["generation"]["max_new_tokens"] == 128
    # The warm start ran first: teacher episodes kept, fitted, probed before and after.
    sft = json.loads((out / "sft.json").read_text())
    assert manifest["sft"] == sft and sft["teacher"] == "cheapest" and sft["kept"] >= 1
    assert len(sft["epochs"]) == 1 and math.isfinite(sft["epochs"][0]["nll"]) and sft["probe_after"]["decisions"] > 0
    assert manifest["eval"]["lambdas"][0]["lambda"] == 100
    # the warm start is evaluated on the same prompts and λ as the result, and the curves are drawn
    assert [r["lambda"] for r in manifest["eval"]["after_warm_start"]] == [100]
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    policy = await build_policy(str(out / "checkpoint"), list(env.options.values()))
    assert isinstance(policy, LMPolicy) and policy.version == manifest["version"]
    assert policy.tool_prompt == manifest["generation"]["tool_prompt"] == "compact"  # the config's default
    episode = await env.play(policy, env.split("validation")[0], sorted(env.options), 10.0)
    assert episode.result is not None or episode.score == 0
    # The warm start is a checkpoint of its own, for `xrouter eval` beside the result.
    warm = await build_policy(str(out / "checkpoint-warm-start"), list(env.options.values()))
    assert isinstance(warm, LMPolicy) and warm.version.endswith("-warm-start") and warm.version != policy.version
    assert json.loads((out / "checkpoint-warm-start" / "manifest.json").read_text())["sft"] == sft


async def test_episodes_that_do_not_end_properly_earn_nothing(trainer: LMTrainer, env: ReplayEnvironment) -> None:
    """Scripted replies through the OpenAI-protocol backend: the episode's answer is a real recorded
    one (scored), but reaching it by calling on the last turn or selecting a failed call pays 0."""
    from lm_completions_server import CompletionsServer
    from xrouter.router.lm.http_generation import CompletionsBackend

    prompt = next(p for p in trainer.train_prompts if env.scores[p.prompt_id].get("gpt-4-1106-preview") == 1.0)
    call = '<tool_call>{"name": "call_gpt-4-1106-preview", "arguments": {"system_prompt": "Answer."}}</tool_call>'
    select = '<tool_call>{"name": "select_response", "arguments": {"call_index": %d}}</tool_call>'
    server = await CompletionsServer(trainer.model, trainer.tokenizer).start()
    local = trainer.policy.backend
    trainer.policy.backend = CompletionsBackend(server.url, "tiny", trainer.tokenizer)
    trainer.policy.max_new_tokens = 64  # room for the scripted replies (lm-tiny generates 16 tokens)
    try:
        outcomes, contexts = {}, {}
        for case, replies in {"select": [call, select % 0], "turn limit": [call, call, call],
                              "missing call": [call, select % 7]}.items():
            server.script = list(replies)
            outcomes[case] = await trainer.play(prompt, ["gpt-4-1106-preview", "claude-v2"], 10.0)
            contexts[case] = [len(body["prompt"]) for body in server.bodies[-len(replies):]]
    finally:
        await trainer.policy.backend.aclose()
        trainer.policy.backend, trainer.policy.max_new_tokens = local, trainer.config.max_new_tokens
        await server.stop()
    good = outcomes["select"]
    assert good.failure == "" and good.episode.score == 1.0
    # The router LM's own tokens are in the cost: each turn's context and reply (+ its stop token)
    # at the configured price, in whole micro-dollars per turn as the ledger bills them (half-even);
    # without them the reward is higher by λ times that.
    price = trainer.config.router_price()
    generated = [len(trainer.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in (call, select % 0)]
    micro = [(p * Decimal(str(price.input_usd_per_mtok)) + g * Decimal(str(price.output_usd_per_mtok)))
             .quantize(Decimal(1), rounding=ROUND_HALF_EVEN) for p, g in zip(contexts["select"], generated, strict=True)]
    router_usd = float(sum(micro)) / 1e6
    assert good.router_cost_usd == router_usd and router_usd > 0
    assert good.reward == pytest.approx(1.0 - 10.0 * (good.episode.cost_usd + router_usd))
    free = judge(env, good.episode, good.transcript, RouterLMPrice(input_usd_per_mtok=0.0, output_usd_per_mtok=0.0))
    assert free.router_cost_usd == 0 and free.reward - good.reward == pytest.approx(10.0 * router_usd, rel=1e-6)
    # Charged once: an episode whose environment already billed the router's turns (as `xrouter eval`
    # does) is judged the same.
    turns = charge.turn_calls(good.transcript, price, 1.0, len(good.episode.calls))
    billed = dataclasses.replace(good.episode, calls=[*good.episode.calls, *turns],
                                 cost_usd=good.episode.cost_usd + router_usd)
    again = judge(env, billed, good.transcript, price)
    assert again.reward == pytest.approx(good.reward) and outcome(again)["cost_usd"] == good.episode.cost_usd
    assert outcome(again)["calls_per_query"] == outcome(good)["calls_per_query"]
    for case in ("turn limit", "missing call"):
        assert outcomes[case].episode.score == 1.0 and outcomes[case].reward == 0.0, case
        assert "fallback" in outcomes[case].failure
    assert outcomes["turn limit"].episode.result.turn_limit_reached  # type: ignore[union-attr]


async def test_refill_draws_groups_until_enough_carry_a_signal(trainer: LMTrainer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """DAPO's dynamic sampling: groups whose rewards do not vary are replaced by fresh prompts' groups,
    up to the limit; without a limit the step keeps what it drew."""
    rollouts = await trainer.rollout(trainer.train_prompts[:1])
    flat = [dataclasses.replace(r, reward=0.0) for r in rollouts[0]]
    varied = [dataclasses.replace(r, reward=float(i % 2)) for i, r in enumerate(rollouts[0])]
    drawn: list[list] = []
    script = iter([varied, varied, flat, flat, flat, flat])

    async def fake_rollout(prompts, rng=None):  # type: ignore[no-untyped-def]
        drawn.append(prompts)
        return [next(script) for _ in prompts]

    monkeypatch.setattr(trainer, "rollout", fake_rollout)
    config = trainer.config
    try:
        trainer.config = dataclasses.replace(config, prompts_per_step=2, dynamic_sampling=True,
                                             dynamic_sampling_max_groups=6)
        groups = await trainer.refill([flat, flat], trainer.rng)
        assert len(groups) == 4 and len(drawn) == 2  # two more draws, then two groups vary: enough
        assert all(len(prompts) == 1 and prompts[0] in trainer.train_prompts for prompts in drawn)
        groups = await trainer.refill([flat, flat], trainer.rng)  # the script's rest never varies
        assert len(groups) == 6 and len(drawn) == 6  # stops at the limit
        trainer.config = dataclasses.replace(config, dynamic_sampling_max_groups=0)
        assert await trainer.refill([flat], trainer.rng) == [flat]  # off: the step keeps its draw
    finally:
        trainer.config = config
