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
import dataclasses
import json
import math
import os
import pathlib
import random
import time

import numpy as np
import torch

from xrouter.common.outcomes import ROUTERBENCH
from xrouter.reward.formula import RewardConfig, cost_aware_reward
from xrouter.router.checkpoint_manifest import catalog_hash
from xrouter.router.lm import checkpoint
from xrouter.router.lm.charge import RouterLMPrice, transcript_cost_usd
from xrouter.router.lm.generation import TransformersBackend
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.lm.transcript import Transcript
from xrouter.router.policy import Strategy
from xrouter_training import grpo, lm_grpo
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import Episode, Prompt, ReplayEnvironment
from xrouter_training.lm_models import load_base_model
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
    reward = cost_aware_reward(episode.score, episode.cost_usd + router_cost, episode.cost_lambda, env.reward_config,
                               failure=failure)
    return Rollout(episode, transcript, reward, failure, router_cost)


class LMTrainer:
    """GRPO for the LM policy; ``env`` replaces the environment the config names (tests)."""

    def __init__(self, config: TrainConfig, out: pathlib.Path, env: ReplayEnvironment | None = None) -> None:
        if config.policy != "lm":
            raise ConfigError(f"policy={config.policy!r}: LMTrainer trains policy: lm")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("policy: lm trains in a single process for now; run it without torchrun")
        self.config, self.out = config, out
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, self.tokenizer = load_base_model(config.lm_model, config.seed)
        self.model = model.to(self.device)
        data = ROUTERBENCH if config.data == "routerbench" else pathlib.Path(config.data)
        kwargs = {"catalog": config.catalog} if config.catalog else {}
        reward = RewardConfig(config.reward_k, config.reward_cost_max)
        self.env = env or ReplayEnvironment(data, reward=reward, **kwargs)
        limit = config.limit_prompts or None
        self.train_prompts = self.env.split("train")[:limit]
        self.validation = self.env.split("validation")[:limit]
        self.backend = TransformersBackend(self.model, self.tokenizer)
        self.policy = LMPolicy(self.tokenizer, self.backend,
                               temperature=config.rollout_temperature, max_new_tokens=config.max_new_tokens,
                               price=config.router_price())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, weight_decay=0.0)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    async def play(self, prompt: Prompt, pool: list[str], cost_lambda: float) -> Rollout:
        """One episode with the current policy settings; one that did not end properly scores 0."""
        self.policy.recorder = []
        episode = await self.env.play(self.policy, prompt, pool, cost_lambda, self.config.max_turns)
        (transcript,) = self.policy.recorder
        self.policy.recorder = None
        return judge(self.env, episode, transcript, self.config.router_price())

    async def rollout(self, prompts: list[Prompt]) -> list[list[Rollout]]:
        """G sampled episodes per prompt; each group shares its prompt, pool and λ."""
        groups = []
        for prompt in prompts:
            pool, lam = sample_pool(self.env, prompt, self.config, self.rng), sample_lambda(self.config, self.rng)
            groups.append([await self.play(prompt, pool, lam) for _ in range(self.config.group_size)])
        return groups

    def update(self, groups: list[list[Rollout]]) -> dict[str, float]:
        """``update_epochs`` optimizer steps on the informative groups' generated tokens."""
        config = self.config
        rewards = np.array([[r.reward for r in group] for group in groups])
        keep = grpo.informative_groups(rewards) if config.dynamic_sampling else np.ones(len(groups), bool)
        advantages = grpo.group_advantages(rewards, scale=config.advantage_scale)
        samples = [(rollout.transcript, float(advantages[g, e])) for g, group in enumerate(groups) if keep[g]
                   for e, rollout in enumerate(group) if any(rollout.transcript.generated)]
        stats = {"kept_groups": float(keep.mean()), "loss": 0.0, "entropy": math.nan, "tokens": 0.0}
        if not samples:
            return stats
        step = config.lm_micro_batch
        batches = [lm_grpo.pad_transcripts([t for t, _ in samples[i:i + step]], [a for _, a in samples[i:i + step]],
                                           self.pad_id).to(self.device) for i in range(0, len(samples), step)]
        total = int(sum(int(b.loss_mask.sum()) for b in batches))
        self.model.eval()  # no dropout: the ratio compares the same function before and after
        old, entropy_sum = [], 0.0
        with torch.no_grad():
            for batch in batches:
                log_probs, entropy = lm_grpo.token_log_probs(self.model, batch, config.rollout_temperature, True)
                old.append(log_probs)
                assert entropy is not None
                entropy_sum += float(entropy[lm_grpo.kept_mask(batch)].sum())
        loss_value = 0.0
        for _ in range(config.update_epochs):
            self.optimizer.zero_grad()
            loss_value = 0.0
            for batch, old_log_probs in zip(batches, old, strict=True):
                log_probs, _ = lm_grpo.token_log_probs(self.model, batch, config.rollout_temperature)
                loss = lm_grpo.token_loss(log_probs, old_log_probs, batch.advantages, lm_grpo.kept_mask(batch),
                                          config.clip_low, config.clip_high, total)
                loss.backward()
                loss_value += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.backend.clear_caches()  # cached contexts hold keys/values of the old weights
        stats.update(loss=loss_value, entropy=entropy_sum / total, tokens=float(total))
        return stats

    async def evaluate(self, prompts: list[Prompt]) -> list[dict[str, float]]:
        """Greedy decoding, whole catalog, for each λ of the grid."""
        self.policy.temperature = 0.0
        rows = []
        try:
            for lam in self.config.eval_lambdas:
                rollouts = [await self.play(p, sorted(self.env.options), lam) for p in prompts]
                rows.append(summary(rollouts) | {"lambda": lam})
        finally:
            self.policy.temperature = self.config.rollout_temperature
        return rows

    async def run(self) -> pathlib.Path:
        config, started = self.config, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        sft = None
        if config.sft_teacher:
            from xrouter_training.lm_sft import SupervisedWarmStart  # it builds on this module

            warm = SupervisedWarmStart(config, self.env, self.model, self.tokenizer)
            sft = await warm.run(self.train_prompts, self.validation[:config.sft_probe_prompts], self.rng, self.out)
            self.backend.clear_caches()  # contexts cached before the warm start hold the old weights
        order, cursor = list(self.train_prompts), len(self.train_prompts)
        with open(self.out / "metrics.jsonl", "w") as log:
            for step in range(1, config.steps + 1):
                if cursor + config.prompts_per_step > len(order):
                    self.rng.shuffle(order)
                    cursor = 0
                prompts = order[cursor:cursor + config.prompts_per_step]
                cursor += config.prompts_per_step
                step_started = time.perf_counter()
                groups = await self.rollout(prompts)
                rollout_s = time.perf_counter() - step_started
                stats = self.update(groups)
                row = {"step": step, **summary([r for g in groups for r in g]), **stats, "rollout_seconds": rollout_s,
                       "step_seconds": time.perf_counter() - step_started, "seconds": time.perf_counter() - started}
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(f"step {step:>4}/{config.steps}  reward {row['reward']:.3f}  acc {row['accuracy']:.3f}  "
                      f"cost ${row['cost_usd']:.5f}  calls {row['calls_per_query']:.2f}  "
                      f"format errors {row['format_error_rate']:.2f}  entropy {row['entropy']:.3f}  "
                      f"kept {row['kept_groups']:.2f}  {row['step_seconds']:.1f}s", flush=True)
        print("evaluating on the validation split...", flush=True)
        evaluation = await self.evaluate(self.validation)
        for row in evaluation:
            print(f"  λ={row['lambda']:<6g} accuracy {row['accuracy']:.3f}  cost ${row['cost_usd']:.6f}  "
                  f"calls {row['calls_per_query']:.2f}  format errors {row['format_error_rate']:.2f}")
        version = f"{time.strftime('%Y%m%d%H%M%S')}-lm-s{config.seed}"
        self.model.to("cpu")  # saved weights load anywhere
        checkpoint.save(self.out / "checkpoint", self.model, self.tokenizer, {
            "version": version, "base_model": config.lm_model, "catalog_hash": catalog_hash(self.env.options.values()),
            "data": {"file": config.data, "train_prompts": len(self.train_prompts),
                     "split": "train (xrouter.common.outcomes.split_of)"},
            "lambda_range": [config.lambda_min, config.lambda_max], "max_turns": config.max_turns,
            "generation": {"max_new_tokens": config.max_new_tokens,
                           "max_response_chars": self.policy.max_response_chars},
            "config": dataclasses.asdict(config), "sft": sft, "eval": {"split": "validation", "lambdas": evaluation},
            "train_seconds": time.perf_counter() - started})
        self.model.to(self.device)
        print(f"checkpoint {version} written to {self.out / 'checkpoint'} ({time.perf_counter() - started:.0f}s)")
        return self.out / "checkpoint"


def summary(rollouts: list[Rollout]) -> dict[str, float]:
    """Mean reward, accuracy, cost, calls and the share of episodes with a malformed/truncated reply."""
    episodes = [r.episode for r in rollouts]
    return {"reward": float(np.mean([r.reward for r in rollouts])),
            "accuracy": float(np.mean([e.score for e in episodes])),
            "cost_usd": float(np.mean([e.cost_usd for e in episodes])),  # the model calls'
            "router_cost_usd": float(np.mean([r.router_cost_usd for r in rollouts])),
            "calls_per_query": float(np.mean([sum(c.attempted for c in e.calls) for e in episodes])),
            "format_error_rate": float(np.mean([bool(r.failure) for r in rollouts])),
            "generated_tokens": float(np.mean([sum(r.transcript.generated) for r in rollouts]))}


def main(config: TrainConfig, out: str) -> int:
    asyncio.run(LMTrainer(config, pathlib.Path(out)).run())
    return 0
