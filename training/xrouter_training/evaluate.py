"""``xrouter eval``: play a policy and every baseline through the router's own episode loop on the
prompts of one split of an outcome set, and write ``report.json`` (figures, frontier metrics,
targets), ``frontier.png`` and ``decisions.jsonl`` (one line per policy, prompt and λ, from which
every figure can be recomputed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pathlib
import shlex
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from tqdm import tqdm

from xrouter.adapters.catalog import CatalogError, load_catalog
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.common.outcomes import read_outcomes
from xrouter.common.errors import InvalidArgument
from xrouter.router.baselines import make_baseline
from xrouter.router.policy import ModelOption, Policy
from xrouter.router.policy_store import load_checkpoint

from xrouter_training.environment import Episode, Prompt, ReplayEnvironment
from xrouter_training.eval_baselines import (
    Embedder, KnnPolicy, KnnRouter, OraclePolicy, OutcomeTable, RandomPolicy)
from xrouter_training.plot import plot_frontier
from xrouter_training.report import build_report, format_table

# λ is in reward per dollar; a gpt-4-1106 call on RouterBench costs about $0.005, so λ from 0 to
# about 1000 spans "cost is irrelevant" to "one call costs as much as a correct answer is worth".
DEFAULT_LAMBDAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
BASELINES = ("cheapest", "cascade", "cascade:<cheap>,<cheap>[,<strong>]", "fixed:<model>", "random", "oracle", "knn")
LAMBDA_AWARE = ("knn", "oracle")
SPLITS = ("train", "validation", "all")


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation. ``policy`` is a baseline spec (see BASELINES) or a checkpoint directory."""

    data: pathlib.Path
    policy: str
    out: pathlib.Path
    split: str = "validation"
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    max_turns: int = 3
    catalog: pathlib.Path = DEFAULT_CATALOG
    models: tuple[str, ...] = ()  # the pool; empty: every catalog model the data recorded
    limit: int | None = None  # evaluate only the first N prompts of the split (smoke runs, tests)
    knn: bool = True
    knn_k: int | None = None  # None: chosen by leave-one-out on the train split
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise EvalError(f"--split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if not self.lambdas or any(not 0 <= lam < float("inf") for lam in self.lambdas):
            raise EvalError(f"--lambdas: give one or more finite values >= 0, got {list(self.lambdas)}")
        if self.max_turns < 2:
            raise EvalError(f"--max-turns: every policy needs >= 2 turns (call, then select), got {self.max_turns}")
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit: must be >= 1, got {self.limit}")
        if self.knn_k is not None and self.knn_k < 1:
            raise EvalError(f"--knn-k: must be >= 1, got {self.knn_k}")
        for flag, path in (("--data", self.data), ("--catalog", self.catalog)):
            if not pathlib.Path(path).is_file():
                raise EvalError(f"{flag}: no file at {path}")
        if not self.is_checkpoint and not self.policy.startswith(("fixed:", "cascade:")) and self.policy not in BASELINES:
            raise EvalError(f"--policy: {self.policy!r} is neither a checkpoint directory nor a baseline "
                            f"({', '.join(BASELINES)})")
        if self.policy == "knn" and not self.knn:
            raise EvalError("--policy knn cannot run with --no-knn")

    @property
    def is_checkpoint(self) -> bool:
        return pathlib.Path(self.policy).is_dir()


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


def _data_models(data: pathlib.Path) -> tuple[set[str], set[str], int]:
    """(models with a recorded response, models without any, rows without cost_usd)."""
    answered, silent, costless = set(), set(), 0
    try:
        for row in read_outcomes(data):
            (answered if row.response is not None else silent).add(row.model)
            costless += row.response is not None and row.cost_usd is None
    except (OSError, ValueError) as error:  # not gzip, or a line that is not an outcome row
        raise EvalError(f"--data: {error}") from None
    return answered, silent - answered, costless


def choose_pool(config: EvalConfig) -> tuple[list[str], dict]:
    """The models every episode may call, and notes on what the data and catalog did not cover."""
    try:
        catalog = load_catalog(config.catalog)
    except CatalogError as error:
        raise EvalError(f"--catalog: {error}") from None
    answered, silent, costless = _data_models(config.data)
    if not answered:
        raise EvalError(
            f"--data {config.data}: no row records a response (`response` is null on every row of "
            f"models {sorted(silent)}). Episodes replay the recorded answer text (the router selects "
            "it, policies read it, the labels are keyed by it), so this set cannot be replayed; use an "
            "outcome set with responses (routerbench, routerarena, arena_bench_v1)")
    in_catalog = [m for m in catalog if m in answered]
    if not in_catalog:
        raise EvalError(
            f"--catalog {config.catalog}: none of the data's models {sorted(answered)} is in the catalog; "
            "pass --catalog FILE listing each as a replay model (backend: replay, dataset: <name>, "
            "input_usd_per_mtok, output_usd_per_mtok, ...)")
    pool = in_catalog
    if config.models:
        unknown = [m for m in config.models if m not in in_catalog]
        if unknown:
            raise EvalError(f"--models: {unknown} are not catalog models the data recorded "
                            f"(choose from {in_catalog})")
        pool = [m for m in in_catalog if m in config.models]
    notes = {"data_models_not_in_catalog": sorted(answered - set(catalog)),
             "data_models_without_responses": sorted(silent),
             "rows_priced_from_catalog": costless}
    return pool, notes


def choose_prompts(env: ReplayEnvironment, config: EvalConfig, pool: Sequence[str]) -> tuple[list[Prompt], int]:
    """The split's prompts every pool model answered (so all policies face the same set), limited."""
    prompts = env.split(config.split)
    complete = [p for p in prompts if set(pool) <= env.answered.get(p.prompt_id, set())]
    if not complete:
        raise EvalError(f"--split {config.split}: no prompt of {config.data} has a recorded answer from "
                        f"every pool model {list(pool)}; narrow the pool with --models")
    return complete[: config.limit], len(prompts) - len(complete)


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
        train = [p for p in env.split("train") if p.prompt_id in table.scores]
        # Neighbours come from the train split only; the evaluated prompts are embedded as queries.
        router = KnnRouter(embed(train), table, pool, config.knn_k, config.lambdas)
        runs.append(Run("knn", "baseline", KnnPolicy(router, embed(list(prompts)), table), sweep))
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


def knn_notes(runs: Sequence[Run]) -> dict:
    """How the kNN baseline was built (k, and the leave-one-out utilities it was chosen by)."""
    knn = next((r.policy for r in runs if r.name == "knn"), None)
    if not isinstance(knn, KnnPolicy):
        return {"knn": None}
    return {"knn": {"trained_on": "train split", "train_prompts": len(knn.router.ids), "k": knn.router.k,
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
                       "cost_usd": c.cost_micro_usd / 1e6} for c in episode.calls if c.attempted],
            "returned_model": returned, "strategy": result.strategy.name.lower() if result else None,
            "failed": result is None, "cost_usd": episode.cost_usd, "score": episode.score,
            "reward": None if cost_lambda is None else episode.reward}


