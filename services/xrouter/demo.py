"""``xrouter demo`` (what ``make run`` shows): route the bundled evaluation prompts through every
available policy on a running stack and print accuracy, mean cost and calls per query — real
figures from the models' recorded answers and costs."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import pathlib
import sys
import time

import grpc

from xrouter.api.common.v1 import common_pb2
from xrouter.api.reward.v1 import reward_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes, split_of
from xrouter.router.auth import bearer_interceptors


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    prompt_id: str
    task: str
    prompt: str


def evaluation_prompts(count: int, path: pathlib.Path = ROUTERBENCH) -> list[EvalPrompt]:
    """``count`` validation-split prompts, spread over the tasks in proportion to the set."""
    by_task: dict[str, dict[str, EvalPrompt]] = collections.defaultdict(dict)
    for row in read_outcomes(path):
        if split_of(row.prompt_id) == "validation":
            by_task[row.task].setdefault(row.prompt_id, EvalPrompt(row.prompt_id, row.task, row.prompt))
    total = sum(len(prompts) for prompts in by_task.values())
    chosen: list[EvalPrompt] = []
    for task, prompts in sorted(by_task.items()):
        share = max(1, round(count * len(prompts) / total))
        chosen += [prompts[key] for key in sorted(prompts)[:share]]
    return chosen[:count]


@dataclasses.dataclass
class PolicyFigures:
    policy: str  # what the request names ("" : the router's serving policy)
    label: str = ""  # the table's name for it
    cost_lambda: float = 0.0
    routed: int = 0
    failed: int = 0
    score: float = 0.0
    cost_micro_usd: int = 0
    calls: int = 0

    def row(self) -> dict[str, float | int | str]:
        n = max(self.routed, 1)
        return {"policy": self.label or self.policy, "lambda": self.cost_lambda, "prompts": self.routed, "failed": self.failed,
                "accuracy": self.score / n, "mean_cost_usd": self.cost_micro_usd / 1e6 / n,
                "calls_per_query": self.calls / n}


async def evaluate(target: str, policies: list[PolicyFigures], prompts: list[EvalPrompt], parallel: int = 8,
                   api_key: str = "") -> list[PolicyFigures]:
    """Route every prompt with every policy; scores come from the reward service's recorded labels."""
    results = policies
    limit = asyncio.Semaphore(parallel)
    async with grpc.aio.insecure_channel(target, interceptors=bearer_interceptors(api_key)) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def one(figures: PolicyFigures, item: EvalPrompt) -> None:
            request = router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=item.prompt)], policy=figures.policy,
                cost_lambda=figures.cost_lambda, reference=reward_pb2.Reference(
                    task_type="recorded_label", dataset="routerbench", prompt_id=item.prompt_id))
            async with limit:
                try:
                    reply = await stub.Route(request, timeout=60)
                except grpc.aio.AioRpcError as error:
                    figures.failed += 1
                    print(f"  {figures.label or figures.policy} {item.prompt_id}: {error.code().name} {error.details()}",
                          file=sys.stderr)
                    return
            figures.routed += 1
            figures.score += reply.score
            figures.cost_micro_usd += reply.total_cost_micro_usd
            figures.calls += sum(1 for c in reply.calls if c.status == common_pb2.CALL_STATUS_OK)

        for figures in results:
            started = time.perf_counter()
            await asyncio.gather(*(one(figures, item) for item in prompts))
            print(f"  {figures.label or figures.policy:<44} {len(prompts)} prompts in {time.perf_counter() - started:5.1f}s",
                  flush=True)
    return results


def print_table(results: list[PolicyFigures]) -> None:
    rows = sorted((r.row() for r in results), key=lambda r: r["mean_cost_usd"])
    print(f"\n{'policy':<44} {'accuracy':>8} {'mean cost/query':>16} {'calls/query':>11} {'failed':>6}")
    for row in rows:
        print(f"{row['policy']:<44} {row['accuracy']:>8.3f} {'$%.6f' % row['mean_cost_usd']:>16} "
              f"{row['calls_per_query']:>11.2f} {row['failed']:>6}")


def write_report(results: list[PolicyFigures], prompts: list[EvalPrompt], path: pathlib.Path) -> None:
    tasks = collections.Counter(p.task for p in prompts)
    path.write_text(json.dumps({"data": "routerbench (bundled), validation split", "prompts": len(prompts),
                                "tasks": dict(tasks), "policies": [r.row() for r in results]}, indent=2))
