"""Durability: the on-disk spool, and a REAL PostgreSQL restart in the middle of a load run.

The restart tests create their own throwaway PostgreSQL cluster (initdb into a temporary folder,
pg_ctl start/stop on a free port), run the real ``python -m xrouter.metering`` process against it,
and stop the server with ``-m immediate`` (a crash: in-flight transactions die, commits whose
acknowledgement was lost are possible) while a load of Record/Settle calls is running. Without
the PostgreSQL binaries they are skipped loudly (failed under CI=true). Together ~20 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.errors import Unavailable
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import migrate
from xrouter.metering import server as metering_server
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import CallRecord, Ledger, Settlement
from xrouter.metering.spool import Spool
from xrouter.metering.store import make_engine

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


# --- the spool ----------------------------------------------------------------------------------

def test_spool_replays_in_order_and_survives_a_restart(tmp_path: pathlib.Path) -> None:
    spool = Spool(tmp_path, max_entries=10)
    for number in range(3):
        spool.append({"op": "record", "n": number})
    spool.close()
    reopened = Spool(tmp_path, max_entries=10)  # a restart: the entries are still there
    assert len(reopened) == 3
    seen: list[int] = []

    def apply(entries: list[dict]) -> list[str | None]:  # type: ignore[type-arg]
        for entry in entries:
            seen.append(entry["n"])
            if entry["n"] == 0:
                reopened.append({"op": "record", "n": 3})  # arrives while draining: drained too, after the rest
        return [None] * len(entries)

    assert reopened.drain(apply, chunk=2) == 4
    assert seen == [0, 1, 2, 3] and len(reopened) == 0 and reopened.path.stat().st_size == 0
    reopened.close()


def test_spool_drops_only_a_torn_tail_that_was_never_acknowledged(tmp_path: pathlib.Path) -> None:
    spool = Spool(tmp_path, max_entries=10)
    spool.append({"n": 1})
    spool.append({"n": 2})
    spool.close()
    with open(tmp_path / "pending.jsonl", "ab") as file:
        file.write(b'1234abcd {"n": 3')  # a crash in the middle of an append
    reopened = Spool(tmp_path, max_entries=10)
    seen: list[int] = []
    assert len(reopened) == 2
    assert reopened.drain(lambda entries: [seen.append(e["n"]) for e in entries]) == 2 and seen == [1, 2]


def test_spool_is_bounded_and_keeps_refused_entries(tmp_path: pathlib.Path) -> None:
    spool = Spool(tmp_path, max_entries=2)
    spool.append({"n": 1})
    spool.append({"n": 2})
    with pytest.raises(Unavailable, match="spool is full \\(2 writes.*NOT stored"):
        spool.append({"n": 3})

    def apply(entries: list[dict]) -> list[str | None]:  # type: ignore[type-arg]
        return ["call 0 of request r was already recorded with different cost_micro_usd" if e["n"] == 1 else None
                for e in entries]

    assert spool.drain(apply) == 2
    rejected = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"reason": "call 0 of request r was already recorded with different cost_micro_usd",
                         "entry": {"n": 1}}]


def test_a_failed_drain_keeps_what_was_not_applied(tmp_path: pathlib.Path) -> None:
    spool = Spool(tmp_path, max_entries=10)
    for number in range(3):
        spool.append({"n": number})
    seen: list[int] = []

    def flaky(entries: list[dict]) -> list[str | None]:  # type: ignore[type-arg]
        if entries[0]["n"] == 1 and -1 not in seen:  # the database goes down once, at the second chunk
            seen.append(-1)
            raise sa.exc.OperationalError("insert", {}, Exception("server closed the connection"))
        seen.extend(e["n"] for e in entries)
        return [None] * len(entries)

    with pytest.raises(sa.exc.OperationalError):
        spool.drain(flaky, chunk=1)
    assert len(spool) == 3  # nothing emptied
    assert spool.drain(flaky, chunk=1) == 2 and seen == [0, -1, 1, 2] and len(spool) == 0


# --- the guard, with a database that goes away (SQLite, outage injected) ------------------------

class FlakyLedger(Ledger):
    """A real SQLite ledger whose writes fail as if the server were gone while ``down`` is set."""

    down = False

    def _outage(self) -> None:
        if self.down:
            raise sa.exc.OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    def record_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._outage()
        return super().record_many(*args, **kwargs)

    def settle(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._outage()
        return super().settle(*args, **kwargs)

    def settle_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._outage()
        return super().settle_many(*args, **kwargs)

    def reserve_many(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._outage()
        return super().reserve_many(*args, **kwargs)

    def ping(self) -> None:
        self._outage()
        super().ping()


@pytest.fixture()
def flaky(tmp_path: pathlib.Path) -> Iterator[FlakyLedger]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = FlakyLedger(engine, 60.0)
    ledger.create_schema()
    yield ledger
    engine.dispose()


def a_call(index: int, cost: int = 10) -> CallRecord:
    return CallRecord("req", index, "acme", "gpt-4o", 1, 1, cost, 1.0, "CALL_STATUS_OK")


def test_the_guard_spools_during_an_outage_and_replays_in_order(flaky: FlakyLedger, tmp_path: pathlib.Path) -> None:
    guard = StoreGuard(flaky, Spool(tmp_path / "spool", max_entries=100))
    assert guard.record(a_call(0)) == (False, False)
    flaky.down = True
    assert guard.record_many([a_call(1), a_call(2), a_call(0)]) == [(False, True)] * 3  # a retry of 0 too
    assert guard.settle(Settlement("req", "acme", "single", "ok", 30, 3)) is True
    assert guard.check() is False and not guard.serving
    with pytest.raises(Unavailable, match="unreachable|being replayed"):
        guard.call(flaky.usage, "acme")
    flaky.down = False
    with pytest.raises(Unavailable, match="4 ledger writes made while the database was down are being replayed"):
        guard.call(flaky.usage, "acme")  # budgets and usage wait for a complete ledger
    assert guard.check() is True and guard.pending == 0
    assert flaky.usage("acme").total_cost_micro_usd == 30  # three calls, the retried one once
    assert guard.record(a_call(0)) == (True, False)


def test_without_a_spool_each_write_tries_the_database(flaky: FlakyLedger) -> None:
    guard = StoreGuard(flaky, spool=None)
    flaky.down = True
    with pytest.raises(Unavailable, match="no spool is configured.*NOT stored"):
        guard.record(a_call(0))
    flaky.down = False
    assert guard.record(a_call(0)) == (False, False) and guard.serving  # no health watch needed


# --- a throwaway PostgreSQL cluster -------------------------------------------------------------

def _postgres_bin() -> pathlib.Path | None:
    candidates = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return pathlib.Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A PostgreSQL cluster of its own: ``initdb`` (as the postgres user when running as root),
    ``pg_ctl start`` / ``stop`` on a free port with its socket in /tmp."""

    def __init__(self, bindir: pathlib.Path) -> None:
        self.bindir = bindir
        self.folder = pathlib.Path(tempfile.mkdtemp(prefix="xrouter-pg-"))
        self.data, self.log = self.folder / "data", self.folder / "postgres.log"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{log}")

    def start(self) -> None:
        # fsync=off: the tests crash the server process, not the machine, so what a commit wrote
        # to the OS stays; synchronous_commit stays on, so every acknowledged commit is in the WAL.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30",
                  "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        try:
            self.stop("fast")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = _postgres_bin()
    if bindir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found: Postgres restart tests SKIPPED"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- in CI they are required")
        warnings.warn(message, stacklevel=1)
        print(f"\n!!! {message} !!!")
        pytest.skip(message)
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture()
def database(cluster: Cluster) -> Iterator[str]:
    """A fresh database on the throwaway cluster, at the newest schema."""
    name = f"ledger_{os.urandom(4).hex()}"
    admin = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives restarts
    with admin.connect() as connection:
        connection.execute(sa.text(f'create database "{name}"'))
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as connection:
        connection.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