async def play_all(env: ReplayEnvironment, runs: Sequence[Run], prompts: Sequence[Prompt],
                   pool: Sequence[str], max_turns: int, out: pathlib.Path, progress: bool) -> list[dict]:
    """Play every run on every prompt and λ; each decision is written to ``out`` as it is made."""
    records: list[dict] = []
    total = sum(len(r.lambdas) for r in runs) * len(prompts)
    with out.open("w", encoding="utf-8") as handle, \
            tqdm(total=total, unit="episode", disable=not progress, file=sys.stderr,
                 mininterval=0.2 if sys.stderr.isatty() else 5.0) as bar:
        for run in runs:
            for cost_lambda in run.lambdas:
                bar.set_description(run.name if cost_lambda is None else f"{run.name} λ={cost_lambda:g}")
                for prompt in prompts:
                    episode = await env.play(run.policy, prompt, pool, cost_lambda or 0.0, max_turns)
                    record = decision_record(run.name, cost_lambda, episode)
                    handle.write(json.dumps(record) + "\n")
                    records.append(record)
                    bar.update()
    return records


def run_evaluation(config: EvalConfig, embedder: Embedder | None = None, command: str = "") -> dict:
    """Run the whole evaluation, write the three files under ``config.out``, return the report."""
    pool, notes = choose_pool(config)
    env = ReplayEnvironment(config.data, config.catalog)
    table = OutcomeTable.from_file(config.data, env.options)
    prompts, incomplete = choose_prompts(env, config, pool)
    runs = build_runs(config, env, table, pool, prompts, embedder)
    config.out.mkdir(parents=True, exist_ok=True)
    records = asyncio.run(play_all(env, runs, prompts, pool, config.max_turns,
                                   config.out / "decisions.jsonl", config.progress))
    meta = {"command": command, "data": str(config.data), "catalog": str(config.catalog),
            "split": config.split, "prompts": len(prompts), "prompts_missing_a_pool_answer": incomplete,
            "limit": config.limit, "pool": list(pool), "policy": config.policy,
            "subject": subject_name(config, runs), "lambdas": list(config.lambdas),
            "max_turns": config.max_turns, "seed": config.seed, **knn_notes(runs),
            # On the train split the kNN router finds each query among its own neighbours.
            "knn_sees_evaluated_prompts": config.knn and config.split != "validation",
            "cost_basis": ("recorded cost_usd" if not notes["rows_priced_from_catalog"] else
                           f"recorded cost_usd; {notes['rows_priced_from_catalog']} rows without it priced "
                           "from the catalog at estimated tokens"), **notes}
    report = build_report(meta, records, {r.name: r.group for r in runs})
    (config.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_frontier(report, config.out / "frontier.png")
    return report


def _lambdas(values: Sequence[str] | None) -> tuple[float, ...]:
    if not values:
        return DEFAULT_LAMBDAS
    try:
        return tuple(float(v) for item in values for v in item.split(",") if v.strip())
    except ValueError:
        raise EvalError(f"--lambdas: expected numbers (space or comma separated), got {' '.join(values)!r}") from None


def run_cli(args: argparse.Namespace) -> int:
    """``xrouter eval``: build the config from the parsed flags, run, print the table."""
    try:
        lambdas = _lambdas(args.lambdas)
        config = EvalConfig(pathlib.Path(args.data), args.policy, pathlib.Path(args.out), args.split, lambdas,
                            args.max_turns, pathlib.Path(args.catalog), tuple(filter(None, args.models.split(","))),
                            args.limit, not args.no_knn, args.knn_k, args.seed)
        # Every setting spelled out, so the line in report.json reproduces the run on its own.
        command = shlex.join([
            "xrouter", "eval", "--data", str(config.data), "--policy", config.policy, "--split", config.split,
            "--lambdas", *(f"{v:g}" for v in config.lambdas), "--max-turns", str(config.max_turns),
            "--catalog", str(config.catalog), *(["--models", ",".join(config.models)] if config.models else []),
            *(["--limit", str(config.limit)] if config.limit else []),
            *(["--knn-k", str(config.knn_k)] if config.knn and config.knn_k else []),
            *([] if config.knn else ["--no-knn"]), "--seed", str(config.seed),
            "--out", str(config.out)])
        report = run_evaluation(config, command=command)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"\nreport.json, frontier.png and decisions.jsonl in {config.out}")
    return 0
