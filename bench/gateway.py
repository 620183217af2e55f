"""Gateway bench (``make bench-gateway``): the bare backend, LiteLLM's proxy and xrouter side by side
on one machine, loaded by h2load over HTTP/1.1 at c=1, 16 and 64.

- backend: bench/gateway_backend.py — ``instant`` (answers at once) and ``slow`` (streams 20 tokens
  50 ms apart);
- LiteLLM proxy, one worker, in its own throwaway virtualenv under .cache/ (pip ``litellm[proxy]``;
  bench-only, never a dependency of xrouter);
- xrouter: four service processes, Postgres ledger (SQLite when no Postgres answers), called with a
  tenant key issued for the run (``xrouter keys create --tenant bench``), four ways: the fixed
  policy with one router process, the same with two (``XROUTER_ROUTER_PROCESSES=2``), the same
  with the settlement journal (``XROUTER_ROUTER_JOURNAL_DIR``), and the bundled learned compact
  policy (see ``gateways``). Each gateway runs alone while it is loaded.

Per gateway and concurrency: req/s, mean/p50/p99 latency (h2load's per-request log), the mean added
over the bare backend, req/s as a ratio to LiteLLM's, and CPU milliseconds per request per process
role (``bench/cpu_use.py``: router, adapters, metering, reward, postgres, litellm, backend; on a
2-core machine CPU per request is what caps req/s); TTFT of a stream (the official ``openai``
client, one at a time) for each gateway. One run's figures: ratios are the comparison, absolute
numbers depend on the machine (and on whatever else it is running).

    .venv/bin/python -m bench.gateway [--quick]

Writes bench/results/gateway.json and bench/results/gateway.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from bench import cpu_use, gateway_stack
from bench.streaming_ttft import one, summary
from xrouter.router.policy_store import BUNDLED_POLICY

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LITELLM_VENV = pathlib.Path(".cache/litellm-venv")
CONCURRENCY = (1, 16, 64)
# LiteLLM refuses to start without a master key: it is sent that one (the bare backend ignores keys);
# xrouter is sent a tenant key of its own ledger, issued when its stack starts.
LITELLM_KEY = "sk-bench-" + "0" * 32
PROMPT = [{"role": "user", "content": "count to twenty"}]


def ensure_litellm() -> pathlib.Path:
    """The proxy's own virtualenv (created once; pip's global constraints are for xrouter's env only)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        subprocess.run(["python3.11", "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True,
                       env={**os.environ, "PIP_CONSTRAINT": ""})
    return binary


@contextmanager
def litellm(home: pathlib.Path, backend_url: str) -> Iterator[tuple[str, str]]:
    config = home / "litellm.yaml"
    config.write_text("model_list:\n" + "".join(
        f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n      api_base: {backend_url}\n"
        f"      api_key: unused\n" for m in ("instant", "slow")))
    port = gateway_stack.supervisor.free_port()
    log = open(home / "litellm.log", "ab")  # noqa: SIM115 - owned by the child
    process = subprocess.Popen([str(ensure_litellm()), "--config", str(config), "--host", "127.0.0.1",
                                "--port", str(port), "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
                                    "LITELLM_MASTER_KEY": LITELLM_KEY})
    try:
        gateway_stack.wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, timeout=180)
        yield f"http://127.0.0.1:{port}/v1", LITELLM_KEY
    finally:
        gateway_stack.stop([process])