class MeteringProcess:
    """The real service entry point (``python -m xrouter.metering``) as a child process."""

    def __init__(self, database_url: str, folder: pathlib.Path, spool: bool) -> None:
        self.port = _free_port()
        self.log = folder / "metering.log"
        env = {**os.environ, "XROUTER_METERING_DATABASE_URL": database_url, "XROUTER_METERING_PORT": str(self.port),
               "XROUTER_METERING_HEALTH_INTERVAL_S": "0.2"}
        if spool:
            env["XROUTER_METERING_SPOOL_DIR"] = str(folder / "spool")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "xrouter.metering"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{self.port}"

    async def wait_health(self, channel: grpc.aio.Channel, wanted: int, timeout: float) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"metering exited: {self.log.read_text()[-3000:]}"
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == wanted:
                    return
            except grpc.aio.AioRpcError:
                pass
            assert time.monotonic() < deadline, f"health never became {wanted}: {self.log.read_text()[-3000:]}"
            await asyncio.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        return self.log.read_text()


async def watch_health(channel: grpc.aio.Channel, seen: list[int], stop: asyncio.Event) -> None:
    """Record every change of the overall health status."""
    health = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status
        except grpc.aio.AioRpcError:
            status = -1
        if not seen or seen[-1] != status:
            seen.append(status)
        if stop.is_set():  # after one more look, so the last status is in
            return
        await asyncio.sleep(0.03)


def record_request(request: int, index: int) -> metering_pb2.RecordRequest:
    return metering_pb2.RecordRequest(
        request_id=f"load-{request}", call_index=index, tenant=f"t{request % 3}", model="gpt-4o",
        input_tokens=100 + index, output_tokens=7, cost_micro_usd=1_000 * (request % 7 + 1) + index,
        latency_ms=1.5, status=common_pb2.CALL_STATUS_OK)


REQUESTS, CALLS = 240, 3


