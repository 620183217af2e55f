"""Processes for the gateway benches: the bench backend, and xrouter as in production — four
services, each its own process (the entry points the containers use), a Postgres ledger (a throwaway
schema; SQLite when no Postgres answers), a catalog whose models are the bench backend's — and a
tenant API key for it, issued as an operator does (``xrouter keys create`` against the ledger)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator

import sqlalchemy

from xrouter import supervisor
from xrouter.metering import migrate

POSTGRES_URL = os.environ.get("XROUTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CATALOG = """models:
{entries}"""
ENTRY = """  - id: {model}
    backend: openai
    endpoint: {url}
    input_usd_per_mtok: "1.0"
    output_usd_per_mtok: "2.0"
    context_tokens: 8192
    max_output_tokens: 256
    description: "bench backend ({model})"
"""


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with status {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answers {url} after {timeout:.0f}s") from None
            time.sleep(0.1)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def backend(gap_ms: float = 50.0) -> Iterator[str]:
    """The bench backend on a free port; yields its ``/v1`` base URL."""
    port = supervisor.free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.gateway_backend", "--port", str(port),
                                "--gap-ms", str(gap_ms)])
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop([process])


@contextlib.contextmanager
def ledger_database() -> Iterator[tuple[str, str]]:
    """(url, kind): a fresh Postgres schema at the current migration (dropped afterwards), or SQLite."""
    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except sqlalchemy.exc.OperationalError:
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/metering.db", "sqlite"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'create schema "{schema}"'))
    url = f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{schema}"
    try:
        schema_engine = sqlalchemy.create_engine(url)
        migrate.upgrade(schema_engine)
        schema_engine.dispose()
        yield url, "postgres"
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
        engine.dispose()


def create_key(database_url: str, tenant: str = "bench") -> str:
    """A new API key of ``tenant``: ``xrouter keys create`` against the ledger (the key is printed once)."""
    run = subprocess.run([sys.executable, "-m", "xrouter.cli", "keys", "create", "--url", database_url,
                          "--tenant", tenant, "--label", "bench"], capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"xrouter keys create failed ({run.returncode}): {run.stderr.strip()}")
    for line in run.stdout.splitlines():
        name, _, value = line.partition(" ")
        if name == "api_key" and value.strip():
            return value.strip()
    raise RuntimeError(f"xrouter keys create printed no api_key:\n{run.stdout}")


@contextlib.contextmanager
def xrouter(home: pathlib.Path, backend_url: str, database_url: str, policy: str,
            models: tuple[str, ...] = ("instant", "slow"), tenant: str = "bench",
            extra_env: dict[str, str] | None = None,
            modules: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """The four services as processes; yields the OpenAI face's ``/v1`` base URL and an API key of
    ``tenant`` (the faces answer 401 without one). ``extra_env`` goes to every service; ``modules``
    runs a service from another module (a profiling wrapper) instead of ``xrouter.<name>``."""
    home.mkdir(parents=True, exist_ok=True)
    catalog = home / "catalog.yaml"
    catalog.write_text(CATALOG.format(entries="".join(ENTRY.format(model=m, url=backend_url) for m in models)))
    envs = supervisor.stack_env(home)
    envs["adapters"]["XROUTER_ADAPTERS_CATALOG"] = str(catalog)
    envs["metering"]["XROUTER_METERING_DATABASE_URL"] = database_url
    envs["router"]["XROUTER_ROUTER_POLICY"] = policy
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name in supervisor.SERVICES:
            log = open(home / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            module = (modules or {}).get(name, f"xrouter.{name}")
            processes.append(subprocess.Popen([sys.executable, "-m", module],
                                              env={**os.environ, **(extra_env or {}), **envs[name]},
                                              stdout=log, stderr=subprocess.STDOUT))
            supervisor.wait_serving(f"127.0.0.1:{envs[name][f'XROUTER_{name.upper()}_PORT']}", processes[-1], name, 60)
        http = f"http://127.0.0.1:{envs['router']['XROUTER_ROUTER_HTTP_PORT']}"
        wait_http(f"{http}/healthz", processes[-1])
        yield f"{http}/v1", create_key(database_url, tenant)  # after metering has migrated the ledger
    finally:
        stop(processes)
