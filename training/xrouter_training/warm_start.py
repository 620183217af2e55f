"""Supervised warm start of the correctness and cost heads (router/compact/network.py) on recorded outcomes.

Rollouts visit each training prompt a couple of times per run, far too little to learn from the
query which models answer it correctly; but the recorded outcomes label every model on every prompt.
So before GRPO, the head is fitted on decision states built from the whole train split: for each
prompt, a random pool and λ, and either nothing called yet or one or two random models already
answered (their recorded replies, through the same replay adapters and feature encoding the
episodes use), each pool model labelled with its recorded score. Epochs run over a fixed set of such
states, with a progress bar."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.compact.batch import DecisionBatch, pad_decisions
from xrouter.router.compact.distribution import Actions, Masks
from xrouter.router.compact.features import Vocabulary, encode_state
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import Turn
from xrouter.router.policy import EpisodeState, ToolCall
from xrouter_training import grpo
from xrouter_training.environment import Prompt, ReplayEnvironment

# The supervised loss reads no action; batch_turns still stacks one per state.
_NO_ACTION = Actions(torch.tensor([True]), torch.tensor([0]), torch.tensor([-1]), torch.tensor([-1]),
                     torch.tensor([-1]))


async def outcome_states(env: ReplayEnvironment, prompts: list[Prompt], embed: Callable[[str], np.ndarray],
                         vocabulary: Vocabulary, pools: Callable[[Prompt], list[str]],
                         lambdas: Callable[[], float], rng: random.Random, per_prompt: int,
                         max_turns: int, lambda_top: float = float("inf"), answer_checks: bool = True,
                         memory_features: Callable[[str, list[str]], np.ndarray | None] | None = None
                         ) -> tuple[list[Turn], list[str]]:
    """``per_prompt`` states for each prompt, and the prompt id of each (whose recorded outcomes
    label it); ``memory_features``: the policy's outcome-memory lookup (``CompactPolicy.memory_features``)."""
    turns, prompt_ids = [], []
    for prompt in tqdm(prompts, desc="warm-start states", unit="prompt", leave=False):
        query = embed(prompt.text)
        for _ in range(per_prompt):
            pool = pools(prompt)
            state = EpisodeState([("user", prompt.text)], [env.options[m] for m in pool], lambdas(), None,
                                 max_turns, 0)
            answered = rng.sample(pool, rng.choice([0, 1, 2]) if len(pool) > 2 else rng.choice([0, 1]))
            for index, model in enumerate(answered):
                state.calls.append(await env.invoke(ToolCall(model, SYSTEM_PROMPT), state.messages, index, 1))
            if answered:
                state.turn = 2
            memory_x = memory_features(prompt.text, pool) if memory_features is not None else None
            arrays = encode_state(state, vocabulary, lambda_top, answer_checks, memory_x)
            turns.append(Turn(query, arrays, state.final_turn, _NO_ACTION, 0.0))
            prompt_ids.append(prompt.prompt_id)
    return turns, prompt_ids


class _Prepared:
    """A fixed set of states padded, described and labelled once; a batch is a slice of it (the
    epochs re-read the same states, and re-padding them each time cost more than the network)."""

    def __init__(self, env: ReplayEnvironment, turns: list[Turn], prompt_ids: list[str], n_tags: int,
                 descriptors: Mapping[str, np.ndarray] | None) -> None:
        self.decisions = pad_decisions([t.query for t in turns], [t.arrays for t in turns],
                                       [t.final for t in turns], n_tags)
        self.labels = grpo.outcome_labels(turns, [env.scores[p] for p in prompt_ids],
                                          [env.costs[p] for p in prompt_ids], self.decisions.present.shape[1])
        self.table = self.index = None
        if descriptors is not None:  # descriptions by row of a small table, not copied per state
            models = sorted(descriptors)
            self.table = torch.from_numpy(np.stack([np.zeros_like(descriptors[models[0]]),
                                                    *(descriptors[m] for m in models)]))
            row = {m: i + 1 for i, m in enumerate(models)}
            self.index = torch.zeros(self.decisions.present.shape, dtype=torch.long)
            for i, turn in enumerate(turns):
                self.index[i, :len(turn.arrays.models)] = torch.tensor([row[m] for m in turn.arrays.models])

    def __len__(self) -> int:
        return len(self.labels.score)

    def losses(self, network: CompactRouter, rows: torch.Tensor, cost_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.decisions
        batch = DecisionBatch(d.query[rows], d.global_x[rows], d.model_ids[rows], d.model_x[rows], d.present[rows],
                              Masks(d.masks.callable_[rows], d.masks.selectable[rows], d.masks.final[rows]),
                              None if self.table is None else self.table[self.index[rows]])
        labels = grpo.OutcomeLabels(self.labels.score[rows], self.labels.log_cost[rows], self.labels.known[rows])
        return labels.loss(batch.forward(network), cost_coef)


def _losses(network: CompactRouter, env: ReplayEnvironment, turns: list[Turn], prompt_ids: list[str],
            n_tags: int, cost_coef: float, descriptors: Mapping[str, np.ndarray] | None) -> tuple[torch.Tensor, torch.Tensor]:
    prepared = _Prepared(env, turns, prompt_ids, n_tags, descriptors)
    return prepared.losses(network, torch.arange(len(prepared)), cost_coef)


def fit_outcomes(network: CompactRouter, env: ReplayEnvironment, states: tuple[list[Turn], list[str]],
                 held_out: tuple[list[Turn], list[str]], n_tags: int, epochs: int, learning_rate: float,
                 weight_decay: float, cost_coef: float, batch_size: int, rng: random.Random,
                 descriptors: Mapping[str, np.ndarray] | None = None, progress: bool = True) -> dict[str, float]:
    """Fit the correctness and cost heads (binary cross-entropy + cost_coef × cost deviance),
    keeping the weights of the epoch with the lowest loss on ``held_out`` (states of training
    prompts set aside: the heads memorise ~2,000 prompts within a few epochs, and it is the
    held-out loss that says when)."""
    fit = _Prepared(env, *states, n_tags, descriptors)
    check = _Prepared(env, *held_out, n_tags, descriptors)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    order = list(range(len(fit)))
    best: dict = {"held_out_loss": float("inf")}
    bar = tqdm(range(1, epochs + 1), desc="warm start (outcome heads)", unit="epoch", disable=not progress)
    for epoch in bar:
        network.train()
        rng.shuffle(order)
        for begin in range(0, len(order), batch_size):
            bce, cost = fit.losses(network, torch.tensor(order[begin:begin + batch_size]), cost_coef)
            optimizer.zero_grad()
            (bce + cost).backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            bce, cost = check.losses(network, torch.arange(len(check)), cost_coef)
        if float(bce + cost) < best["held_out_loss"]:
            best = {"held_out_loss": float(bce + cost), "held_out_bce": float(bce),
                    "held_out_cost_deviance": float(cost) / cost_coef if cost_coef else 0.0, "best_epoch": epoch,
                    "weights": {k: v.clone() for k, v in network.state_dict().items()}}
        bar.set_postfix(held_out_bce=f"{float(bce):.4f}", held_out_cost=f"{float(cost):.4f}", best_epoch=best["best_epoch"])
    network.load_state_dict(best.pop("weights"))
    network.eval()
    return best