async def test_postgres_restart_mid_load_loses_nothing_and_counts_nothing_twice(
        cluster: Cluster, database: str, tmp_path: pathlib.Path) -> None:
    """240 requests x (3 Records + Settle) from 8 concurrent workers, every 7th call sent twice
    (a client retry); PostgreSQL is crashed (pg_ctl stop -m immediate) after 120 requests and
    started again 1.5 s later. Every Record and Settle must be acknowledged (spooled while the
    database is down), health must go NOT_SERVING and back, and the ledger must end with exactly
    the 720 calls and 240 summaries sent — none lost, none twice."""
    service = MeteringProcess(database, tmp_path, spool=True)
    channel = grpc.aio.insecure_channel(service.target)
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    health_seen: list[int] = []
    stop_watch = asyncio.Event()
    spooled = duplicates = 0
    try:
        await service.wait_health(channel, SERVING, timeout=30)
        watcher = asyncio.create_task(watch_health(channel, health_seen, stop_watch))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for request in range(REQUESTS):
            queue.put_nowait(request)
        done_requests = 0
        restarted = asyncio.Event()

        async def worker() -> None:
            nonlocal spooled, duplicates, done_requests
            while not queue.empty():
                request = queue.get_nowait()
                for index in range(CALLS):
                    for _ in range(2 if (request * CALLS + index) % 7 == 0 else 1):
                        reply = await stub.Record(record_request(request, index), timeout=30)
                        spooled += reply.spooled
                        duplicates += reply.duplicate
                reply = await stub.Settle(metering_pb2.SettleRequest(
                    request_id=f"load-{request}", tenant=f"t{request % 3}", strategy="cascade", outcome="ok",
                    total_cost_micro_usd=sum(record_request(request, i).cost_micro_usd for i in range(CALLS)),
                    calls=CALLS), timeout=30)
                spooled += reply.spooled
                done_requests += 1

        async def restart() -> None:
            while done_requests < REQUESTS // 2:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(cluster.stop, "immediate")
            await asyncio.sleep(1.5)
            await asyncio.to_thread(cluster.start)
            restarted.set()
        await asyncio.gather(*(worker() for _ in range(8)), restart())
        assert restarted.is_set()
        await service.wait_health(channel, SERVING, timeout=30)  # spool replayed
        stop_watch.set()
        await watcher
    finally:
        await channel.close()
        log = service.stop()
    assert spooled > 0, "the outage should have sent writes to the spool"
    assert health_seen[0] == SERVING and NOT_SERVING in health_seen and health_seen[-1] == SERVING, health_seen
    assert "ledger database unreachable" in log and "replayed" in log

    engine = make_engine(database)
    with engine.connect() as connection:
        calls = connection.execute(sa.text(
            "select request_id, call_index, cost_micro_usd, input_tokens from ledger_calls")).all()
        summaries = connection.execute(sa.text("select request_id, calls from request_summaries")).all()
    engine.dispose()
    expected = {(f"load-{r}", i): (record_request(r, i).cost_micro_usd, record_request(r, i).input_tokens)
                for r in range(REQUESTS) for i in range(CALLS)}
    assert len(calls) == REQUESTS * CALLS  # none twice (and the unique key would refuse a second)
    assert {(r, i): (c, t) for r, i, c, t in calls} == expected  # none lost, none altered
    assert sorted(summaries) == sorted((f"load-{r}", CALLS) for r in range(REQUESTS))
    assert not (tmp_path / "spool" / "rejected.jsonl").exists()


async def test_without_a_spool_records_fail_loudly_while_postgres_is_down(
        cluster: Cluster, database: str) -> None:
    """No spool configured (the in-process service this time): while the database is down Record
    answers UNAVAILABLE ("NOT stored"), Authorize fails closed, health says NOT_SERVING; the
    caller's retries after the restart count each call once."""
    engine = make_engine(database)
    ledger = Ledger(engine, 60.0)
    guard = StoreGuard(ledger, spool=None)
    server = GrpcServer("metering", metering_server.register(ledger, guard=guard), TracerProvider())
    port = await server.start()
    watch = asyncio.create_task(guard.watch(server.set_serving, interval_s=0.1))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)

    async def status() -> int:
        return (await health.Check(health_pb2.HealthCheckRequest())).status

    async def wait_for(wanted: int) -> None:
        for _ in range(300):
            if await status() == wanted:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"health never became {wanted}")

    try:
        await wait_for(SERVING)
        for index in range(20):
            await stub.Record(record_request(1, index), timeout=10)
        await asyncio.to_thread(cluster.stop, "immediate")
        for index in range(20, 40):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Record(record_request(1, index), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "NOT stored" in caught.value.details() or "unreachable" in caught.value.details()
        await wait_for(NOT_SERVING)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="x", tenant="t1", estimate_micro_usd=1))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # budgets fail closed
        await asyncio.to_thread(cluster.start)
        await wait_for(SERVING)
        for index in range(0, 40):  # the caller retries everything it is unsure of
            await stub.Record(record_request(1, index), timeout=10)
    finally:
        watch.cancel()
        await channel.close()
        await server.stop(0)
    with engine.connect() as connection:
        assert connection.execute(sa.text("select count(*) from ledger_calls")).scalar_one() == 40
    engine.dispose()
