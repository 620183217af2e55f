"""From decision records (the lines of decisions.jsonl) to report.json: per-run figures (overall and
per task), the frontier metrics of every policy (single models included) against the cheapest and
the strongest single model (RouteLLM's APGR and CPT(50%/80%/95%), overall and per task), and the
issue's targets for the policy under test. Scores may be graded (0..1): "accuracy" is the mean
recorded score throughout."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence

from xrouter_training.margin import apgr_margins
from xrouter_training.metrics import CurvePoint, GapMetrics, Reference, best_within, cheapest_reaching

# The targets, as shares of the strongest single model's cost per query.
BEAT_STRONG_COST_SHARE = 0.30
NEAR_STRONG_ACCURACY_SHARE, NEAR_STRONG_COST_SHARE = 0.95, 0.10


def summarize(records: Sequence[Mapping]) -> dict:
    """Accuracy (mean score), mean cost per query (a generative router's own tokens included, and
    shown apart), attempted model calls per query, failed episodes."""
    n = len(records)
    summary = {"prompts": n, "accuracy": sum(r["score"] for r in records) / n,
               "cost_usd": sum(r["cost_usd"] for r in records) / n,
               "calls_per_query": sum(len(r["calls"]) for r in records) / n,
               "failed": sum(r["failed"] for r in records)}
    router = sum(r.get("router_cost_usd", 0.0) for r in records) / n
    if router:  # a generative router's own tokens, already inside cost_usd
        summary["router_cost_usd"] = router
    if records[0]["lambda"] is not None:
        summary["reward"] = sum(r["reward"] for r in records) / n
    return summary


def run_summaries(records: Iterable[Mapping], groups: Mapping[str, str]) -> list[dict]:
    """One entry per (policy, λ), in the order first played, with a per-task breakdown."""
    by_run: dict[tuple[str, float | None], list[Mapping]] = collections.defaultdict(list)
    for record in records:
        by_run[(record["policy"], record["lambda"])].append(record)
    runs = []
    for (name, cost_lambda), rows in by_run.items():
        tasks: dict[str, list[Mapping]] = collections.defaultdict(list)
        for row in rows:
            tasks[row["task"]].append(row)
        runs.append({"policy": name, "group": groups[name], "lambda": cost_lambda, **summarize(rows),
                     "per_task": {task: summarize(part) for task, part in sorted(tasks.items())}})
    return runs


def _point(point: CurvePoint | None, strong: Reference) -> dict | None:
    if point is None:
        return None
    return {"lambda": point.cost_lambda, "cost_usd": point.cost_usd, "accuracy": point.accuracy,
            "share_of_strong_cost": point.cost_usd / strong.cost_usd if strong.cost_usd else None}


def curve_metrics(points: Sequence[CurvePoint], strong: Reference, gap: GapMetrics | None) -> dict:
    """RouteLLM's APGR/CPT (when a gap exists) and where the router matches the strongest model."""
    metrics = gap.summary(points) if gap else {}
    metrics["matches_strong_accuracy"] = _point(cheapest_reaching(points, strong.accuracy), strong)
    metrics["beats_strong_accuracy"] = _point(cheapest_reaching(points, strong.accuracy, strictly=True), strong)
    metrics["reaches_95pct_strong_accuracy"] = _point(
        cheapest_reaching(points, NEAR_STRONG_ACCURACY_SHARE * strong.accuracy), strong)
    return metrics


def above_at_every_cost(subject: Sequence[CurvePoint], others: Mapping[str, Sequence[CurvePoint]]) -> dict:
    """At each cost level any of the curves reaches (from the subject's cheapest point up), is the
    subject's best accuracy within that cost strictly above every other curve's?"""
    floor = min(p.cost_usd for p in subject)
    levels = sorted({p.cost_usd for curve in (subject, *others.values()) for p in curve if p.cost_usd >= floor})
    rows = []
    for level in levels:
        own = best_within(subject, level)
        rivals = {name: best_within(curve, level) for name, curve in others.items()}
        rival_accuracy = {name: p.accuracy for name, p in rivals.items() if p is not None}
        rows.append({"cost_usd": level, "accuracy": own.accuracy, "rivals": rival_accuracy,
                     "above": all(own.accuracy > a for a in rival_accuracy.values())})
    if not others:
        return {"passed": None, "levels": [], "note": "no kNN or cascade run to compare with"}
    return {"passed": all(r["above"] for r in rows), "levels": rows,
            "note": "below the subject's cheapest point it has no accuracy to compare"}


