"""`xrouter train` with ``policy: lm``: GRPO/DAPO on the generative router LM, as the paper trains it.

Each step: for every prompt a random pool and λ, G episodes sampled through the router's own
episode loop on recorded outcomes (ReplayEnvironment.play), each scored with the cost-aware reward
(0 for an episode with a malformed or truncated reply, or one the loop's fallback ended);
group-normalised advantages, groups whose rewards do not vary dropped, then ``update_epochs``
passes of the clip-higher surrogate as a mean over every generated token of the step — prompt,
template and tool-output tokens masked out, no KL.
The "old" log-probs are recomputed with the training forward before the first pass, so the ratio
compares like with like (the same kernels, the same padding) and starts at exactly 1."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import pathlib
import random
import time
from typing import Any

import numpy as np
import torch

from xrouter.common.outcomes import ROUTERBENCH
from xrouter.reward.formula import RewardConfig, cost_aware_reward
from xrouter.router.checkpoint_manifest import catalog_hash
from xrouter.router.lm import checkpoint
from xrouter.router.lm.charge import ROUTER_ROLE, RouterLMPrice, transcript_cost_usd
from xrouter.router.lm.generation import TransformersBackend
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.lm.transcript import Transcript
from xrouter.router.policy import Action, EpisodeState, Strategy
from xrouter_training import distributed, grpo, lm_grpo
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import Episode, Prompt, ReplayEnvironment
from xrouter_training.lm_models import load_base_model
from xrouter_training.lm_vllm_rollouts import VLLMRollouts
from xrouter_training.plot_training import plot_training_curves
from xrouter_training.train import sample_lambda, sample_pool


@dataclasses.dataclass
class Rollout:
    """One sampled episode, the router LM's transcript of it, and its reward (0 when the episode
    did not end properly: ``failure`` says why)."""

    episode: Episode
    transcript: Transcript
    reward: float
    failure: str = ""
    router_cost_usd: float = 0.0  # the router LM's own tokens (in the reward's cost with the calls')


def judge(env: ReplayEnvironment, episode: Episode, transcript: Transcript, price: RouterLMPrice) -> Rollout:
    """The episode's cost-aware reward, its cost the calls' plus the router LM's own tokens at
    ``price`` (serving bills them too); 0, with the reason, when a reply was malformed or truncated
    or the loop's fallback ended it (what the LM's tokens did not earn must not be rewarded)."""
    failure = transcript.failure
    if not failure and episode.result is not None and episode.result.strategy is Strategy.FALLBACK:
        failure = "the episode loop's fallback ended it (a call on the last turn, or a selected call that " \
                  "does not exist or failed)"
    router_cost = transcript_cost_usd(transcript, price)
    # The calls' cost without any router turns the environment charged itself (once, at ``price``).
    reward = cost_aware_reward(episode.score, model_cost_usd(episode) + router_cost, episode.cost_lambda,
                               env.reward_config, failure=failure)
    return Rollout(episode, transcript, reward, failure, router_cost)


class EpisodeTranscript:
    """The LM policy as one episode sees it, keeping that episode's transcript (the policy itself
    serves every concurrent episode)."""

    def __init__(self, policy: LMPolicy) -> None:
        self.policy, self.transcript = policy, None
        self.kind, self.min_turns = policy.kind, policy.min_turns

    async def decide(self, state: EpisodeState) -> Action:
        action = await self.policy.decide(state)
        self.transcript = self.policy.transcript_of(state)
        return action


class LMTrainer:
    """GRPO for the LM policy; ``env`` replaces the environment the config names (tests)."""

    def __init__(self, config: TrainConfig, out: pathlib.Path, env: ReplayEnvironment | None = None) -> None:
        if config.policy != "lm":
            raise ConfigError(f"policy={config.policy!r}: LMTrainer trains policy: lm")
        self.config, self.out = config, out
        # Under torchrun each process samples its own prompts' groups; token-level gradients are
        # summed over the processes, so the step is the token mean over every process's tokens.
        self.processes = distributed.join()
        if config.lm_rollout_engine == "vllm" and self.processes.size > 1:
            raise ConfigError("lm_rollout_engine: vllm runs in one process (one server, one trainer); under "
                              "torchrun use lm_rollout_engine: transformers")
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.device = distributed.device()
        with distributed.leader_first(self.processes):  # rank 0 converts the GGUF into the shared cache
            model, self.tokenizer = load_base_model(config.lm_model, config.seed)  # the same start on every rank
        self.model = model.to(self.device)
        torch.manual_seed(config.seed * 1000 + self.processes.rank)  # each rank samples its own completions
        data = ROUTERBENCH if config.data == "routerbench" else pathlib.Path(config.data)
        kwargs = {"catalog": config.catalog} if config.catalog else {}
        reward = RewardConfig(config.reward_k, config.reward_cost_max)
        self.env = env or ReplayEnvironment(data, reward=reward, **kwargs)
        limit = config.limit_prompts or None
        self.train_prompts = self.env.split("train", config.validation_fold)[:limit]
        self.validation = self.env.split("validation", config.validation_fold)[:limit]
        self.backend = TransformersBackend(self.model, self.tokenizer, batch_same_context=config.lm_batch_group)
        self.policy = LMPolicy(self.tokenizer, self.backend,
                               temperature=config.rollout_temperature, max_new_tokens=config.max_new_tokens,
                               price=config.router_price(), tool_prompt=config.lm_tool_prompt,
                               message_tokens=config.lm_message_tokens)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.vllm: VLLMRollouts | None = None

    async def play(self, prompt: Prompt, pool: list[str], cost_lambda: float) -> Rollout:
        """One episode with the current policy settings; one that did not end properly scores 0.
        Several may play at once (a group): each keeps its own transcript."""
        recorded = EpisodeTranscript(self.policy)
        episode = await self.env.play(recorded, prompt, pool, cost_lambda, self.config.max_turns)
        if recorded.transcript is None:
            raise RuntimeError("the episode ended without asking the router LM for a decision")
        return judge(self.env, episode, recorded.transcript, self.config.router_price())

    async def rollout(self, prompts: list[Prompt], rng: random.Random | None = None) -> list[list[Rollout]]:
        """G sampled episodes per prompt; each group shares its prompt, pool and λ."""
        groups, rng = [], rng or self.rng
        for prompt in prompts:
            pool, lam = sample_pool(self.env, prompt, self.config, rng), sample_lambda(self.config, rng)
            plays = [self.play(prompt, pool, lam) for _ in range(self.config.group_size)]
            if self.config.lm_batch_group:  # concurrently: their first turns share one batched decode
                groups.append(list(await asyncio.gather(*plays)))
            else:
                groups.append([await play for play in plays])
        return groups

    async def refill(self, groups: list[list[Rollout]], rng: random.Random) -> list[list[Rollout]]:
        """DAPO's dynamic sampling: while fewer than ``prompts_per_step`` groups' rewards vary, add
        one more random train prompt's group, up to ``dynamic_sampling_max_groups`` groups in all.
        Each rank refills its own share (a random draw, not the shared prompt order)."""
        limit = self.config.dynamic_sampling_max_groups

        def informative() -> int:
            return int(grpo.informative_groups(np.array([[r.reward for r in g] for g in groups])).sum())

        while len(groups) < limit and informative() < self.config.prompts_per_step:
            groups = groups + await self.rollout([rng.choice(self.train_prompts)], rng)
        return groups

    def update(self, groups: list[list[Rollout]]) -> dict[str, float]:
        """``update_epochs`` optimizer steps on the informative groups' generated tokens."""
        config = self.config
        rewards = np.array([[r.reward for r in group] for group in groups])
        keep = grpo.informative_groups(rewards) if config.dynamic_sampling else np.ones(len(groups), bool)
        advantages = grpo.group_advantages(rewards, scale=config.advantage_scale)
        samples = [(rollout.transcript, float(advantages[g, e])) for g, group in enumerate(groups) if keep[g]
                   for e, rollout in enumerate(group) if any(rollout.transcript.generated)]
        kept = distributed.total(float(keep.sum()), self.processes) / distributed.total(len(keep), self.processes)
        stats = {"kept_groups": kept, "loss": 0.0, "entropy": math.nan, "tokens": 0.0}
        step = config.lm_micro_batch
        batches = [lm_grpo.pad_transcripts([t for t, _ in samples[i:i + step]], [a for _, a in samples[i:i + step]],
                                           self.pad_id).to(self.device) for i in range(0, len(samples), step)]
        local = int(sum(int(b.loss_mask.sum()) for b in batches))
        total = int(distributed.total(local, self.processes))  # every process's generated tokens
        if not total:
            return stats
        self.model.eval()  # no dropout: the ratio compares the same function before and after
        # One pass (on-policy): the "old" log-probs are this very forward's, detached — the ratio is
        # exactly 1 and the pass before the update that several epochs need (a quarter of the step's
        # compute on CPU) is skipped.
        single_pass = config.update_epochs == 1
        old: list[torch.Tensor | None] = [None] * len(batches)
        entropy_sum = 0.0
        if not single_pass:
            with torch.no_grad():
                for i, batch in enumerate(batches):
                    old[i], entropy = lm_grpo.token_log_probs(self.model, batch, config.rollout_temperature, True)
                    assert entropy is not None
                    entropy_sum += float(entropy[lm_grpo.kept_mask(batch)].sum())
        loss_value = 0.0
        for _ in range(config.update_epochs):
            self.optimizer.zero_grad()
            loss_value = 0.0
            for batch, old_log_probs in zip(batches, old, strict=True):
                log_probs, entropy = lm_grpo.token_log_probs(self.model, batch, config.rollout_temperature,
                                                             single_pass)
                if old_log_probs is None:
                    assert entropy is not None
                    old_log_probs = log_probs.detach()
                    entropy_sum += float(entropy[lm_grpo.kept_mask(batch)].sum())
                loss = lm_grpo.token_loss(log_probs, old_log_probs, batch.advantages, lm_grpo.kept_mask(batch),
                                          config.clip_low, config.clip_high, total)
                loss.backward()
                loss_value += float(loss.detach())
            # each rank's loss is its share of the global token mean: the sum is the whole gradient
            distributed.reduce_gradients(self.model.parameters(), self.processes, average=False)
            loss_value = distributed.total(loss_value, self.processes)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.backend.clear_caches()  # cached contexts hold keys/values of the old weights
        if self.vllm is not None:  # the next rollouts sample from the updated weights
            stats["sync_seconds"] = self.vllm.sync()
        stats.update(loss=loss_value, entropy=distributed.total(entropy_sum, self.processes) / total,
                     tokens=float(total))
        return stats

    async def evaluate(self, prompts: list[Prompt]) -> list[dict[str, float]]:
        """Greedy decoding, whole catalog, for each λ of the grid."""
        self.policy.temperature = 0.0
        rows = []
        try:
            for lam in self.config.eval_lambdas:
                rollouts = [await self.play(p, sorted(self.env.options), lam) for p in prompts]
                rows.append(summary([outcome(r) for r in rollouts]) | {"lambda": lam})
        finally:
            self.policy.temperature = self.config.rollout_temperature
        return rows

    async def run(self) -> pathlib.Path:
        config, started = self.config, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        processes = self.processes
        sft = None
        if config.sft_teacher:
            from xrouter_training.lm_sft import SupervisedWarmStart  # it builds on this module

            if processes.leader:  # one warm start; the other processes take its weights
                warm = SupervisedWarmStart(config, self.env, self.model, self.tokenizer)
                sft = await warm.run(self.train_prompts, self.validation[:config.sft_probe_prompts], self.rng, self.out)
            distributed.broadcast_weights(self.model, processes)
            self.backend.clear_caches()  # contexts cached before the warm start hold the old weights
        eval_prompts = self.validation[:config.lm_eval_prompts or None]
        after_sft = None
        if config.sft_teacher and config.steps and processes.leader:  # the start GRPO is measured against
            # Saved too, so `xrouter eval` can put the warm start beside the GRPO result.
            self.save("checkpoint-warm-start", sft, None, started, tag="-warm-start")
            print(f"evaluating the warm start on {len(eval_prompts)} validation prompts...", flush=True)
            after_sft = await self.evaluate(eval_prompts)
            print_evaluation(after_sft)
        # One shared order of prompts (the same shuffle on every rank); each rank takes its own slice.
        order, cursor = list(self.train_prompts), len(self.train_prompts)
        per_step = config.prompts_per_step * processes.size
        rollout_rng = random.Random(config.seed * 1000 + processes.rank)  # pools and λ differ by rank
        log = open(self.out / "metrics.jsonl", "w") if processes.leader else None  # noqa: SIM115
        engine = contextlib.ExitStack()
        try:
            if config.lm_rollout_engine == "vllm" and config.steps:
                self.vllm = VLLMRollouts(self.model, self.tokenizer, self.out / "rollout-engine",
                                         gpu_memory=config.lm_vllm_gpu_memory)
                print("starting the vLLM rollout engine with the current weights...", flush=True)
                self.policy.backend = engine.enter_context(self.vllm.serving())
            for step in range(1, config.steps + 1):
                if cursor + per_step > len(order):
                    random.Random(config.seed + step).shuffle(order)
                    cursor = 0
                begin = cursor + processes.rank * config.prompts_per_step
                prompts = order[begin:begin + config.prompts_per_step]
                cursor += per_step
                step_started = time.perf_counter()
                groups = await self.refill(await self.rollout(prompts, rollout_rng), rollout_rng)
                rollout_s = time.perf_counter() - step_started
                stats = self.update(groups)
                outcomes = distributed.gather([outcome(r) for g in groups for r in g], processes)
                row = {"step": step, **summary(outcomes), **stats, "processes": processes.size, "episodes": len(outcomes),
                       "groups": distributed.total(len(groups), processes),
                       "rollout_seconds": rollout_s,
                       "step_seconds": time.perf_counter() - step_started, "seconds": time.perf_counter() - started}
                if log is None:
                    continue
                log.write(json.dumps(row) + "\n")
                log.flush()
                plot_training_curves(self.out / "metrics.jsonl", self.out / "metrics.png")  # a run cut short has it too
                print(f"step {step:>4}/{config.steps}  reward {row['reward']:.3f}  acc {row['accuracy']:.3f}  "
                      f"cost ${row['cost_usd']:.5f}  calls {row['calls_per_query']:.2f}  "
                      f"format errors {row['format_error_rate']:.2f}  entropy {row['entropy']:.3f}  "
                      f"kept {row['kept_groups']:.2f}  {row['step_seconds']:.1f}s", flush=True)
        finally:
            if log is not None:
                log.close()
            if self.vllm is not None:
                await self.policy.backend.aclose()
                self.policy.backend, self.vllm = self.backend, None  # evaluation runs in process
            engine.close()
        distributed.check_replicas_agree(self.model, processes)
        if not processes.leader:
            return self.out / "checkpoint"
        print("evaluating on the validation split...", flush=True)
        evaluation = await self.evaluate(eval_prompts)
        print_evaluation(evaluation)
        version = self.save("checkpoint", sft, {"split": "validation", "prompts": len(eval_prompts),
                                                "lambdas": evaluation, "after_warm_start": after_sft}, started)
        print(f"checkpoint {version} written to {self.out / 'checkpoint'} ({time.perf_counter() - started:.0f}s)")
        return self.out / "checkpoint"


    def save(self, name: str, sft: dict[str, Any] | None, evaluation: dict[str, Any] | None, started: float,
             tag: str = "") -> str:
        """Write the current weights as an LM checkpoint ``out/name``; its version."""
        config = self.config
        version = f"{time.strftime('%Y%m%d%H%M%S')}-lm-s{config.seed}{tag}"
        self.model.to("cpu")  # saved weights load anywhere
        checkpoint.save(self.out / name, self.model, self.tokenizer, {
            "version": version, "base_model": config.lm_model, "catalog_hash": catalog_hash(self.env.options.values()),
            "data": {"file": config.data, "train_prompts": len(self.train_prompts),
                     "split": f"train (xrouter.common.outcomes.split_of, fold {config.validation_fold})"},
            "lambda_range": [config.lambda_min, config.lambda_max], "max_turns": config.max_turns,
            "generation": {"max_new_tokens": config.max_new_tokens,
                           "max_response_chars": self.policy.max_response_chars,
                           "tool_prompt": config.lm_tool_prompt, "message_tokens": config.lm_message_tokens},
            "config": dataclasses.asdict(config), "sft": sft, "eval": evaluation,
            "train_seconds": time.perf_counter() - started})
        self.model.to(self.device)
        return version


