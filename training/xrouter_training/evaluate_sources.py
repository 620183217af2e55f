"""``xrouter eval`` from the command line, on one outcome set (``--data``/``--catalog``) or on the
bundled sources (``--source NAME|all``): each source is evaluated on its own pool (its data with its
catalog; pools never mix sources) into OUT/<source>/ (report.json, frontier.png, decisions.jsonl),
and OUT/summary.json and OUT/summary.md compare the sources (APGR, CPT(50%), CPT(80%) of the subject
and every baseline). Every source is checked (pool, prompts, skipped prompts) before any is played."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
import sys
import types
from collections.abc import Mapping, Sequence

from xrouter.adapters.settings import DEFAULT_CATALOG

from xrouter_training.eval_baselines import Embedder
from xrouter_training.evaluate import EvalConfig, EvalError, _lambdas, plan_evaluation, run_evaluation
from xrouter_training.report import format_table

ALL = "all"


def bundled_sources() -> Mapping[str, object]:
    """``xrouter.common.outcomes.SOURCES`` (name → Source(name, data, catalog)); before that registry
    exists, RouterBench alone."""
    from xrouter.common import outcomes

    sources = getattr(outcomes, "SOURCES", None)
    if sources is None:
        return {"routerbench": types.SimpleNamespace(name="routerbench", data=outcomes.ROUTERBENCH,
                                                     catalog=DEFAULT_CATALOG)}
    return sources


def resolve_sources(name: str, sources: Mapping[str, object] | None = None) -> dict[str, object]:
    """The sources ``--source name`` means (``all``: every bundled one), each with its files present."""
    sources = bundled_sources() if sources is None else sources
    if name != ALL and name not in sources:
        raise EvalError(f"--source: {name!r} is not a bundled source ({', '.join([*sources, ALL])})")
    chosen = dict(sources) if name == ALL else {name: sources[name]}
    for key, source in chosen.items():
        for what in ("data", "catalog"):
            path = pathlib.Path(getattr(source, what))
            if not path.is_file():
                raise EvalError(f"--source {key}: its {what} file {path} is missing")
    return chosen


def command_line(config: EvalConfig, source: str | None = None) -> str:
    """Every setting spelled out, so the line in report.json reproduces the run on its own."""
    where = ["--source", source] if source else ["--data", str(config.data), "--catalog", str(config.catalog)]
    return shlex.join([
        "xrouter", "eval", *where, "--policy", config.policy, "--split", config.split, "--fold", str(config.fold),
        "--lambdas", *(f"{v:g}" for v in config.lambdas), "--max-turns", str(config.max_turns),
        *(["--models", ",".join(config.models)] if config.models else []),
        *(["--limit", str(config.limit)] if config.limit else []),
        *(["--knn-k", str(config.knn_k)] if config.knn and config.knn_k else []),
        *([] if config.knn else ["--no-knn"]), *(["--allow-partial"] if config.allow_partial else []),
        *(["--allow-seen"] if config.allow_seen else []),
        *(["--held-out-tasks", ",".join(config.held_out_tasks)] if config.held_out_tasks else []),
        "--seed", str(config.seed), "--out", str(config.out)])


def _figures(metrics: Mapping) -> dict:
    cpt = metrics.get("cpt") or {}

    def at(key: str) -> dict | None:
        point = cpt.get(key)
        return None if point is None else {k: point[k] for k in ("normalised_cost", "cost_usd", "share_of_strong_cost")}
    return {"group": metrics.get("group"), "apgr": metrics.get("apgr"), "cpt_50": at("50%"), "cpt_80": at("80%")}


def summarize_sources(reports: Mapping[str, Mapping], command: str = "") -> dict:
    """summary.json: per source, its prompts, skips, references and every policy's APGR/CPT(50/80%)."""
    return {"command": command, "sources": {name: {
        "data": report["data"], "catalog": report["catalog"], "pool": report["pool"],
        "prompts": report["prompts"], "skipped": report["skipped"]["count"], "subject": report["subject"],
        "scores": report.get("scores"), "strong": report["references"]["strong"],
        "weak": report["references"]["weak"], "metrics_unavailable": report["references"]["metrics_unavailable"],
        "policies": {policy: _figures(metrics) for policy, metrics in report["metrics"].items()},
        "apgr_margin": report.get("apgr_margin", {}), "subject_trained_on": report.get("subject_trained_on"),
    } for name, report in reports.items()}}


