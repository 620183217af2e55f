"""Learning from traffic of a task family the router never trained on, with models it knows (the
case a platform team meets: its own kind of prompts on a known pool), for ``make bench``: LLMRouter's
code family, the start trained without it (``runs/lotf/without-task-llmrouter-code``, trained here
when absent; ``--quick``: the tiny config, a smoke run whose figures mean nothing).

    .venv/bin/python -m bench.traffic_learning_family [--quick] [--source llmrouter] [--task code]

Writes bench-results/traffic_learning_<source>_<task>.json and .png (bench/traffic_learning.py), and
``..._fine_tuned.json`` / ``.png`` for the same run with the network fine-tuned on the verdicts."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench import traffic_learning


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic_learning_family",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--source", default="llmrouter")
    parser.add_argument("--task", default="code")
    args = parser.parse_args(argv)
    # Twice: the outcome memory alone, then with the network fine-tuned on the verdicts every 100
    # requests (fine_tune.py), side by side on the same start and traffic.
    common = ["--source", args.source, "--task", args.task, "--every", "100", *(["--quick"] if args.quick else [])]
    return traffic_learning.main(common) or traffic_learning.main([*common, "--fine-tune-epochs", "40"])


if __name__ == "__main__":
    raise SystemExit(main())
