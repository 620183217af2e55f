"""metrics.png: a training run's curves per step (reward, accuracy, cost, tool-call validity,
entropy, kept groups), drawn from its metrics.jsonl — the LM's GRPO log and the compact one alike."""

from __future__ import annotations

import json
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANELS = (("reward", "mean reward"), ("accuracy", "accuracy"), ("cost_usd", "cost per episode ($)"),
          ("format_error_rate", "tool-call validity"), ("entropy", "entropy (nats / token)"),
          ("kept_groups", "groups with a signal"))


def plot_training_curves(metrics: pathlib.Path, path: pathlib.Path) -> None:
    """Draw every panel whose figure the log holds; validity is 1 - the share of malformed replies."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    panels = [(key, title) for key, title in PANELS if key in rows[0]]
    figure = Figure(figsize=(12, 6.5))
    FigureCanvasAgg(figure)  # the Agg canvas: no display, no global pyplot state
    axes = figure.subplots(2, (len(panels) + 1) // 2, squeeze=False).flatten()
    steps = [row["step"] for row in rows]
    for ax, (key, title) in zip(axes, panels, strict=False):
        values = [row.get(key, float("nan")) for row in rows]
        if key == "format_error_rate":
            values = [1.0 - v for v in values]
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(f"{metrics.parent.name}: {len(rows)} steps", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
