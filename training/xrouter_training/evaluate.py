"""``xrouter eval``: play a policy and every baseline through the router's own episode loop on the
prompts of one split of an outcome set, and write ``report.json`` (figures, frontier metrics,
targets), ``frontier.png`` and ``decisions.jsonl`` (one line per policy, prompt and λ, from which
every figure can be recomputed).

No prompt is dropped silently: a prompt of the split that some pool model has no recorded outcome
for is either a failure (EvalError naming how many, which and why) or, with ``allow_partial``, listed
under ``skipped`` in report.json. Rows with a score but no response text are replayed as marked
placeholders (``xrouter.common.outcomes.placeholder_text``) and scored by their recorded label.
``evaluate_sources`` runs this once per bundled source (``--source``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from tqdm import tqdm

from xrouter.common import bounds
from xrouter.common.errors import InvalidArgument
from xrouter.router.baselines import make_baseline
from xrouter.router.lm.charge import ROUTER_ROLE
from xrouter.router.policy import ModelOption, Policy
from xrouter.router.policy_store import load_checkpoint

from xrouter_training.environment import Episode, Prompt, ReplayEnvironment
from xrouter_training.eval_baselines import (
    Embedder, KnnPolicy, KnnRouter, OraclePolicy, OutcomeTable, RandomPolicy)
from xrouter_training.evaluate_plan import (  # noqa: F401 - EvalConfig and plan_evaluation: imported from here
    DEFAULT_LAMBDAS, EvalConfig, EvalError, Selection, plan_evaluation)
from xrouter_training.plot import plot_frontier
from xrouter_training.report import build_report

CONCURRENT_EPISODES = 256  # episodes played at once by a policy that batches its decisions


@dataclasses.dataclass(frozen=True)
class Run:
    """A policy to play on every prompt, once per λ (``lambdas`` is (None,) for λ-blind policies)."""

    name: str
    group: str  # "single" (one fixed model), "baseline", or "subject" (a checkpoint under test)
    policy: Policy
    lambdas: tuple[float | None, ...]


def load_checkpoint_policy(path: pathlib.Path, catalog: Sequence[ModelOption]) -> Policy:
    """The learned policy of a checkpoint directory, compact or LM (its manifest's ``kind`` says
    which; its ``decide`` reads ``state.cost_lambda``), its hashes and catalog verified as the router does."""
    try:
        return load_checkpoint(path, list(catalog))
    except InvalidArgument as error:
        raise EvalError(f"--policy {path}: not a usable checkpoint: {error.message}") from None


def default_embedder(progress: bool = True) -> Embedder:
    """Query embeddings from the compact policy's encoder, cached on disk by ``embed_prompts``."""
    try:
        from xrouter.router.compact.encoder import QueryEncoder, embed_prompts
        encoder = QueryEncoder.load()
    except ImportError as error:
        raise EvalError(f"the kNN baseline needs the compact policy's query encoder ({error}); "
                        "pass --no-knn to evaluate without it") from None

    def embed(prompts: Sequence[Prompt]) -> Mapping[str, np.ndarray]:
        return embed_prompts(encoder, [(p.prompt_id, p.text) for p in prompts], progress=progress)
    return embed


