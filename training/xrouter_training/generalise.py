"""``xrouter generalise``: does the learned router carry past what it was trained on?

- Leave one source out (``--loso``): for each bundled source S, train on the others and evaluate on
  S's validation split beside kNN (fitted on S's own train split: it has seen S), the cascade,
  random and the oracle.
- Leave one task family out (``--lotf SOURCE/TASK,…``): for each, train without any prompt of that
  family, then evaluate on every prompt of it (none was seen) beside kNN fitted on the source's
  train split without the family too, the cascade, random and the oracle: how the router does on a
  kind of request neither has seen (``xrouter eval --held-out-tasks``).
- Leave one model out (``--lomo MODEL``): train without MODEL in any pool, then evaluate its source
  with MODEL added at serve time from its catalog entry alone, and with the pool that lacks it (the
  policy that never sees it): MODEL's share of calls and both frontiers.
- Ablations (``--ablate NAME,…``): the same training with one part switched off (the query
  encoder, the model descriptors, parallel calls, …), evaluated on every source.
- Cross-validation (``--kfold``): five trainings, each holding out another fifth of every source;
  every prompt evaluated once by a policy that never saw it, the folds pooled (``kfold.py``).

Every training is the ordinary ``xrouter train`` with a changed config; every evaluation is the
ordinary ``xrouter eval --source``. Writes OUT/generalisation.json and OUT/generalisation.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence

from xrouter.common.outcomes import SOURCES

from xrouter_training import kfold
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.evaluate import EvalConfig, EvalError
from xrouter_training.evaluate_sources import run_sources

# Switches an ablation turns off, and what the line in the table is called.
ABLATIONS = {
    "query": ({"use_query": False, "use_memory": False}, "without the query encoder (catalog, λ and episode features only)"),
    "memory": ({"use_memory": False}, "without the outcome memory (learned weights only)"),
    "descriptors": ({"use_descriptors": False, "id_dropout": 0.0}, "without model descriptors (ids only)"),
    "parallel": ({"parallel_calls": False}, "one call per turn (no parallel second opinion)"),
    "checks": ({"answer_checks": False}, "without answer checks"),
    "grpo": ({"steps": 1}, "warm start only (one GRPO step)"),
}
BASELINES = ("knn", "cascade", "random", "oracle")


def train(config: TrainConfig, out: pathlib.Path) -> pathlib.Path:
    """One ordinary training run; returns its checkpoint directory. A checkpoint already in ``out``
    that was trained with exactly this config is reused (a rerun resumes where it stopped)."""
    from xrouter.common.errors import InvalidArgument
    from xrouter.router.compact.checkpoint import read_manifest
    from xrouter_training.train import Trainer  # torch: imported only when training

    try:
        if not config.differs_from(read_manifest(out / "checkpoint")["config"]):
            print(f"\n== reusing {out / 'checkpoint'} (trained with this config)", flush=True)
            return out / "checkpoint"
    except InvalidArgument:
        pass

    print(f"\n== training {out.name}: sources {list(config.sources)}"
          + (f", without {list(config.exclude_models)}" if config.exclude_models else ""), flush=True)
    return asyncio.run(Trainer(config, out).run())


def evaluate(checkpoint: pathlib.Path, out: pathlib.Path, sources: Sequence[str], lambdas: tuple[float, ...],
             models: tuple[str, ...] = (), fold: int = 0, held_out_tasks: tuple[str, ...] = ()) -> dict:
    config = EvalConfig(data=SOURCES[sources[0]].data, policy=str(checkpoint), out=out, lambdas=lambdas,
                        catalog=SOURCES[sources[0]].catalog, models=models, allow_partial=True, fold=fold,
                        split="all" if held_out_tasks else "validation", held_out_tasks=held_out_tasks)
    summary, _ = run_sources(config, list(sources))
    return summary


def apgr_rows(summary: dict, subject_label: str) -> dict[str, dict[str, float | None]]:
    """source → {subject_label: APGR, knn: …, cascade: …, random: …, oracle: …}."""
    rows = {}
    for source, entry in summary["sources"].items():
        policies = entry["policies"]
        row = {subject_label: policies[entry["subject"]]["apgr"]}
        row.update({name: policies[name]["apgr"] for name in BASELINES if name in policies})
        rows[source] = row
    return rows


def leave_one_source_out(config: TrainConfig, out: pathlib.Path, lambdas: tuple[float, ...]) -> dict:
    results = {}
    for held_out in config.sources:
        others = tuple(s for s in config.sources if s != held_out)
        checkpoint = train(dataclasses.replace(config, sources=others), out / f"without-{held_out}")
        summary = evaluate(checkpoint, out / f"without-{held_out}" / "eval", [held_out], lambdas)
        results[held_out] = apgr_rows(summary, "learned, never saw this source")[held_out]
    return results


def leave_one_task_out(config: TrainConfig, out: pathlib.Path, families: Sequence[str],
                       lambdas: tuple[float, ...]) -> dict:
    results = {}
    for family in families:
        name, _, task = family.partition("/")
        run = out / f"without-task-{name}-{task}".replace(" ", "_")
        checkpoint = train(dataclasses.replace(config, exclude_tasks=(family,)), run)
        summary = evaluate(checkpoint, run / "eval", [name], lambdas, held_out_tasks=(task,))
        row = apgr_rows(summary, "learned, never saw this family")[name]
        entry = summary["sources"][name]
        results[family] = {**row, "prompts": entry["prompts"], "margin_over_knn": entry["apgr_margin"].get("knn")}
    return results


def check_families(config: TrainConfig, families: Sequence[str]) -> None:
    """Each --lotf family is <source>/<task> of a configured source (checked before any training)."""
    from xrouter.common.outcomes import tasks_of

    for family in families:
        name, _, task = family.partition("/")
        if name not in config.sources or not task:
            raise ConfigError(f"--lotf: {family!r} is not <source>/<task> with a source of {list(config.sources)}")
        tasks = tasks_of(name)
        if task not in tasks:
            raise ConfigError(f"--lotf: {name} has no task {task!r}; its tasks: {sorted(tasks)}")


def calls_share(decisions: pathlib.Path, subject: str, model: str) -> float:
    """The share of the subject's model calls that went to ``model``."""
    total = hits = 0
    for line in decisions.read_text().splitlines():
        record = json.loads(line)
        if record["policy"] == subject:
            total += len(record["calls"])
            hits += sum(call["model"] == model for call in record["calls"])
    return hits / total if total else 0.0


