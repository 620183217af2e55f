"""frontier.png: cost per query (log scale) against accuracy for the policy under test (its λ
sweep), the kNN and oracle sweeps, every single model, random, cheapest and the cascade."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

CURVE_STYLE = {"knn": ("tab:blue", "s"), "oracle": ("tab:gray", "^")}
POINT_STYLE = {"random": ("tab:purple", "X"), "cheapest": ("tab:brown", "v"), "cascade": ("tab:green", "D")}


def plot_frontier(report: Mapping, path: pathlib.Path) -> None:
    """Draw the cost-accuracy frontier of ``report`` (see report.build_report) into ``path``."""
    runs: dict[str, list[Mapping]] = collections.defaultdict(list)
    for run in report["runs"]:
        runs[run["policy"]].append(run)
    strong = report["references"]["strong"]
    figure = Figure(figsize=(10, 6.5))
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.subplots()
    for name, entries in runs.items():
        if entries[0]["group"] == "single":
            label = name.removeprefix("fixed:").split("/")[-1]
            axes.scatter([entries[0]["cost_usd"]], [entries[0]["accuracy"]], color="black", s=18, zorder=3)
            axes.annotate(label, (entries[0]["cost_usd"], entries[0]["accuracy"]), fontsize=7,
                          xytext=(4, -3), textcoords="offset points")
    for name, entries in runs.items():
        group = entries[0]["group"]
        if group == "single":
            continue
        ordered = sorted(entries, key=lambda r: r["cost_usd"])
        costs, accuracy = [r["cost_usd"] for r in ordered], [r["accuracy"] for r in ordered]
        subject = name == report["subject"]
        if len(ordered) == 1 and name in POINT_STYLE and not subject:
            color, marker = POINT_STYLE[name]
            axes.scatter(costs, accuracy, color=color, marker=marker, s=60, zorder=4, label=name)
            continue
        color, marker = ("tab:red", "o") if subject else CURVE_STYLE.get(name, ("tab:orange", "o"))
        axes.plot(costs, accuracy, color=color, marker=marker, linewidth=2.2 if subject else 1.3,
                  zorder=5 if subject else 4, label=f"{name} (λ sweep)" if ordered[0]["lambda"] is not None else name)
        if subject or name == "knn":
            for r in ordered:
                if r["lambda"] is not None:
                    axes.annotate(f"λ={r['lambda']:g}", (r["cost_usd"], r["accuracy"]), fontsize=6,
                                  color=color, xytext=(3, 4), textcoords="offset points")
    axes.axhline(strong["accuracy"], color="tab:red", linestyle=":", linewidth=0.8,
                 label=f"{strong['model']} accuracy")
    for share in (0.1, 0.3):
        axes.axvline(share * strong["cost_usd"], color="gray", linestyle="--", linewidth=0.7)
        axes.annotate(f"{share:.0%} of {strong['model']} cost", (share * strong["cost_usd"], axes.get_ylim()[0]),
                      fontsize=7, rotation=90, color="gray", xytext=(2, 4), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_xlabel("mean cost per query (USD, log scale)")
    axes.set_ylabel("accuracy (mean recorded score)")
    skipped = report.get("skipped", {}).get("count", 0)
    axes.set_title(f"Cost-accuracy frontier: {report['subject']} on {pathlib.Path(report['data']).name}, "
                   f"{report['split']} split ({report['prompts']} prompts"
                   + (f", {skipped} skipped" if skipped else "") + ")", fontsize=10)
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=130)
