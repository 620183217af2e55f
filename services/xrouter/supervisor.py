"""``xrouter up``: the four services as separate local processes on loopback, started through the
same entry points the containers use, with the embedded defaults (SQLite ledger, replay pool), and
the local API keys the router's faces require (kept in ``<home>/api-keys.json``, readable only by
the user, and reused while they stay valid)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc

SERVICES = ("adapters", "metering", "reward", "router")  # start order: the router needs the others


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env(home: pathlib.Path) -> dict[str, dict[str, str]]:
    """Environment of each service: loopback ports picked now, the embedded defaults."""
    ports = {name: free_port() for name in SERVICES}
    http_port, metrics_port = free_port(), free_port()
    target = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    return {
        "adapters": {"XROUTER_ADAPTERS_PORT": str(ports["adapters"])},
        # Metering checks a budget's model against the catalog the adapters serve.
        "metering": {"XROUTER_METERING_PORT": str(ports["metering"]),
                     "XROUTER_METERING_DATABASE_URL": f"sqlite:///{home / 'metering.db'}",
                     "XROUTER_METERING_CATALOG": os.environ.get("XROUTER_METERING_CATALOG")
                     or os.environ.get("XROUTER_ADAPTERS_CATALOG", str(DEFAULT_CATALOG))},
        "reward": {"XROUTER_REWARD_PORT": str(ports["reward"])},
        # /metrics has its own port: the public HTTP face does not serve every tenant's spend.
        "router": {"XROUTER_ROUTER_PORT": str(ports["router"]), "XROUTER_ROUTER_HTTP_PORT": str(http_port),
                   "XROUTER_ROUTER_METRICS_PORT": str(metrics_port),
                   "XROUTER_ROUTER_ADAPTERS_TARGET": target["adapters"],
                   "XROUTER_ROUTER_METERING_TARGET": target["metering"],
                   "XROUTER_ROUTER_REWARD_TARGET": target["reward"]},
    }


def wait_serving(target: str, process: subprocess.Popen[bytes], name: str, timeout: float) -> None:
    """Poll the standard health service until SERVING; fail early if the process died."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {process.returncode} during start-up (see its log)")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not serving at {target} after {timeout:.0f}s")
            time.sleep(0.2)


@contextlib.contextmanager
def running_stack(home: pathlib.Path, extra_env: dict[str, str] | None = None,
                  timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start the four services, yield their addresses, stop them with SIGTERM (graceful drain)."""
    home.mkdir(parents=True, exist_ok=True)
    envs = stack_env(home)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in SERVICES:
            env = {**os.environ, **(extra_env or {}), **envs[name]}
            log = open(home / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            processes[name] = subprocess.Popen([sys.executable, "-m", f"xrouter.{name}"], env=env,
                                               stdout=log, stderr=subprocess.STDOUT)
            port = envs[name][f"XROUTER_{name.upper()}_PORT"]
            wait_serving(f"127.0.0.1:{port}", processes[name], name, timeout)
            print(f"  {name:<9} serving on 127.0.0.1:{port} (pid {processes[name].pid}, log {home / name}.log)",
                  flush=True)
        info = {name: f"127.0.0.1:{envs[name][f'XROUTER_{name.upper()}_PORT']}" for name in SERVICES}
        info["http"] = f"http://127.0.0.1:{envs['router']['XROUTER_ROUTER_HTTP_PORT']}"
        info["router_metrics"] = f"http://127.0.0.1:{envs['router']['XROUTER_ROUTER_METRICS_PORT']}/metrics"
        info.update(local_keys(home, info["metering"]))
        _write_private(home / "stack.json", json.dumps(info, indent=2))
        yield info
    finally:
        for name in reversed(list(processes)):
            if processes[name].poll() is None:
                processes[name].send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        (home / "stack.json").unlink(missing_ok=True)


def _write_private(path: pathlib.Path, text: str) -> None:
    """Write a file only its owner may read (it holds API keys)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


def local_keys(home: pathlib.Path, metering_target: str) -> dict[str, str]:
    """The local stack's keys: ``api_key`` (tenant "local") and ``admin_key`` (may also act for any
    tenant and load policies). Reused from ``api-keys.json`` while metering still knows them, else
    issued through metering (whose auth is off on loopback) and saved there."""
    path = home / "api-keys.json"
    with grpc.insecure_channel(metering_target) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        if path.exists():
            saved = json.loads(path.read_text())
            alive = [stub.Authenticate(metering_pb2.AuthenticateRequest(
                key_sha256=hashlib.sha256(saved.get(name, "").encode()).hexdigest()), timeout=10).key_id
                for name in ("api_key", "admin_key")]
            if all(alive):
                return {"api_key": saved["api_key"], "admin_key": saved["admin_key"]}
            for key_id in filter(None, alive):  # a pair is replaced whole: no forgotten live key
                stub.RevokeApiKey(metering_pb2.RevokeApiKeyRequest(key_id=key_id), timeout=10)
        keys = {name: stub.CreateApiKey(metering_pb2.CreateApiKeyRequest(
            tenant="local", label=f"xrouter up ({name})", admin=name == "admin_key"), timeout=10).api_key
            for name in ("api_key", "admin_key")}
    _write_private(path, json.dumps(keys, indent=2))
    return keys


def read_stack(home: pathlib.Path) -> dict[str, str]:
    path = home / "stack.json"
    if not path.exists():
        raise SystemExit(f"no running stack found ({path} missing): start one with `xrouter up`")
    return json.loads(path.read_text())