def home_source(config: TrainConfig, model: str) -> str:
    """The source whose catalog holds ``model`` (checked before any training: --lomo runs last)."""
    from xrouter.adapters.catalog import load_catalog

    home = next((name for name in config.sources if model in load_catalog(SOURCES[name].catalog)), None)
    if home is None:
        raise ConfigError(f"--lomo: {model!r} is in no catalog of the sources {list(config.sources)}")
    return home


def leave_one_model_out(config: TrainConfig, out: pathlib.Path, model: str, lambdas: tuple[float, ...]) -> dict:
    from xrouter.adapters.catalog import load_catalog

    home = home_source(config, model)
    checkpoint = train(dataclasses.replace(config, exclude_models=(model,)), out / f"without-{model.replace('/', '_')}")
    pool = [m for m in load_catalog(SOURCES[home].catalog) if m != model]
    added = evaluate(checkpoint, out / "lomo-added", [home], lambdas)
    without = evaluate(checkpoint, out / "lomo-absent", [home], lambdas, tuple(pool))
    subject = added["sources"][home]["subject"]
    return {"model": model, "source": home,
            "share_of_calls_when_added": calls_share(out / "lomo-added" / home / "decisions.jsonl", subject, model),
            "apgr_added": added["sources"][home]["policies"][subject]["apgr"],
            "apgr_absent": without["sources"][home]["policies"][subject]["apgr"],
            "knn_apgr_added": added["sources"][home]["policies"].get("knn", {}).get("apgr")}


def ablate(config: TrainConfig, out: pathlib.Path, names: Sequence[str], lambdas: tuple[float, ...]) -> dict:
    results = {}
    for name in ["full", *names]:
        change, label = ({}, "everything on") if name == "full" else ABLATIONS[name]
        checkpoint = train(dataclasses.replace(config, **change), out / f"ablate-{name}")
        summary = evaluate(checkpoint, out / f"ablate-{name}" / "eval", list(config.sources), lambdas)
        rows = apgr_rows(summary, "learned")
        results[name] = {"label": label, "apgr": {source: row["learned"] for source, row in rows.items()}}
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _spread(margin: dict | None) -> str:
    """A paired-bootstrap APGR margin (margin.py) as "+0.012 (-0.010 to +0.034)"."""
    if margin is None:
        return "-"
    low, high = margin["interval"]
    return f"{margin['margin']:+.3f} ({low:+.3f} to {high:+.3f})"