def summary_table(summary: Mapping) -> str:
    """summary.md: one Markdown table, a row per (source, policy); CPT as share of the strong model's cost."""
    def cpt(point: Mapping | None) -> str:
        return "-" if point is None else f"{point['normalised_cost']:.3f} (${point['cost_usd']:.6f})"
    lines = ["| source | policy | group | APGR | CPT(50%) c ($/query) | CPT(80%) c ($/query) |",
             "|---|---|---|---:|---:|---:|"]
    notes = []
    for source, entry in summary["sources"].items():
        if entry["metrics_unavailable"]:
            notes.append(f"- {source}: no APGR/CPT: {entry['metrics_unavailable']}")
        for policy, figures in entry["policies"].items():
            apgr = "-" if figures["apgr"] is None else f"{figures['apgr']:.3f}"
            subject = " (subject)" if policy == entry["subject"] else ""
            lines.append(f"| {source} | {policy}{subject} | {figures['group']} | {apgr} | "
                         f"{cpt(figures['cpt_50'])} | {cpt(figures['cpt_80'])} |")
        for rival, margin in entry.get("apgr_margin", {}).items():
            low, high = margin["interval"]
            notes.append(f"- {source}: APGR {entry['subject']} − {rival} = {margin['margin']:+.3f} "
                         f"({margin['confidence']:.0%} interval {low:+.3f} to {high:+.3f}; above in "
                         f"{margin['share_above']:.0%} of {margin['resamples']} paired resamples of the prompts)")
        seen = entry.get("subject_trained_on") or {}
        if seen.get("by_split") or seen.get("in_memory"):
            notes.append(f"- {source}: {entry['subject']} saw evaluated prompts in training: {seen['by_split']} of "
                         f"{seen['evaluated']} in its training split, {seen['in_memory']} with their text in its memory")
    head = [f"- {name}: {e['prompts']} prompts ({e['skipped']} skipped), strong {e['strong']['model']}, "
            f"weak {e['weak']['model']}, scores {e['scores']}" for name, e in summary["sources"].items()]
    return "\n".join([*head, "", *lines, *([""] + notes if notes else [])]) + "\n"


def run_sources(config: EvalConfig, names: Sequence[str] | str, embedder: Embedder | None = None,
                sources: Mapping[str, object] | None = None, command: str = "") -> tuple[dict, dict[str, dict]]:
    """Evaluate each source on its own data and catalog into ``config.out``/<source>/, then write
    summary.json and summary.md there; ``config.data``/``config.catalog`` are ignored. Returns the
    summary and each source's report."""
    chosen = resolve_sources(names, sources) if isinstance(names, str) else \
        {n: s for name in names for n, s in resolve_sources(name, sources).items()}
    if config.models and len(chosen) > 1:
        raise EvalError("--models names one pool; with several sources (each has its own models) leave it out")
    if config.held_out_tasks and len(chosen) > 1:
        raise EvalError("--held-out-tasks names task families of one source; with several sources leave it out")
    configs = {name: dataclasses.replace(config, data=pathlib.Path(source.data), catalog=pathlib.Path(source.catalog),
                                         out=config.out / name, source=name)
               for name, source in chosen.items()}
    plans = {}
    for name, one in configs.items():  # every source checked before any episode is played
        try:
            plans[name] = plan_evaluation(one)
        except EvalError as error:
            raise EvalError(f"--source {name}: {error}") from None
    reports = {}
    for name, one in configs.items():
        try:
            reports[name] = run_evaluation(one, embedder, command, plans[name])
        except EvalError as error:
            raise EvalError(f"--source {name}: {error}") from None
    summary = summarize_sources(reports, command)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (config.out / "summary.md").write_text(summary_table(summary), encoding="utf-8")
    return summary, reports


def run_cli(args: argparse.Namespace) -> int:
    """``xrouter eval``: build the config from the parsed flags, run, print the table(s)."""
    try:
        lambdas = _lambdas(args.lambdas)
        if bool(args.source) == bool(args.data):
            raise EvalError("give either --data FILE (with --catalog) or --source NAME|all")
        if args.source and args.catalog:
            raise EvalError("--catalog: each --source brings its own catalog; leave --catalog out")
        sources = resolve_sources(args.source) if args.source else None
        first = next(iter(sources.values())) if sources else None
        config = EvalConfig(pathlib.Path(first.data if first else args.data), args.policy, pathlib.Path(args.out),
                            args.split, lambdas, args.max_turns,
                            pathlib.Path(first.catalog if first else args.catalog or DEFAULT_CATALOG),
                            tuple(filter(None, args.models.split(","))), args.limit, not args.no_knn, args.knn_k,
                            args.seed, allow_partial=args.allow_partial, fold=args.fold,
                            allow_seen=args.allow_seen,
                            held_out_tasks=tuple(t.strip() for t in args.held_out_tasks.split(","))
                            if args.held_out_tasks else ())
        if any(not task for task in config.held_out_tasks):
            raise EvalError(f"--held-out-tasks: an empty task name in {args.held_out_tasks!r}")
        if sources:
            summary, reports = run_sources(config, args.source, command=command_line(config, args.source))
        else:
            if (config.out / "summary.json").exists():  # its report.json would sit beside that summary
                raise EvalError(f"--out: {config.out} holds an evaluation of several sources (summary.json); "
                                "write this one elsewhere")
            report = run_evaluation(config, command=command_line(config))
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if sources:
        for name, one in reports.items():
            print(f"\n== {name}\n{format_table(one)}")
        print("\n" + summary_table(summary))
        print(f"per source: report.json, frontier.png, decisions.jsonl in {config.out}/<source>/; "
              f"summary.json and summary.md in {config.out}")
        return 0
    print(format_table(report))
    print(f"\nreport.json, frontier.png and decisions.jsonl in {config.out}")
    return 0
