"""Query-encoder throughput over the bundled RouterBench prompts (truncated to 256 tokens from the left).

Cases, side by side in one run:
  before       the former ``embed_prompts`` path: chunks of 64 prompts in input order, padded batches
               of 16 sorted by length inside a chunk, one intra-op thread (on a subset of prompts);
  bulk_*       ``QueryEncoder.encode_bulk`` on the same subset: one text per run (no padding), with
               all cores as parallel runs of one thread each (the default) or as one run of
               cpu_count intra-op threads;
  cold         ``embed_prompts`` on every prompt into an empty cache (encodes and writes shards);
  warm         ``embed_prompts`` again, every text cached: in the same process, and in a "new
               process" (the shards read from disk).

    .venv/bin/python -m bench.encoder_throughput [--quick]

Writes bench-results/encoder_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.router.compact.embedding_cache import EmbeddingCache
from xrouter.router.compact.encoder import DIM, QueryEncoder, embed_prompts, usable_cpus

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "encoder_throughput.json"
TARGET = 200.0


def legacy_encode(encoder: QueryEncoder, texts: Sequence[str]) -> np.ndarray:
    """The encoder as it was before the cache: padded batches of 16, sorted inside chunks of 64."""
    result = np.zeros((len(texts), DIM), dtype=np.float32)
    for start in range(0, len(texts), 64):
        encodings = encoder._tokenizer.encode_batch(list(texts[start:start + 64]))
        order = np.argsort([len(e.ids) for e in encodings])
        for first in range(0, len(order), 16):
            chunk = order[first:first + 16]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                ids[row, :len(encodings[i].ids)] = encodings[i].ids
                mask[row, :len(encodings[i].ids)] = 1
            result[start + chunk] = encoder._session.run(None, {"ids": ids, "mask": mask})[0]
    return result


def timed(count: int, run: Callable[[], object]) -> dict[str, float]:
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    return {"prompts": count, "seconds": round(seconds, 3), "prompts_per_s": round(count / seconds, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encoder_throughput")
    parser.add_argument("--quick", action="store_true", help="a few hundred prompts instead of all")
    args = parser.parse_args(argv)
    prompts: dict[str, str] = {}
    for outcome in read_outcomes(ROUTERBENCH):
        prompts.setdefault(outcome.prompt_id, outcome.prompt)
    items = list(prompts.items())
    if args.quick:
        items = items[::len(items) // 90 + 1]  # every task, ~90 prompts
    subset = [text for _, text in items[::max(1, len(items) // 600)]]  # ≤ ~600 for the slow "before"
    encoder = QueryEncoder.load()  # threads=1: the callers' (train, evaluate) setting
    tokens = [len(e.ids) for e in encoder._tokenizer.encode_batch([text for _, text in items])]
    encoder.encode([items[0][1]])
    list(encoder.encode_bulk(subset[:4]))
    list(encoder.encode_bulk(subset[:2], workers=1))  # sessions created outside the timings
    results = {
        "before_padded_batches_1_thread": timed(len(subset), lambda: legacy_encode(encoder, subset)),
        "bulk_parallel_runs": timed(len(subset), lambda: list(encoder.encode_bulk(subset))),
        "bulk_one_run_all_threads": timed(len(subset), lambda: list(encoder.encode_bulk(subset, workers=1))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = pathlib.Path(tmp)
        results["cold"] = timed(len(items), lambda: embed_prompts(encoder, items, cache=cache, progress=False))
        results["warm_in_process"] = timed(len(items), lambda: embed_prompts(encoder, items, cache=cache,
                                                                             progress=False))
        EmbeddingCache._open.clear()  # as a new process starts
        results["warm_from_disk"] = timed(len(items), lambda: embed_prompts(encoder, items, cache=cache,
                                                                            progress=False))
        shard_bytes = sum(p.stat().st_size for p in cache.rglob("*.npz"))
    print(f"{'case':<34} {'prompts':>8} {'seconds':>9} {'prompts/s':>10}")
    for name, row in results.items():
        print(f"{name:<34} {row['prompts']:>8} {row['seconds']:>9.2f} {row['prompts_per_s']:>10.1f}")
    before = results["before_padded_batches_1_thread"]["prompts_per_s"]
    speedup = results["bulk_parallel_runs"]["prompts_per_s"] / before
    print(f"bulk / before on the same {len(subset)} prompts: {speedup:.2f}x; cold target {TARGET:.0f} prompts/s")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "query encoder throughput over RouterBench prompts (cold: no cache; warm: all cached)",
        "machine": {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "prompts": len(items), "subset_prompts": len(subset), "mean_tokens": round(float(np.mean(tokens)), 1),
        "share_at_256_tokens": round(float(np.mean(np.array(tokens) >= 256)), 3),
        "cache_bytes": shard_bytes, "target_cold_prompts_per_s": TARGET,
        "speedup_bulk_vs_before": round(speedup, 2), "results": results}, indent=2))
    print(f"results in {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