def targets(subject: Sequence[CurvePoint], strong: Reference, others: Mapping[str, Sequence[CurvePoint]]) -> dict:
    """The issue's targets for the policy under test (True/False with the witnessing point)."""
    beat = cheapest_reaching(subject, strong.accuracy, strictly=True)
    near = cheapest_reaching(subject, NEAR_STRONG_ACCURACY_SHARE * strong.accuracy)
    return {
        "beat_strong_accuracy_at_30pct_cost": {
            "passed": beat is not None and beat.cost_usd <= BEAT_STRONG_COST_SHARE * strong.cost_usd,
            "cheapest_point": _point(beat, strong)},
        "reach_95pct_strong_accuracy_at_10pct_cost": {
            "passed": near is not None and near.cost_usd <= NEAR_STRONG_COST_SHARE * strong.cost_usd,
            "cheapest_point": _point(near, strong)},
        "above_knn_and_cascade": above_at_every_cost(subject, others),
    }


def references(singles: Sequence[tuple[str, float, float]]) -> tuple[Reference, Reference]:
    """(strong, weak) of (model, accuracy, cost) triples: the most accurate (ties: the cheaper) and
    the cheapest (ties: the more accurate) single model."""
    strong = max(singles, key=lambda r: (r[1], -r[2]))
    weak = min(singles, key=lambda r: (r[2], -r[1]))
    return Reference(*strong), Reference(*weak)


def gap_between(weak: Reference, strong: Reference) -> tuple[GapMetrics | None, str | None]:
    """RouteLLM's metrics between the two, or None and why there is no gap to recover."""
    try:
        return GapMetrics(weak, strong), None
    except ValueError as error:
        return None, str(error)


def per_task_metrics(runs: Sequence[Mapping]) -> dict:
    """Per task: its own strong and weak single models, and every policy's points (accuracy and cost
    per λ), APGR and CPT(50%)/CPT(80%) against them."""
    tasks = sorted({task for run in runs for task in run["per_task"]})
    result = {}
    for task in tasks:
        rows = [(run, run["per_task"][task]) for run in runs if task in run["per_task"]]
        singles = [(run["policy"].removeprefix("fixed:"), part["accuracy"], part["cost_usd"])
                   for run, part in rows if run["group"] == "single"]
        entry: dict = {"prompts": rows[0][1]["prompts"]}
        gap = None
        if singles:
            strong, weak = references(singles)
            gap, problem = gap_between(weak, strong)
            entry["references"] = {"strong": vars(strong), "weak": vars(weak), "metrics_unavailable": problem}
        policies: dict[str, dict] = {}
        for run, part in rows:
            policy = policies.setdefault(run["policy"], {"group": run["group"], "points": []})
            policy["points"].append({"lambda": run["lambda"], "accuracy": part["accuracy"],
                                     "cost_usd": part["cost_usd"]})
        for policy in policies.values():
            curve = [CurvePoint(p["cost_usd"], p["accuracy"], p["lambda"]) for p in policy["points"]]
            policy.update(gap.summary(curve, (0.5, 0.8)) if gap else {"apgr": None, "cpt": None})
        entry["policies"] = policies
        result[task] = entry
    return result