def build_runs(config: EvalConfig, env: ReplayEnvironment, table: OutcomeTable, pool: Sequence[str],
               prompts: Sequence[Prompt], embedder: Embedder | None) -> list[Run]:
    """The subject policy plus every baseline, in a stable order."""
    catalog_ids, sweep, once = set(env.options), tuple(config.lambdas), (None,)
    runs = [Run(f"fixed:{m}", "single", make_baseline(f"fixed:{m}", catalog_ids), once) for m in pool]
    runs += [Run("cheapest", "baseline", make_baseline("cheapest", catalog_ids), once),
             Run("cascade", "baseline", make_baseline("cascade", catalog_ids), once),
             Run("random", "baseline", RandomPolicy(config.seed), once),
             Run("oracle", "baseline", OraclePolicy(table), sweep)]
    if config.knn:
        embed = embedder or default_embedder(config.progress)
        train = [p for p in env.split("train", config.fold)
                 if p.prompt_id in table.scores and p.task not in config.held_out_tasks][: config.knn_train_limit]
        # Neighbours come from the train split only; the evaluated prompts are embedded as queries.
        router = KnnRouter(embed(train), table, pool, config.knn_k, config.lambdas)
        runs.append(Run("knn", "baseline", KnnPolicy(router, knn_queries(embed, prompts, table), table), sweep))
    if config.is_checkpoint:
        policy = load_checkpoint_policy(pathlib.Path(config.policy), list(env.options.values()))
        runs.append(Run(f"checkpoint:{pathlib.Path(config.policy).name}", "subject", policy, sweep))
    elif config.policy.startswith("cascade:"):  # a named cascade is the subject, beside the default one
        try:
            runs.append(Run(config.policy, "subject", make_baseline(config.policy, set(pool)), once))
        except InvalidArgument as error:
            raise EvalError(f"--policy: {error.message}") from None
    elif config.policy not in {r.name for r in runs}:
        raise EvalError(f"--policy: {config.policy!r} is not in the evaluated pool {list(pool)}")
    return runs


def knn_queries(embed: Embedder, prompts: Sequence[Prompt], table: OutcomeTable) -> Mapping[str, np.ndarray]:
    """The evaluated prompts' vectors keyed as KnnPolicy looks them up: by the table's id for the
    prompt's text. A text recorded under several ids (two of RouterBench's MBPP prompts) resolves to
    its first id, as the replay does, which may be a train prompt's: keyed by their own ids, such a
    validation prompt had no vector (a fold of `xrouter generalise --kfold` failed on it)."""
    return embed([dataclasses.replace(prompt, prompt_id=table.prompt_id(prompt.text)) for prompt in prompts])


def knn_notes(runs: Sequence[Run], held_out_tasks: Sequence[str] = ()) -> dict:
    """How the kNN baseline was built (k, and the leave-one-out utilities it was chosen by)."""
    knn = next((r.policy for r in runs if r.name == "knn"), None)
    if not isinstance(knn, KnnPolicy):
        return {"knn": None}
    fitted = "train split" + (f" without the tasks {list(held_out_tasks)}" if held_out_tasks else "")
    return {"knn": {"trained_on": fitted, "train_prompts": len(knn.router.ids), "k": knn.router.k,
                    "k_leave_one_out_utility": knn.router.loo_utility or None}}


def subject_name(config: EvalConfig, runs: Sequence[Run]) -> str:
    return next(r.name for r in runs if r.group == "subject") if config.is_checkpoint else config.policy


def decision_record(run: str, cost_lambda: float | None, episode: Episode) -> dict:
    """One line of decisions.jsonl: what was called, what came back, what it cost and scored."""
    result = episode.result
    returned = next((c.model for c in episode.calls if result and c.index == result.selected_call), None)
    return {"policy": run, "lambda": cost_lambda, "prompt_id": episode.prompt.prompt_id,
            "task": episode.prompt.task,
            "calls": [{"model": c.model, "turn": c.turn, "status": c.status.name.lower(),
                       "cost_usd": c.cost_micro_usd / 1e6} for c in episode.calls
                      if c.attempted and c.role != ROUTER_ROLE],
            # A generative router's own tokens: in cost_usd, as on the bill, but not a model call.
            "router_cost_usd": sum(c.cost_micro_usd for c in episode.calls if c.role == ROUTER_ROLE) / 1e6,
            "returned_model": returned, "strategy": result.strategy.name.lower() if result else None,
            "failed": result is None, "cost_usd": episode.cost_usd, "score": episode.score,
            "reward": None if cost_lambda is None else episode.reward}


