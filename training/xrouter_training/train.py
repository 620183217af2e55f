"""`xrouter train`: GRPO on recorded outcomes through the router's own episode loop, on CPU in
minutes; the same entry point runs as the GPU Job and under `torchrun` on several processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
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
from xrouter.router.compact.features import Vocabulary, descriptor_text
from xrouter.router.compact.memory import OutcomeMemory
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import CompactPolicy, Turn
from xrouter_training import distributed, grpo, warm_start
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import Episode, MixedEnvironment, Prompt, ReplayEnvironment


def sample_lambda(config: TrainConfig, rng: random.Random) -> float:
    """Uniform in log(1 + λ): every order of magnitude of the cost preference gets trained."""
    low, high = math.log1p(config.lambda_min), math.log1p(config.lambda_max)
    return math.expm1(rng.uniform(low, high))


def build_environment(config: TrainConfig) -> ReplayEnvironment | MixedEnvironment:
    """The configured outcome sets as one environment; the models the config names must be in it."""
    reward = RewardConfig(config.reward_k, config.reward_cost_max)
    if config.sources:
        env: ReplayEnvironment | MixedEnvironment = MixedEnvironment(config.sources, reward, config.exclude_models,
                                                                     config.exclude_tasks)
        check_tasks(config, env.tasks)
    else:
        data = ROUTERBENCH if config.data == "routerbench" else pathlib.Path(config.data)
        kwargs = {"catalog": config.catalog} if config.catalog else {}
        env = ReplayEnvironment(data, reward=reward, **kwargs)
    check_models(config, {model for replay in replays_of(env) for models in replay.answered.values()
                          for model in models})
    return env


def replays_of(env: ReplayEnvironment | MixedEnvironment) -> list[ReplayEnvironment]:
    """The one outcome set of each source, as read (before any model was excluded)."""
    return list(env.envs.values()) if isinstance(env, MixedEnvironment) else [env]


def check_tasks(config: TrainConfig, tasks: dict[str, set[str]]) -> None:
    """Refuse an excluded task family its source does not hold (a typo would exclude nothing)."""
    for entry in config.exclude_tasks:
        name, _, task = entry.partition("/")
        if task not in tasks[name]:
            raise ConfigError(f"exclude_tasks: {entry!r}: {name} has no task {task!r}; its tasks: {sorted(tasks[name])}")


def check_models(config: TrainConfig, models: set[str]) -> None:
    """Refuse an excluded model the data does not hold (a typo would exclude nothing), excluding
    every model, and a pool_min no pool can reach."""
    unknown = sorted(set(config.exclude_models) - models)
    if unknown:
        raise ConfigError(f"exclude_models: {unknown} are not models of the training data; known: {sorted(models)}")
    left = models - set(config.exclude_models)
    if not left:
        raise ConfigError("exclude_models: excludes every model of the training data; leave at least one")
    if config.pool_min > len(left):
        raise ConfigError(f"pool_min={config.pool_min}: the training data has {len(left)} models to draw pools from")


def first_per_source(prompts: list[Prompt], limit: int) -> list[Prompt]:
    """The first ``limit`` prompts of each source (all when ``limit`` is 0)."""
    if not limit:
        return prompts
    taken: dict[str, int] = {}
    chosen = []
    for prompt in prompts:
        taken[prompt.source] = taken.get(prompt.source, 0) + 1
        if taken[prompt.source] <= limit:
            chosen.append(prompt)
    return chosen


def sample_pool_all(env: ReplayEnvironment | MixedEnvironment, prompt: Prompt, config: TrainConfig) -> list[str]:
    """Every model that answered the prompt (its source's pool), less the excluded ones."""
    return sorted(env.answered[prompt.prompt_id] - set(config.exclude_models))


def sample_pool(env: ReplayEnvironment | MixedEnvironment, prompt: Prompt, config: TrainConfig,
                rng: random.Random) -> list[str]:
    models = sample_pool_all(env, prompt, config)
    top = min(config.pool_max or len(models), len(models))
    return sorted(rng.sample(models, rng.randint(min(config.pool_min, top), top)))


class Trainer:
    def __init__(self, config: TrainConfig, out: pathlib.Path,
                 embed: Callable[[str], np.ndarray] | None = None, env: ReplayEnvironment | None = None) -> None:
        """``embed`` replaces the query encoder and ``env`` the environment built from the config (tests)."""
        self.config, self.out = config, out
        self.processes = distributed.join()  # under torchrun: gradients are averaged across processes
        self.rank, self.world = self.processes.rank, self.processes.size
        torch.manual_seed(config.seed)
        torch.set_num_threads(1)  # tiny per-decision forwards: threads cost more than they give
        self.rng = random.Random(config.seed * 1000 + self.rank)
        self.env = env or build_environment(config)
        self.uncatalogued = {m: n for replay in replays_of(self.env) for m, n in replay.uncatalogued.items()}
        if self.uncatalogued and self.processes.rank == 0:
            print(f"not trained on (not in the catalog): {self.uncatalogued} rows", flush=True)
        options = [o for o in self.env.options.values() if o.id not in config.exclude_models]
        self.vocabulary = Vocabulary(tuple(o.id for o in options), tuple(sorted({t for o in options for t in o.tags})))
        self.encoder_path = cache_dir() / ONNX_NAME
        self.train_prompts = first_per_source(self.env.split("train", config.validation_fold), config.limit_prompts)
        self.validation = first_per_source(self.env.split("validation", config.validation_fold), config.limit_prompts)
        if embed is None:
            # Rank 0 exports the encoder and embeds the prompts into the cache; the others wait for it
            # and read the cache (concurrent writers would race on the same files).
            with distributed.leader_first(self.processes):
                encoder = QueryEncoder.load()
                texts = [p.text for p in self.train_prompts + self.validation] + [descriptor_text(o) for o in options]
                vectors = embed_prompts(encoder, [(text, text) for text in dict.fromkeys(texts)], progress=self.rank == 0)
            embed = vectors.__getitem__
        self.network = CompactRouter(len(self.vocabulary.models), len(self.vocabulary.tags), hidden=config.hidden,
                                     reward_k=config.reward_k, dropout=config.dropout, id_dropout=config.id_dropout)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate)
        self.embed = embed
        # The query embedding as the network sees it (zeros in the ablation without the encoder).
        self.query_embed = embed if config.use_query else (lambda text: np.zeros_like(embed(text)))
        self.descriptors = ({o.id: embed(descriptor_text(o)) for o in self.env.options.values()}
                            if config.use_descriptors else None)
        self.memory = None
        if config.use_memory:  # the train split's outcomes, the excluded models' left out
            excluded = set(config.exclude_models)
            self.memory = OutcomeMemory.from_outcomes(
                [p.text for p in self.train_prompts],
                [{m: s for m, s in self.env.scores[p.prompt_id].items() if m not in excluded} for p in self.train_prompts],
                embed, k=config.memory_k, temperature=config.memory_temperature)
        self.policy = CompactPolicy(self.network, self.vocabulary, embed, greedy=False, memory=self.memory,
                                    seed=config.seed * 1000 + self.rank, lambda_top=config.lambda_max,
                                    use_descriptors=config.use_descriptors, use_query=config.use_query,
                                    parallel_calls=config.parallel_calls, answer_checks=config.answer_checks)

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
        """One optimisation round on a step's rollouts: the GRPO surrogate on the decisions of
        informative groups plus the supervised correctness and cost losses on every decision (each
        pool model is labelled with its recorded score and cost on the prompt)."""
        rewards = np.array([[e.reward for e in group] for group in groups])
        keep = grpo.informative_groups(rewards) if self.config.dynamic_sampling else np.ones(len(groups), bool)
        advantages = grpo.group_advantages(rewards, scale=self.config.advantage_scale)
        all_turns, prompt_ids, batch_adv, in_loss = [], [], [], []
        for g, group_turns in enumerate(turns):
            for e, episode_turns in enumerate(group_turns):
                all_turns += episode_turns
                prompt_ids += [groups[g][e].prompt.prompt_id] * len(episode_turns)
                batch_adv += [float(advantages[g, e])] * len(episode_turns)
                in_loss += [bool(keep[g])] * len(episode_turns)
        stats = {"kept_groups": float(keep.mean()), "loss": 0.0, "entropy": 0.0, "correct_bce": 0.0, "cost_deviance": 0.0}
        if not all_turns:
            return stats
        batch = grpo.batch_turns(all_turns, len(self.vocabulary.tags), self.descriptors)
        labels = grpo.outcome_labels(all_turns, [self.env.scores[p] for p in prompt_ids],
                                     [self.env.costs[p] for p in prompt_ids], batch["present"].shape[1])
        adv = torch.tensor(batch_adv, dtype=torch.float32)
        pg = torch.tensor(in_loss)
        self.network.eval()  # no dropout: the ratios compare against log-probs sampled in eval mode
        for _ in range(self.config.update_epochs):
            out = grpo.forward(self.network, batch)
            logp, entropy = log_prob(out, batch["masks"], batch["actions"])
            bce, cost_deviance = labels.loss(out, self.config.cost_coef)
            loss = self.config.correctness_coef * (bce + cost_deviance)
            if pg.any():
                loss = loss + grpo.clipped_loss(logp[pg], batch["old_log_prob"][pg], adv[pg],
                                                self.config.clip_low, self.config.clip_high)
                loss = loss - self.config.entropy_coef * entropy[pg].mean()
            self.optimizer.zero_grad()
            loss.backward()
            distributed.reduce_gradients(self.network.parameters(), self.processes, average=True)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 1.0)
            self.optimizer.step()
        self.network.eval()
        stats.update(loss=float(loss.detach()), entropy=float(entropy.detach().mean()), correct_bce=float(bce.detach()),
                     cost_deviance=float(cost_deviance.detach()))
        return stats

    async def evaluate(self, prompts: list[Prompt]) -> list[dict[str, float]]:
        """Greedy policy, for each source and λ of the grid, every model of the prompt's source that
        answered it in the pool (``xrouter eval`` gives the full report)."""
        self.policy.greedy = True
        rows = []
        for source in sorted({p.source for p in prompts}):
            chosen = [p for p in prompts if p.source == source]
            for lam in self.config.eval_lambdas:
                episodes = [await self.env.play(self.policy, p, sample_pool_all(self.env, p, self.config), lam,
                                                self.config.max_turns) for p in chosen]
                rows.append({"source": source or "data", "lambda": lam, "prompts": len(chosen),
                             "accuracy": float(np.mean([e.score for e in episodes])),
                             "mean_cost_usd": float(np.mean([e.cost_usd for e in episodes])),
                             "calls_per_query": float(np.mean([sum(c.attempted for c in e.calls) for e in episodes]))})
        self.policy.greedy = False
        return rows

    async def warm_start(self) -> dict[str, float]:
        """Fit the correctness and cost heads on recorded outcomes of the train split (a slice held out)."""
        config = self.config
        rng = random.Random(config.seed)
        prompts = list(self.train_prompts)
        rng.shuffle(prompts)
        cut = max(1, int(len(prompts) * config.warm_start_held_out))
        states = {}
        for name, part in (("held_out", prompts[:cut]), ("fit", prompts[cut:])):
            states[name] = await warm_start.outcome_states(
                self.env, part, self.query_embed, self.vocabulary,
                lambda p: sample_pool(self.env, p, config, rng), lambda: sample_lambda(config, rng), rng,
                config.warm_start_states_per_prompt, config.max_turns, config.lambda_max, config.answer_checks,
                self.policy.memory_features)
        return warm_start.fit_outcomes(
            self.network, self.env, states["fit"], states["held_out"], len(self.vocabulary.tags),
            config.warm_start_epochs, config.warm_start_lr, config.warm_start_weight_decay, config.cost_coef, 256, rng,
            self.descriptors, progress=self.rank == 0)

    async def run(self) -> pathlib.Path:
        config, started = self.config, time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        warm = await self.warm_start() if config.warm_start_epochs else {}
        # every rank warm-starts identically (same seed); rank 0's copy is authoritative
        distributed.broadcast_weights(self.network, self.processes)
        if warm and self.rank == 0:
            print(f"warm start: held-out correctness BCE {warm['held_out_bce']:.4f}, cost deviance "
                  f"{warm['held_out_cost_deviance']:.4f} (epoch {warm['best_epoch']}/{config.warm_start_epochs})", flush=True)
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
                      f"entropy {row['entropy']:.3f}  bce {row['correct_bce']:.3f}  kept {row['kept_groups']:.2f}  {row['seconds']:.0f}s",
                      end="\n" if step % 10 == 0 or step == config.steps else "", flush=True)
        distributed.check_replicas_agree(self.network, self.processes)
        if self.rank != 0:
            return self.out
        print("evaluating on the validation split...", flush=True)
        evaluation = await self.evaluate(self.validation)
        for row in evaluation:
            print(f"  {row['source']:<12} λ={row['lambda']:<6g} accuracy {row['accuracy']:.3f}  cost ${row['mean_cost_usd']:.6f}  "
                  f"calls {row['calls_per_query']:.2f}")
        version = f"{time.strftime('%Y%m%d%H%M%S')}-s{config.seed}"
        save(self.out / "checkpoint", self.network, self.vocabulary, self.encoder_path, {
            "version": version, "catalog_hash": catalog_hash(self.env.options.values()),
            "data": {"file": config.data if not config.sources else None, "sources": list(config.sources),
                     "train_prompts": len(self.train_prompts), "exclude_models": list(config.exclude_models),
                     "exclude_tasks": list(config.exclude_tasks),
                     "rows_of_models_not_in_catalog": self.uncatalogued,
                     "split": f"train (xrouter.common.outcomes.split_of, fold {config.validation_fold})"},
            "use_descriptors": config.use_descriptors, "use_query": config.use_query,
            "parallel_calls": config.parallel_calls, "answer_checks": config.answer_checks,
            "use_memory": config.use_memory, "lambda_range": [config.lambda_min, config.lambda_max], "max_turns": config.max_turns,
            "config": dataclasses.asdict(config), "warm_start": warm, "eval": {"split": "validation", "lambdas": evaluation},
            "train_seconds": time.perf_counter() - started}, memory=self.memory)
        print(f"checkpoint {version} written to {self.out / 'checkpoint'} "
              f"({time.perf_counter() - started:.0f}s)")
        return self.out / "checkpoint"


def main(config_path: str, out: str) -> int:
    config = TrainConfig.from_file(config_path)
    if config.policy == "lm":
        from xrouter_training.lm_train import main as train_lm  # imported here: it imports this module

        return train_lm(config, out)
    try:
        asyncio.run(Trainer(config, pathlib.Path(out)).run())
    finally:
        distributed.leave()
    return 0
