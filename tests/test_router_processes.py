"""XROUTER_ROUTER_PROCESSES=N (router/processes.py): N router processes behind one gRPC and one HTTP
port, against real adapters and metering processes; what cannot be right across processes refused."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest

from xrouter import supervisor
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import settings
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.router.settings import RouterSettings

TARGETS = {"XROUTER_ROUTER_ADAPTERS_TARGET": "127.0.0.1:1", "XROUTER_ROUTER_METERING_TARGET": "127.0.0.1:2"}


@pytest.mark.parametrize("value, problem", [("0", "must be an integer >= 1, got 0"),
                                            ("-3", "must be an integer >= 1, got -3"),
                                            ("two", "must be an integer, got 'two'"),
                                            ("1.5", "must be an integer, got '1.5'")])
def test_a_bad_process_count_is_refused_naming_the_variable(value: str, problem: str) -> None:
    with pytest.raises(settings.SettingsError, match=f"XROUTER_ROUTER_PROCESSES {problem}"):
        settings.load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_PROCESSES": value})


def test_processes_cannot_share_port_zero() -> None:
    with pytest.raises(settings.SettingsError, match="XROUTER_ROUTER_PORT=0 with XROUTER_ROUTER_PROCESSES=2"):
        settings.load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_PROCESSES": "2", "XROUTER_ROUTER_PORT": "0"})
    assert settings.load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_PORT": "0"}).processes == 1


def _children(pid: int) -> list[int]:
    return [int(p) for p in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _post(url: str, key: str, body: dict) -> tuple[str, dict]:  # type: ignore[type-arg]
    """One request on a connection of its own (the kernel picks a process per connection)."""
    request = urllib.request.Request(url, json.dumps(body).encode(), {
        "Content-Type": "application/json", "Authorization": f"Bearer {key}", "Connection": "close"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.headers["X-Xrouter-Router-Process"], json.loads(response.read())


def test_two_router_processes_share_the_ports_and_stop_together(tmp_path: pathlib.Path) -> None:
    envs = supervisor.stack_env(tmp_path)
    envs["router"].update({"XROUTER_ROUTER_PROCESSES": "2", "XROUTER_ROUTER_REWARD_TARGET": ""})
    started: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("adapters", "metering", "router"):
            log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            started.append(subprocess.Popen([sys.executable, "-m", f"xrouter.{name}"], env={**os.environ, **envs[name]},
                                            stdout=log, stderr=subprocess.STDOUT))
            supervisor.wait_serving(f"127.0.0.1:{envs[name][f'XROUTER_{name.upper()}_PORT']}", started[-1], name, 90)
        router = started[-1]
        keys = supervisor.local_keys(tmp_path, f"127.0.0.1:{envs['metering']['XROUTER_METERING_PORT']}")
        http = f"http://127.0.0.1:{envs['router']['XROUTER_ROUTER_HTTP_PORT']}"
        supervisor.wait_serving(f"127.0.0.1:{envs['router']['XROUTER_ROUTER_PORT']}", router, "router", 90)
        workers = _children(router.pid)
        assert len(workers) == 2
        for pid in workers:
            assert b"xrouter.router.processes" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()

        prompt = next(read_outcomes(ROUTERBENCH)).prompt
        body = {"model": "xrouter", "messages": [{"role": "user", "content": prompt}]}
        answered: dict[str, int] = {}
        deadline = time.monotonic() + 60  # both workers serve once each has its channels and policy
        while len(answered) < 2 or sum(answered.values()) < 12:
            assert time.monotonic() < deadline, f"answers came from workers {answered} only"
            worker, reply = _post(f"{http}/v1/chat/completions", keys["api_key"], body)
            assert reply["choices"][0]["message"]["content"]
            answered[worker] = answered.get(worker, 0) + 1
        assert set(answered) == {"0", "1"}

        # The metrics port merges the workers' series: every routed request is counted once.
        metrics = f"http://127.0.0.1:{envs['router']['XROUTER_ROUTER_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(metrics, timeout=10) as response:
            text = response.read().decode()
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("xrouter_policy_requests_total{"))
        assert counted == sum(answered.values())

        # LoadPolicy would switch one worker only: refused, naming the setting.
        with grpc.insecure_channel(f"127.0.0.1:{envs['router']['XROUTER_ROUTER_PORT']}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                router_pb2_grpc.RouterServiceStub(channel).LoadPolicy(
                    router_pb2.LoadPolicyRequest(source="cheapest"), timeout=30,
                    metadata=(("authorization", f"Bearer {keys['admin_key']}"),))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "XROUTER_ROUTER_PROCESSES=2" in refused.value.details()

        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=30) == 0
        assert not any(_alive(pid) for pid in workers)
        assert (tmp_path / "router.log").read_text().count("SIGTERM received, draining") == 2
    finally:
        for process in reversed(started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