def markdown(report: dict) -> str:
    lines = []
    if "leave_one_source_out" in report:
        lines += ["## Leave one source out (APGR on the held-out source's validation split)", "",
                  "| source | learned (never saw it) | kNN (fitted on it) | cascade | random | oracle |", "|---|---:|---:|---:|---:|---:|"]
        for source, row in report["leave_one_source_out"].items():
            values = [row.get("learned, never saw this source"), *(row.get(b) for b in BASELINES)]
            lines.append(f"| {source} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    if "leave_one_task_family_out" in report:
        lines += ["", "## Leave one task family out (APGR on every prompt of the family; kNN fitted without it too)",
                  "",
                  "| family (prompts) | learned (never saw it) | kNN (never saw it) | cascade | random | oracle "
                  "| learned − kNN (90% interval) |", "|---|---:|---:|---:|---:|---:|---|"]
        for family, row in report["leave_one_task_family_out"].items():
            values = [row.get("learned, never saw this family"), *(row.get(b) for b in BASELINES)]
            lines.append(f"| {family} ({row['prompts']}) | " + " | ".join(_fmt(v) for v in values)
                         + f" | {_spread(row.get('margin_over_knn'))} |")
    if "leave_one_model_out" in report:
        r = report["leave_one_model_out"]
        lines += ["", f"## Leave one model out: {r['model']} ({r['source']})", "",
                  f"- share of the policy's calls to it when added at serve time: {r['share_of_calls_when_added']:.3f}",
                  f"- APGR with it added: {_fmt(r['apgr_added'])}; without it in the pool: {_fmt(r['apgr_absent'])}"]
    if "cross_validation" in report:
        lines += ["", "## Cross-validation (APGR on every prompt, each held out in one of the folds)", "",
                  "| source | prompts | learned | kNN | cascade | random | oracle | learned − kNN (90% interval) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for source, row in report["cross_validation"].items():
            values = [row["apgr"].get(name) for name in (kfold.SUBJECT, *BASELINES)]
            lines.append(f"| {source} | {row['prompts']} | " + " | ".join(_fmt(v) for v in values)
                         + f" | {_spread(row['margin_over_knn'])} |")
    if "ablations" in report:
        sources = sorted({s for r in report["ablations"].values() for s in r["apgr"]})
        lines += ["", "## Ablations (APGR per source, validation split)", "",
                  "| variant | " + " | ".join(sources) + " |", "|---|" + "---:|" * len(sources)]
        for name, r in report["ablations"].items():
            lines.append(f"| {r['label']} | " + " | ".join(
                "-" if r["apgr"].get(s) is None else f"{r['apgr'][s]:.3f}" for s in sources) + " |")
    return "\n".join(lines) + "\n"


def run_cli(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    try:
        config = TrainConfig.from_file(args.config)
        if not config.sources:
            raise ConfigError(f"{args.config}: generalise needs a config with sources: [...]")
        unknown = [n for n in filter(None, args.ablate.split(",")) if n not in ABLATIONS]
        if unknown:
            raise ConfigError(f"--ablate: {unknown} unknown; choose from {sorted(ABLATIONS)}")
        families = [f.strip() for f in args.lotf.split(",")] if args.lotf else []
        if not (args.loso or args.lomo or args.ablate or args.kfold or families):
            raise ConfigError("nothing to do: give --loso, --lotf SOURCE/TASK,..., --lomo MODEL, --ablate NAME,... "
                              "and/or --kfold")
        check_families(config, families)
        if args.fold0 and not args.kfold:
            raise ConfigError("--fold0: only with --kfold")
        if args.lomo:
            home_source(config, args.lomo)  # refused after every other run's training, before
        lambdas = tuple(config.eval_lambdas)
        report: dict = {"config": str(args.config), "lambdas": list(lambdas)}
        if args.loso:
            report["leave_one_source_out"] = leave_one_source_out(config, out, lambdas)
        if families:
            report["leave_one_task_family_out"] = leave_one_task_out(config, out, families, lambdas)
        if args.lomo:
            report["leave_one_model_out"] = leave_one_model_out(config, out, args.lomo, lambdas)
        if args.ablate:
            report["ablations"] = ablate(config, out, list(filter(None, args.ablate.split(","))), lambdas)
        if args.kfold:
            reuse = {0: pathlib.Path(args.fold0)} if args.fold0 else {}
            pooled = kfold.cross_validate(config, out, lambdas, train, evaluate, reuse)
            report["cross_validation"] = kfold.rows(pooled)
    except (ConfigError, EvalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    (out / "generalisation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "generalisation.md").write_text(markdown(report))
    print(markdown(report))
    return 0