def build_report(meta: Mapping, records: Sequence[Mapping], groups: Mapping[str, str]) -> dict:
    """report.json: the run's metadata, every run's figures, references, metrics (overall and per
    task) and targets."""
    runs = run_summaries(records, groups)
    strong, weak = references([(r["policy"].removeprefix("fixed:"), r["accuracy"], r["cost_usd"])
                               for r in runs if r["group"] == "single"])
    gap, gap_problem = gap_between(weak, strong)
    curves: dict[str, list[CurvePoint]] = collections.defaultdict(list)
    for run in runs:
        curves[run["policy"]].append(CurvePoint(run["cost_usd"], run["accuracy"], run["lambda"]))
    subject = meta["subject"]
    rivals = {name: curves[name] for name in ("knn", "cascade") if name in curves and name != subject}
    return {
        **meta,
        "references": {"strong": vars(strong), "weak": vars(weak),
                       "metrics_unavailable": gap_problem,
                       "cost_axis": "normalised cost c = (cost - weak cost) / (strong cost - weak cost)",
                       "cpt": "CPT(x%): the least cost at which the policy recovers x% of the accuracy gap "
                              "between the weak and the strong model (RouteLLM), as normalised cost, USD "
                              "per query and share of the strong model's cost"},
        "metrics": {name: {"group": groups[name], **curve_metrics(points, strong, gap)}
                    for name, points in curves.items()},
        "targets": targets(curves[subject], strong, rivals),
        # How far the subject's APGR margin over each rival can be trusted on this many prompts.
        "apgr_margin": (apgr_margins(records, subject, list(rivals), weak.model, strong.model)
                        if gap is not None and rivals else {}),
        "per_task": per_task_metrics(runs),
        "runs": runs,
    }


def format_table(report: Mapping) -> str:
    """The runs as a plain-text table, then the subject's metrics and targets."""
    skipped = report.get("skipped", {}).get("count", 0)
    lines = [f"{report['prompts']} prompts of {report['data']} ({report['split']} split"
             + (f"; {skipped} skipped, listed in report.json" if skipped else "") + "); "
             f"strongest single model {report['references']['strong']['model']}, "
             f"cheapest {report['references']['weak']['model']}",
             f"{'policy':<44} {'λ':>6} {'accuracy':>9} {'$/query':>10} {'calls':>6} {'failed':>6}"]
    for run in report["runs"]:
        cost_lambda = "" if run["lambda"] is None else f"{run['lambda']:g}"
        lines.append(f"{run['policy']:<44} {cost_lambda:>6} {run['accuracy']:>9.4f} {run['cost_usd']:>10.6f} "
                     f"{run['calls_per_query']:>6.2f} {run['failed']:>6}")
    lines.append("")
    if report["references"]["metrics_unavailable"]:
        lines.append(f"no APGR/CPT: {report['references']['metrics_unavailable']}")
    for name, metrics in report["metrics"].items():
        cpt = metrics.get("cpt", {})
        shares = " ".join(f"CPT({k})=" + ("-" if v is None else f"{v['share_of_strong_cost']:.1%}")
                          for k, v in cpt.items())
        match = metrics["matches_strong_accuracy"]
        matched = ("never" if match is None else "at no cost" if match["share_of_strong_cost"] is None
                   else f"{match['share_of_strong_cost']:.1%} of its cost")
        apgr = f"APGR={metrics['apgr']:.3f} " if "apgr" in metrics else ""
        lines.append(f"{name:<44} {apgr}{shares} matches strongest at {matched}")
    lines.append("")
    for name, target in report["targets"].items():
        verdict = {True: "PASSED", False: "missed", None: "not measured"}[target["passed"]]
        lines.append(f"target {name}: {verdict}")
    for rival, margin in report.get("apgr_margin", {}).items():
        low, high = margin["interval"]
        lines.append(f"APGR margin over {rival}: {margin['margin']:+.3f}, {margin['confidence']:.0%} interval "
                     f"{low:+.3f} to {high:+.3f} ({margin['resamples']} paired resamples of {margin['prompts']} prompts)")
    seen = report.get("subject_trained_on") or {}
    if seen.get("by_split") or seen.get("in_memory"):
        lines.append(f"the subject saw evaluated prompts in training: {seen['by_split']} of {seen['evaluated']} are in "
                     f"its training split, {seen['in_memory']} have their text in its outcome memory")
    return "\n".join(lines)