async def play_all(env: ReplayEnvironment, runs: Sequence[Run], prompts: Sequence[Prompt],
                   pool: Sequence[str], max_turns: int, out: pathlib.Path, progress: bool,
                   label: str = "") -> list[dict]:
    """Play every run on every prompt and λ; each decision is written to ``out`` as it is made."""
    records: list[dict] = []
    total = sum(len(r.lambdas) for r in runs) * len(prompts)
    with out.open("w", encoding="utf-8") as handle, \
            tqdm(total=total, unit="episode", disable=not progress, file=sys.stderr,
                 mininterval=0.2 if sys.stderr.isatty() else 5.0) as bar:
        for run in runs:
            for cost_lambda in run.lambdas:
                name = run.name if cost_lambda is None else f"{run.name} λ={cost_lambda:g}"
                bar.set_description(f"{label}: {name}" if label else name)
                batched = getattr(run.policy, "batched", None)
                # A policy that can batch plays many episodes at once (one network forward for all
                # the decisions they ask for together); the others one by one. Records keep prompt order.
                chunk = CONCURRENT_EPISODES if batched else 1
                with batched() if batched else contextlib.nullcontext():
                    for start in range(0, len(prompts), chunk):
                        episodes = await asyncio.gather(*(
                            env.play(run.policy, prompt, pool, cost_lambda or 0.0, max_turns)
                            for prompt in prompts[start:start + chunk]))
                        for episode in episodes:
                            record = decision_record(run.name, cost_lambda, episode)
                            handle.write(json.dumps(record) + "\n")
                            records.append(record)
                        bar.update(len(episodes))
    return records


def run_evaluation(config: EvalConfig, embedder: Embedder | None = None, command: str = "",
                   plan: tuple[list[str], dict, Selection] | None = None) -> dict:
    """Run the whole evaluation, write the three files under ``config.out``, return the report.
    ``plan`` is ``plan_evaluation(config)`` when the caller already made it."""
    pool, notes, selection = plan or plan_evaluation(config)
    env = ReplayEnvironment(config.data, config.catalog)
    table = OutcomeTable.from_file(config.data, env.options)
    prompts = selection.prompts
    runs = build_runs(config, env, table, pool, prompts, embedder)
    config.out.mkdir(parents=True, exist_ok=True)
    # Decisions go to a partial file, renamed once the run is whole: a run that fails midway left
    # its decisions.jsonl beside an earlier run's report.json, which then described other decisions.
    partial = config.out / "decisions.jsonl.partial"
    try:
        records = asyncio.run(play_all(env, runs, prompts, pool, config.max_turns, partial,
                                       config.progress, config.source or ""))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    meta = {"command": command, "source": config.source, "data": str(config.data), "catalog": str(config.catalog),
            "split": config.split, "fold": config.fold, "prompts": len(prompts), "split_prompts": selection.split_prompts,
            "limit": config.limit, "prompts_beyond_limit": selection.beyond_limit,
            "allow_partial": config.allow_partial, "skipped": selection.skipped_report(),
            "pool": list(pool), "policy": config.policy,
            "subject": subject_name(config, runs), "lambdas": list(config.lambdas),
            "max_turns": config.max_turns, "seed": config.seed, **knn_notes(runs, config.held_out_tasks),
            # On the train split the kNN router finds each query among its own neighbours.
            # kNN is fitted on the train split: it has seen evaluated prompts unless they are all validation
            # prompts or of task families held out of its fit.
            "knn_sees_evaluated_prompts": config.knn and config.split != "validation" and not config.held_out_tasks,
            "cost_basis": ("recorded cost_usd" if not notes["rows_priced_from_catalog"] else
                           f"recorded cost_usd; {notes['rows_priced_from_catalog']} rows without it priced "
                           "from the catalog at estimated tokens"), **notes}
    report = build_report(meta, records, {r.name: r.group for r in runs})
    partial.replace(config.out / "decisions.jsonl")
    (config.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_frontier(report, config.out / "frontier.png")
    return report


def _lambdas(values: Sequence[str] | None) -> tuple[float, ...]:
    if not values:
        return DEFAULT_LAMBDAS
    try:
        return bounds.lambda_list(list(values))
    except ValueError as error:
        raise EvalError(str(error)) from None