def print_evaluation(rows: list[dict[str, float]]) -> None:
    for row in rows:
        print(f"  λ={row['lambda']:<6g} reward {row['reward']:.3f}  accuracy {row['accuracy']:.3f}  "
              f"cost ${row['cost_usd']:.6f}  calls {row['calls_per_query']:.2f}  "
              f"format errors {row['format_error_rate']:.2f}", flush=True)


def model_cost_usd(episode: Episode) -> float:
    """What the episode's model calls cost, the router LM's own turns left out."""
    return sum(c.cost_micro_usd for c in episode.calls if c.role != ROUTER_ROLE) / 1e6


def outcome(rollout: Rollout) -> dict[str, float]:
    """One episode's figures, small enough to gather from every process."""
    episode = rollout.episode
    return {"reward": rollout.reward, "accuracy": episode.score, "cost_usd": model_cost_usd(episode),
            "router_cost_usd": rollout.router_cost_usd,  # the router LM's own tokens (in the reward too)
            "calls_per_query": float(sum(c.attempted for c in episode.calls if c.role != ROUTER_ROLE)),
            "format_error_rate": float(bool(rollout.failure)),
            "generated_tokens": float(sum(rollout.transcript.generated))}


def summary(outcomes: list[dict[str, float]]) -> dict[str, float]:
    """Mean reward, accuracy, cost, calls and the share of episodes with a malformed/truncated reply."""
    return {key: float(np.mean([o[key] for o in outcomes])) for key in outcomes[0]} if outcomes else {}


def main(config: TrainConfig, out: str) -> int:
    try:
        asyncio.run(LMTrainer(config, pathlib.Path(out)).run())
    finally:
        distributed.leave()
    return 0
