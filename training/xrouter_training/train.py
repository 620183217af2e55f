"""`xrouter train`: GRPO on recorded outcomes through the router's own episode loop, on CPU in
minutes; the same entry point runs as the GPU Job and under `torchrun` on several processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import pathlib
import random
import time
from collections.abc import Callable

import numpy as np
import torch

from xrouter.common.outcomes import ROUTERBENCH
from xrouter.reward.formula import RewardConfig
from xrouter.router.compact.checkpoint import catalog_hash, save
from xrouter.router.compact.distribution import log_prob
from xrouter.router.compact.encoder import ONNX_NAME, QueryEncoder, cache_dir, embed_prompts
from xrouter.router.compact.features import Vocabulary
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import CompactPolicy, Turn
from xrouter_training import grpo
from xrouter_training.config import TrainConfig
from xrouter_training.environment import Episode, Prompt, ReplayEnvironment


def sample_lambda(config: TrainConfig, rng: random.Random) -> float:
    """Uniform in log(1 + λ): every order of magnitude of the cost preference gets trained."""
    low, high = math.log1p(config.lambda_min), math.log1p(config.lambda_max)
    return math.expm1(rng.uniform(low, high))


def sample_pool(env: ReplayEnvironment, prompt: Prompt, config: TrainConfig, rng: random.Random) -> list[str]:
    models = sorted(env.answered[prompt.prompt_id])
    top = min(config.pool_max or len(models), len(models))
    return sorted(rng.sample(models, rng.randint(min(config.pool_min, top), top)))


class Trainer:
    def __init__(self, config: TrainConfig, out: pathlib.Path,
                 embed: Callable[[str], np.ndarray] | None = None, env: ReplayEnvironment | None = None) -> None:
        """``embed`` replaces the query encoder and ``env`` the environment built from the config (tests)."""
        self.config, self.out = config, out
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:  # launched by torchrun: gradients are averaged across processes
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        torch.manual_seed(config.seed)
        torch.set_num_threads(1)  # tiny per-decision forwards: threads cost more than they give
        self.rng = random.Random(config.seed * 1000 + self.rank)
        data = ROUTERBENCH if config.data == "routerbench" else pathlib.Path(config.data)
        kwargs = {"catalog": config.catalog} if config.catalog else {}
        self.env = env or ReplayEnvironment(data, reward=RewardConfig(config.reward_k, config.reward_cost_max), **kwargs)
        options = list(self.env.options.values())
        self.vocabulary = Vocabulary(tuple(o.id for o in options), tuple(sorted({t for o in options for t in o.tags})))
        self.encoder_path = cache_dir() / ONNX_NAME
        if embed is None:
            self.encoder = QueryEncoder.load()
        limit = config.limit_prompts or None
        self.train_prompts = self.env.split("train")[:limit]
        self.validation = self.env.split("validation")[:limit]
        if embed is None:
            vectors = embed_prompts(self.encoder, [(p.prompt_id, p.text) for p in self.train_prompts + self.validation],
                                    progress=self.rank == 0)
            by_text = {p.text: vectors[p.prompt_id] for p in self.train_prompts + self.validation}
            embed = by_text.__getitem__
        self.network = CompactRouter(len(self.vocabulary.models), len(self.vocabulary.tags), hidden=config.hidden)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate)
        self.policy = CompactPolicy(self.network, self.vocabulary, embed, greedy=False,
                                    seed=config.seed * 1000 + self.rank)

    async def rollout(self, prompts: list[Prompt]) -> tuple[list[list[Episode]], list[list[list[Turn]]]]:
        """G sampled episodes per prompt; each group shares its prompt, pool and λ."""
        groups, turns = [], []
        for prompt in prompts:
            pool, lam = sample_pool(self.env, prompt, self.config, self.rng), sample_lambda(self.config, self.rng)
            episodes, recorded = [], []
            for _ in range(self.config.group_size):
                self.policy.recorder = []
                episodes.append(await self.env.play(self.policy, prompt, pool, lam, self.config.max_turns))
                recorded.append(self.policy.recorder)
            groups.append(episodes)
            turns.append(recorded)
        self.policy.recorder = None
        return groups, turns

    def update(self, groups: list[list[Episode]], turns: list[list[list[Turn]]]) -> dict[str, float]:
        rewards = np.array([[e.reward for e in group] for group in groups])
        keep = grpo.informative_groups(rewards) if self.config.dynamic_sampling else np.ones(len(groups), bool)
        advantages = grpo.group_advantages(rewards, scale=self.config.advantage_scale)
        batch_turns, batch_adv = [], []
        for g in np.flatnonzero(keep):
            for e, episode_turns in enumerate(turns[g]):
                batch_turns += episode_turns
                batch_adv += [advantages[g, e]] * len(episode_turns)
        stats = {"kept_groups": float(keep.mean()), "loss": 0.0, "entropy": 0.0}
        if not batch_turns:
            return stats
        batch = grpo.batch_turns(batch_turns, len(self.vocabulary.tags))
        adv = torch.tensor(batch_adv, dtype=torch.float32)
        self.network.train()
        for _ in range(self.config.update_epochs):
            out = self.network(batch["query"], batch["global_x"], batch["model_ids"], batch["model_x"], batch["present"])
            logp, entropy = log_prob(out, batch["masks"], batch["actions"])
            loss = grpo.clipped_loss(logp, batch["old_log_prob"], adv, self.config.clip_low, self.config.clip_high)
            loss = loss - self.config.entropy_coef * entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            if self.world > 1:
                for parameter in self.network.parameters():
                    if parameter.grad is not None:
                        torch.distributed.all_reduce(parameter.grad)
                        parameter.grad /= self.world
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
            self.optimizer.step()
        self.network.eval()
        stats.update(loss=float(loss.detach()), entropy=float(entropy.detach().mean()))
        return stats

    async def evaluate(self, prompts: list[Prompt]) -> list[dict[str, float]]:
        """Greedy policy, whole catalog, for each λ of the grid."""
        self.policy.greedy = True
        rows = []
        for lam in self.config.eval_lambdas:
            episodes = [await self.env.play(self.policy, p, sorted(self.env.options), lam, self.config.max_turns)
                        for p in prompts]
            rows.append({"lambda": lam, "accuracy": float(np.mean([e.score for e in episodes])),
                         "mean_cost_usd": float(np.mean([e.cost_usd for e in episodes])),
                         "calls_per_query": float(np.mean([sum(c.attempted for c in e.calls) for e in episodes]))})
        self.policy.greedy = False
        return rows

    async def run(self) -> pathlib.Path:
        config, started = self.config, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / "metrics.jsonl"
        log = open(log_path, "w") if self.rank == 0 else None  # noqa: SIM115
        order = list(self.train_prompts)
        cursor = len(order)
        for step in range(1, config.steps + 1):
            if cursor + config.prompts_per_step * self.world > len(order):
                self.rng.shuffle(order) if self.world == 1 else random.Random(config.seed + step).shuffle(order)
                cursor = 0
            begin = cursor + self.rank * config.prompts_per_step
            prompts = order[begin:begin + config.prompts_per_step]
            cursor += config.prompts_per_step * self.world
            groups, turns = await self.rollout(prompts)
            stats = self.update(groups, turns)
            episodes = [e for group in groups for e in group]
            row = {"step": step, "reward": float(np.mean([e.reward for e in episodes])),
                   "accuracy": float(np.mean([e.score for e in episodes])),
                   "cost_usd": float(np.mean([e.cost_usd for e in episodes])),
                   "calls_per_query": float(np.mean([sum(c.attempted for c in e.calls) for e in episodes])),
                   "seconds": time.perf_counter() - started, **stats}
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
                print(f"\rstep {step:>4}/{config.steps}  reward {row['reward']:.3f}  acc {row['accuracy']:.3f}  "
                      f"cost ${row['cost_usd']:.5f}  calls {row['calls_per_query']:.2f}  "
                      f"entropy {row['entropy']:.3f}  kept {row['kept_groups']:.2f}  {row['seconds']:.0f}s",
                      end="\n" if step % 10 == 0 or step == config.steps else "", flush=True)
        if self.rank != 0:
            return self.out
        print("evaluating on the validation split...", flush=True)
        evaluation = await self.evaluate(self.validation)
        for row in evaluation:
            print(f"  λ={row['lambda']:<6g} accuracy {row['accuracy']:.3f}  cost ${row['mean_cost_usd']:.6f}  "
                  f"calls {row['calls_per_query']:.2f}")
        version = f"{time.strftime('%Y%m%d%H%M%S')}-s{config.seed}"
        save(self.out / "checkpoint", self.network, self.vocabulary, self.encoder_path, {
            "version": version, "catalog_hash": catalog_hash(self.env.options.values()),
            "data": {"file": config.data, "train_prompts": len(self.train_prompts),
                     "split": "train (xrouter.common.outcomes.split_of)"},
            "lambda_range": [config.lambda_min, config.lambda_max], "max_turns": config.max_turns,
            "config": dataclasses.asdict(config), "eval": {"split": "validation", "lambdas": evaluation},
            "train_seconds": time.perf_counter() - started})
        print(f"checkpoint {version} written to {self.out / 'checkpoint'} "
              f"({time.perf_counter() - started:.0f}s)")
        return self.out / "checkpoint"


def main(config_path: str, out: str) -> int:
    config = TrainConfig.from_file(config_path)
    asyncio.run(Trainer(config, pathlib.Path(out)).run())
    return 0
