"""The offline half of ``make run``: the bundled learned policy against kNN, the cascade, random, the
oracle and every single model on held-out prompts of every bundled source, through ``xrouter eval``
(one frontier PNG per source). Printed as one APGR table a person reads first."""

from __future__ import annotations

import pathlib

from xrouter.common.outcomes import SOURCES

from xrouter_training.evaluate import EvalConfig
from xrouter_training.evaluate_sources import run_sources

LAMBDAS = (0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0)
# kNN must embed its train prompts (minutes for all ~7,500 on a fresh 2-core machine); this quick view
# fits it on the first KNN_TRAIN of each source. `xrouter eval --source all` fits it on all of them.
KNN_TRAIN = 1000


def frontier_on_every_source(checkpoint: pathlib.Path, out: pathlib.Path, prompts: int) -> dict:
    first = next(iter(SOURCES.values()))
    config = EvalConfig(data=pathlib.Path(first.data), policy=str(checkpoint), out=out, lambdas=LAMBDAS,
                        catalog=pathlib.Path(first.catalog), limit=prompts, allow_partial=True,
                        knn_train_limit=KNN_TRAIN)
    print(f"\nThe bundled learned policy against kNN and the baselines, offline, on the first {prompts} "
          f"validation prompts of each bundled source (λ ∈ {', '.join(f'{v:g}' for v in LAMBDAS)}; "
          f"kNN fitted on up to {KNN_TRAIN} train prompts per source):")
    summary, _ = run_sources(config, "all")
    names = ("learned", "knn", "cascade", "random", "oracle")
    print(f"\n{'source':<12} {'prompts':>7} " + " ".join(f"{n:>8}" for n in names)
          + "   learned − knn, 90% interval   (APGR: 0 = cheapest model, 1 = strongest)")
    for source, entry in summary["sources"].items():
        policies = entry["policies"]
        values = [policies[entry["subject"]]["apgr"], *(policies.get(n, {}).get("apgr") for n in names[1:])]
        margin = entry.get("apgr_margin", {}).get("knn")
        spread = "" if margin is None else \
            f"   {margin['margin']:+.3f} ({margin['interval'][0]:+.3f} to {margin['interval'][1]:+.3f})"
        print(f"{source:<12} {entry['prompts']:>7} " + " ".join("       -" if v is None else f"{v:>8.3f}" for v in values)
              + spread)
    print("(routerarena has no APGR: its cheaper model, gemini-2.0-flash, is also its most accurate; the interval is a "
          "paired bootstrap over the prompts: where it spans 0, the draw of prompts alone could explain the margin)")
    print(f"\nfrontier PNGs: {out}/<source>/frontier.png; every figure: {out}/summary.json")
    return summary