def h2load(url: str, key: str, body: dict[str, Any], clients: int, seconds: float,
           folder: pathlib.Path) -> dict[str, float]:
    """Load ``url`` for ``seconds`` (after a 1 s warm-up) with ``clients`` connections, one request in
    flight each; latency figures from h2load's per-request log (microseconds)."""
    data, log = folder / "body.json", folder / f"h2load-{clients}.log"
    data.write_text(json.dumps(body))
    log.unlink(missing_ok=True)
    run = subprocess.run(["h2load", "--h1", "-c", str(clients), "-t", "1", "-m", "1", "-D", str(int(seconds)),
                          "--warm-up-time", "1", "-d", str(data), "-H", "Content-Type: application/json",
                          "-H", f"Authorization: Bearer {key}", "--log-file", str(log), url],
                         capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    ok = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    if not ok:
        raise RuntimeError(f"h2load: no 200 answers from {url}:\n{run.stdout[-2000:]}")
    return {"req_per_s": round(len(ok) / seconds, 1), "requests": len(ok), "errors": len(rows) - len(ok),
            "mean_ms": round(statistics.fmean(ok), 3), "p50_ms": round(ok[len(ok) // 2], 3),
            "p99_ms": round(ok[min(len(ok) - 1, int(0.99 * len(ok)))], 3)}


async def ttft(url: str, key: str, model: str, extra: dict[str, Any], requests: int) -> dict[str, float]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)
    await one(client, model, extra)  # warm-up
    values = [(await one(client, model, extra))[0] for _ in range(requests)]
    await client.close()
    return summary(values)


Gateway = tuple[str, Callable[[], AbstractContextManager[tuple[str, str]]], str, dict[str, Any],
                tuple[str, dict[str, Any]] | None]


def gateways(home: pathlib.Path, backend: str, database_url: str) -> list[Gateway]:
    """(name, start -> (base URL, key), model, extra body, (model, extra) of the TTFT stream or None).

    xrouter four ways, each its own stack on the same Postgres schema: the fixed policy with one
    router process and with two (XROUTER_ROUTER_PROCESSES, SO_REUSEPORT: the GIL makes one process
    one core of routing), the fixed policy with the settlement journal (XROUTER_ROUTER_JOURNAL_DIR:
    answers wait for the router's own flush, not metering's commit; the chart's default), and the
    bundled learned compact policy. The compact stack's catalog is two
    instant models (the policy chooses between them and may call both), without ``slow``: a learned
    choice of the 1 s streaming model would measure the backend, not the router."""
    fixed, slow = {"xrouter": {"policy": "fixed:instant"}}, {"xrouter": {"policy": "fixed:slow"}}

    @contextmanager
    def bare() -> Iterator[tuple[str, str]]:
        yield backend, LITELLM_KEY  # the bare backend ignores the key

    def router(folder: str, policy: str, models: tuple[str, ...], **env: str) -> Callable[[], Any]:
        return lambda: gateway_stack.xrouter(home / folder, backend, database_url, policy, models=models,
                                             extra_env=env)

    return [("backend", bare, "instant", {}, ("slow", {})),
            ("litellm", lambda: litellm(home, backend), "instant", {}, ("slow", {})),
            ("xrouter", router("xrouter", "fixed:instant", ("instant", "slow")), "xrouter", fixed, ("xrouter", slow)),
            ("xrouter-2proc", router("xrouter-2proc", "fixed:instant", ("instant", "slow"),
                                     XROUTER_ROUTER_PROCESSES="2"), "xrouter", fixed, ("xrouter", slow)),
            ("xrouter-journal", router("xrouter-journal", "fixed:instant", ("instant", "slow"),
                                       XROUTER_ROUTER_JOURNAL_DIR=str(home / "journal")), "xrouter", fixed,
             ("xrouter", slow)),
            ("xrouter-compact", router("xrouter-compact", str(BUNDLED_POLICY), ("instant", "instant-b")),
             "xrouter", {}, None)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--quick", action="store_true", help="2 s per load point, 5 TTFT requests")
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        print("bench-gateway needs h2load: apt-get install -y nghttp2-client")
        return 1
    seconds, requests = (2, 5) if args.quick else (5, 20)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "gateway", "cpus": os.cpu_count(), "seconds_per_point": seconds,
                              "load": {}, "ttft_ms": {}}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        home = pathlib.Path(folder)
        backend = stack.enter_context(gateway_stack.backend(gap_ms=50))
        database_url, result["ledger"] = stack.enter_context(gateway_stack.ledger_database())
        for name, start, model, extra, stream in gateways(home, backend, database_url):
            with start() as (url, key):  # one gateway up at a time: the others' idle processes stay out
                result["load"][name] = {}
                for clients in CONCURRENCY:
                    body = {"model": model, "messages": PROMPT, **extra}
                    before = cpu_use.snapshot()
                    figures = h2load(f"{url}/chat/completions", key, body, clients, seconds, home)
                    # h2load's 1 s warm-up is served (and uses CPU) but not logged: count it at the logged rate
                    served = figures["requests"] * (seconds + 1) / seconds
                    figures["cpu_ms_per_request"] = cpu_use.per_request_ms(before, cpu_use.snapshot(), served)
                    result["load"][name][f"c{clients}"] = figures
                    print(f"  {name:<15} c={clients:<3} {figures}", flush=True)
                if stream is not None:
                    result["ttft_ms"][name] = asyncio.run(ttft(url, key, stream[0], stream[1], requests))
                    print(f"  {name:<15} streaming TTFT {result['ttft_ms'][name]}", flush=True)
    compare(result)
    (RESULTS / "gateway.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "gateway.png")
    print(json.dumps(result["comparison"], indent=2))
    return 0


def compare(result: dict[str, Any]) -> None:
    """Added mean latency over the bare backend, req/s ratio to LiteLLM, TTFT added over the backend."""
    load, comparison = result["load"], {}
    for name in (n for n in load if n != "backend"):
        comparison[name] = {
            f"c{c}": {"added_mean_ms": round(load[name][f"c{c}"]["mean_ms"] - load["backend"][f"c{c}"]["mean_ms"], 3),
                      "req_per_s_vs_litellm": round(load[name][f"c{c}"]["req_per_s"]
                                                    / load["litellm"][f"c{c}"]["req_per_s"], 2)}
            for c in CONCURRENCY}
        cpu = {c: load[name][f"c{c}"].get("cpu_ms_per_request", {}) for c in CONCURRENCY}
        for c in CONCURRENCY:  # the gateway's own CPU (Postgres included, the backend not) per request
            if cpu[c]:
                comparison[name][f"c{c}"]["gateway_cpu_ms_per_request"] = round(
                    sum(v for role, v in cpu[c].items() if role not in ("backend", "total")), 3)
        if name in result["ttft_ms"]:
            comparison[name]["ttft_added_p50_ms"] = round(result["ttft_ms"][name]["p50"] - result["ttft_ms"]["backend"]["p50"], 2)
    result["comparison"] = comparison


def plot(result: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["load"])
    figure, (rate, latency, cpu) = plt.subplots(1, 3, figsize=(16, 4))
    width = 0.8 / len(names)
    for offset, name in enumerate(names):
        xs = [i + offset * width for i in range(len(CONCURRENCY))]
        rate.bar(xs, [result["load"][name][f"c{c}"]["req_per_s"] for c in CONCURRENCY], width, label=name)
        latency.bar(xs, [result["load"][name][f"c{c}"]["mean_ms"] for c in CONCURRENCY], width, label=name)
    for axis, title in ((rate, "requests/s"), (latency, "mean latency (ms)")):
        axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(CONCURRENCY))], [f"c={c}" for c in CONCURRENCY])
        axis.set_title(title)
        axis.set_yscale("log")  # the bare backend is ~100x the gateways: linear bars would hide them
    latency.legend(loc="upper left", fontsize="small")  # one legend, where c=1's short bars leave room
    cpu_per_request(cpu, result)
    figure.suptitle(f"gateways over an instant backend (one run, {result['cpus']} CPUs, {result['ledger']} ledger)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def cpu_per_request(axis: Any, result: dict[str, Any], clients: int = 16) -> None:
    """The gateways' CPU per request at ``clients``, stacked by process role (the backend left out)."""
    gateways = [n for n in result["load"] if n != "backend" and result["load"][n][f"c{clients}"].get("cpu_ms_per_request")]
    if not gateways:
        axis.set_axis_off()
        return
    roles = sorted({r for n in gateways for r in result["load"][n][f"c{clients}"]["cpu_ms_per_request"]}
                   - {"backend", "total"})
    bottoms = [0.0] * len(gateways)
    for role in roles:
        heights = [result["load"][n][f"c{clients}"]["cpu_ms_per_request"].get(role, 0.0) for n in gateways]
        axis.bar(gateways, heights, bottom=bottoms, label=role)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    axis.set_title(f"CPU ms per request at c={clients}, by process")
    axis.tick_params(axis="x", labelrotation=20)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them


if __name__ == "__main__":
    sys.exit(main())
