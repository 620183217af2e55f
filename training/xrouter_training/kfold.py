"""``xrouter generalise --kfold``: every prompt of every source held out once.

A source's validation split is one fifth of its prompts (``outcomes.split_of``). On that fifth alone
the comparison with kNN is noisy where a source is small: Arena-Hard's 63 validation prompts put a
90% interval of about ±0.05 around an APGR margin (``margin.py``). Cross-validation trains one policy
per fold, fold f holding out the f-th fifth of every source (the training config's
``validation_fold``), evaluates it on that fifth beside kNN fitted on the other four fifths, and pools
the decisions of the five folds: every prompt is evaluated once, by a policy and a kNN that never saw
it, and the margin is measured on five times the prompts. Each source's pooled figures (APGR, CPT,
the margin's interval) are written like an ordinary evaluation's, under OUT/kfold/<source>/.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

from xrouter.common.outcomes import FOLDS, SOURCES

from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.plot import plot_frontier
from xrouter_training.report import build_report

SUBJECT = "learned"  # each fold's checkpoint has its own name; pooled, they are one policy


def cross_validate(config: TrainConfig, out: pathlib.Path, lambdas: tuple[float, ...],
                   train: Callable[[TrainConfig, pathlib.Path], pathlib.Path],
                   evaluate: Callable[..., dict], reuse: dict[int, pathlib.Path] | None = None,
                   folds: Sequence[int] = tuple(range(FOLDS))) -> dict[str, dict]:
    """Train (or reuse) and evaluate every fold, then pool each source's decisions. ``train`` and
    ``evaluate`` are generalise's (an ordinary training run; an ordinary ``xrouter eval --source``);
    ``reuse``: fold → a checkpoint already trained with this config and that fold (checked)."""
    reuse = reuse or {}
    for fold in folds:
        fold_config = dataclasses.replace(config, validation_fold=fold)
        checkpoint = reuse[fold] if fold in reuse else train(fold_config, out / f"fold-{fold}")
        if fold in reuse:
            check_trained_with(checkpoint, fold_config)
        print(f"\n== fold {fold}: evaluating {checkpoint} on the held-out fifth of every source", flush=True)
        evaluate(checkpoint, out / f"fold-{fold}" / "eval", list(config.sources), lambdas, fold=fold)
    return {source: pool_source(out, source, folds, lambdas) for source in config.sources}


def check_trained_with(checkpoint: pathlib.Path, config: TrainConfig) -> None:
    """Refuse a reused checkpoint whose manifest records another config (checkpoints written before
    folds existed were trained on fold 0)."""
    from xrouter.router.compact.checkpoint import read_manifest

    differ = config.differs_from(read_manifest(checkpoint).get("config") or {})
    if differ:
        raise ConfigError(f"--fold0 {checkpoint}: trained with another config (differs in {differ})")


def pool_source(out: pathlib.Path, source: str, folds: Sequence[int], lambdas: tuple[float, ...]) -> dict:
    """One report of ``source`` from the decisions of every fold (the subject renamed ``learned``)."""
    records: list[dict] = []
    groups: dict[str, str] = {}
    per_fold = {}
    for fold in folds:
        folder = out / f"fold-{fold}" / "eval" / source
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        subject = report["subject"]
        groups.update({(SUBJECT if name == subject else name): m["group"] for name, m in report["metrics"].items()})
        for line in (folder / "decisions.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["policy"] == subject:
                record["policy"] = SUBJECT
            records.append(record)
        per_fold[fold] = {"prompts": report["prompts"], "skipped": report["skipped"]["count"],
                          "apgr": {name: m.get("apgr") for name, m in report["metrics"].items()
                                   if name in (subject, "knn", "cascade")}}
    prompts = collections.Counter(r["prompt_id"] for r in records if r["policy"] == SUBJECT and r["lambda"] == lambdas[0])
    if any(count > 1 for count in prompts.values()):
        raise ValueError(f"{source}: a prompt was evaluated in two folds; the folds must be disjoint")
    meta = {"source": source, "data": str(SOURCES[source].data), "split": f"{len(folds)}-fold cross-validated",
            "folds": list(folds), "prompts": len(prompts),
            "skipped": {"count": sum(entry["skipped"] for entry in per_fold.values())},
            "subject": SUBJECT, "lambdas": list(lambdas), "per_fold": per_fold}
    report = build_report(meta, records, groups)
    folder = out / "kfold" / source
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot_frontier(report, folder / "frontier.png")
    return report


def rows(reports: dict[str, dict]) -> dict[str, dict]:
    """source → the pooled figures a table shows: prompts, APGR per policy, the margin over kNN."""
    result = {}
    for source, report in reports.items():
        apgr = {name: report["metrics"][name].get("apgr") for name in (SUBJECT, "knn", "cascade", "random", "oracle")
                if name in report["metrics"]}
        result[source] = {"prompts": report["prompts"], "apgr": apgr,
                          "margin_over_knn": report.get("apgr_margin", {}).get("knn"),
                          "per_fold": report["per_fold"]}
    return result
