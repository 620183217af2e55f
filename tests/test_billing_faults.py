"""The billing guarantee under crashes, with the real services as processes and a PostgreSQL ledger:
every request the client got an answer for is in the ledger exactly as answered (each call once,
at the cost the answer reported), whatever was killed.

A client logs every answered request id with the calls and cost the router reported, while 8
workers route RouterBench prompts (cascade: 1-3 calls a request) through the router's gRPC face;
half of them send no request_id, so the router makes one up and metering reserves their budget
in memory only (no ledger row).
Mid-load the metering process is killed with SIGKILL and restarted (its in-memory budget totals
reload from the ledger), then, separately, the router. Then the ledger is compared with the log:
no answered request unbilled, none billed twice, no row for a request the client never sent; and
metering's budget totals (memory mode) are compared with the ledger's figures.
Requests cut off by a kill may have billed calls too (made before the kill); they are counted.
"""

from __future__ import annotations

import asyncio
import os
import re
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

import grpc
import pytest
import sqlalchemy as sa

from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.metering import migrate
from xrouter.metering.store import make_engine
from xrouter.supervisor import local_keys, stack_env, wait_serving

pytestmark = pytest.mark.postgres
WORKERS = 8
PHASE_S = 4.0  # load before the first kill, between the kills, after the last restart
LIMIT = 10**9  # a $1,000 daily budget: never refuses here, but every Authorize checks it
# Reservations of requests a router kill cut off never settle: they hold budget until they expire
# (in memory only, for router-generated ids). The budget comparison waits for that.
RESERVATION_TTL_S = 8.0


class Process:
    """One service as ``python -m xrouter.<name>``, restartable on the same port."""

    def __init__(self, name: str, env: dict[str, str], home: pathlib.Path) -> None:
        self.name, self.env, self.log = name, env, home / f"{name}.log"
        self.target = f"127.0.0.1:{env[f'XROUTER_{name.upper()}_PORT']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", f"xrouter.{self.name}"],
                                            env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_serving(self.target, self.process, self.name, 60)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{self.log.read_text()[-3000:]}") from None

    def kill9(self) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


# Budgeted: every request asks metering (Authorize). Unbudgeted: router-made ids of a tenant without
# a hard budget are admitted without asking (router/unbudgeted.py), so they keep coming while
# metering is dead, and must still be billed once it is back.
# Journaled: the router answers once a request's settlement is in its own journal (router/journal.py)
# and delivers it to metering behind the answer; a killed router's journal is delivered when it restarts.
@pytest.mark.parametrize(("budgeted", "journaled"), [(True, False), (False, False), (False, True)],
                         ids=["budgeted", "unbudgeted", "unbudgeted-journaled"])
def test_answered_requests_are_billed_exactly_once_across_kill_9(postgres_url: str, tmp_path: pathlib.Path,
                                                                 budgeted: bool, journaled: bool) -> None:
    envs = stack_env(tmp_path)
    envs["metering"].update({"XROUTER_METERING_DATABASE_URL": postgres_url,
                             "XROUTER_METERING_SPOOL_DIR": str(tmp_path / "spool"),
                             "XROUTER_METERING_BUDGETS": "memory",
                             "XROUTER_METERING_RESERVATION_TTL_S": str(RESERVATION_TTL_S)})
    envs["router"].update({"XROUTER_ROUTER_POLICY": "cascade", "XROUTER_ROUTER_REWARD_TARGET": "",
                           "XROUTER_ROUTER_HTTP_PORT": "0",
                           "XROUTER_ROUTER_JOURNAL_DIR": str(tmp_path / "journal") if journaled else ""})
    services = {name: Process(name, envs[name], tmp_path) for name in ("adapters", "metering", "router")}
    prompts = [row.prompt for row in read_outcomes(ROUTERBENCH)][:200]
    engine = make_engine(postgres_url)
    migrate.upgrade(engine)  # what the chart's migration Job does before metering starts
    engine.dispose()
    try:
        for service in services.values():
            service.start()
        key = local_keys(tmp_path, services["metering"].target)["api_key"]
        with grpc.insecure_channel(services["metering"].target) as channel:  # auth is off on loopback
            metering = metering_pb2_grpc.MeteringServiceStub(channel)
            if budgeted:
                metering.SetBudget(metering_pb2.SetBudgetRequest(
                    tenant="local", period=metering_pb2.BUDGET_PERIOD_DAY, limit_micro_usd=LIMIT), timeout=10)
            log, sent, events = asyncio.run(_load(services, key, prompts, budgeted))
            time.sleep(max(0.0, events["router killed"] + RESERVATION_TTL_S + 1.0 - events["ended"]))
            # The restarted metering's in-memory totals (reloaded after its kill, kept since) must
            # give the room the ledger gives: limit - (spent today + still reserved).
            probe = metering.Authorize(metering_pb2.AuthorizeRequest(
                request_id=f"probe-{uuid.uuid4().hex}", tenant="local", estimate_micro_usd=0), timeout=10)
    finally:
        for service in reversed(services.values()):
            service.stop()

    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT request_id, call_index, cost_micro_usd FROM ledger_calls")).all()
        summaries = dict(connection.execute(sa.text(
            "SELECT request_id, total_cost_micro_usd FROM request_summaries WHERE outcome = 'ok'")).all())
        reserved = set(connection.scalars(sa.text("SELECT request_id FROM reservations")))
        room = LIMIT - connection.execute(sa.text(
            "SELECT (SELECT coalesce(sum(cost_micro_usd), 0) FROM ledger_calls WHERE tenant = 'local' "
            "AND created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + "
            "(SELECT coalesce(sum(greatest(estimate_micro_usd - consumed_micro_usd, 0)), 0) FROM reservations "
            "WHERE tenant = 'local' AND NOT released AND expires_at > now())")).scalar_one()
    engine.dispose()
    assert probe.remaining_micro_usd == (room if budgeted else -1), "metering's budget totals drifted from the ledger"
    billed: dict[str, dict[int, int]] = {}
    for request_id, index, cost in rows:
        assert index not in billed.setdefault(request_id, {}), f"call {index} of {request_id} billed twice"
        billed[request_id][index] = cost
    answered = {request_id for request_id, _, _ in log}
    for request_id, total, calls in log:
        assert billed.get(request_id) == calls, f"answered request {request_id}: ledger {billed.get(request_id)} " \
                                                f"!= answer {calls}"
        assert summaries.get(request_id) == total == sum(calls.values())
    # Ids the router made up are known only from answers: a request cut off by a kill after its
    # Settle committed is billed under an id the client never saw, one per failed request at most.
    unknown = set(billed) - sent
    assert len(unknown) <= events["generated failures"], "the ledger bills requests the client never sent"
    by_client = {request_id for (request_id, _, _), client in zip(log, events["client ids"], strict=True) if client}
    assert by_client and len(by_client) < len(log), "both kinds of id were answered"
    # A reservation row for each client's id (retries look it up), none for an id the router made up.
    assert by_client <= reserved and not reserved & (answered - by_client)
    cut_off = set(billed) - answered
    answered_cost = sum(total for _, total, _ in log)
    assert sum(sum(billed[r].values()) for r in answered) == answered_cost
    # The kills hit requests in flight, and the load went on after each restart. Requests in flight
    # when metering died waited for it (the router resends its writes) and were answered and billed;
    # those in flight inside the killed router failed.
    across = {kill: [(start, end) for start, end in events["answers"] if start < events[f"{kill} killed"] < end]
              for kill in ("metering", "router")}
    assert across["metering"], "no answered request was in flight when metering was killed"
    # Unbudgeted: a request without an id was admitted without asking the dead metering, and answered
    # (so billed, as checked above) once it took its Settle. Budgeted: every admission asks metering.
    down = (events["metering killed"], events["metering serving again"])
    if budgeted:
        assert events["admitted while metering was down"] == 0 and not events["probe answered"]
    else:
        assert events["admitted while metering was down"] > 0
        assert any(down[0] < start < down[1] and not client
                   for (start, _), client in zip(events["answers"], events["client ids"], strict=True)), \
            "no request without a client id sent while metering was down was answered"
    router_down = (events["router killed"], events["router serving again"])
    assert any(router_down[0] - 1.0 <= at <= router_down[1] + 1.0 for at in events["failures"]), "router kill hit nothing"
    for kill in ("metering", "router"):
        assert any(start > events[f"{kill} serving again"] for start, _ in events["answers"]), \
            f"nothing answered after {kill} restarted"
    # The settlements that queued while metering was down went back together: the ledger's
    # equality above holds for settlements coalesced into SettleMany round trips too.
    assert events["settle round trips carrying several"] > 0
    # Journaled: what the killed router had answered but not yet delivered, its successor delivered.
    replayed = sum(int(match) for match in re.findall(r"(\d+) settlements from a previous run",
                                                        services["router"].log.read_text()))
    if journaled:
        print(f"\njournal: {replayed} settlements left by the killed router, delivered by the restarted one", end="")
    print(f"\nbilling under kill -9: {len(sent)} requests sent, {len(log)} answered "
          f"({sum(len(c) for _, _, c in log)} calls, ${answered_cost / 1e6:.6f}; {len(across['metering'])} of them in "
          f"flight when metering was killed), {len(events['failures'])} failed; "
          f"metering killed at {events['metering killed']:.1f}s (serving again {events['metering serving again']:.1f}s), "
          f"router killed at {events['router killed']:.1f}s (serving again {events['router serving again']:.1f}s); "
          f"ledger: {len(rows)} call rows for {len(billed)} requests = {len(answered)} answered exactly as answered "
          f"+ {len(cut_off)} cut off by a kill with {sum(len(billed[r]) for r in cut_off)} calls made before it; "
          f"{events['settle round trips carrying several']:.0f} SettleMany round trips before the router kill")


async def _load(services: dict[str, Process], key: str, prompts: list[str], budgeted: bool):  # type: ignore[no-untyped-def]
    """Route from WORKERS workers while killing and restarting metering, then the router; returns
    (answered: [(request_id, total, {call_index: cost})], every request_id sent, event times)."""
    log: list[tuple[str, int, dict[int, int]]] = []
    sent: set[str] = set()
    began = time.monotonic()
    events: dict = {"failures": [], "answers": [], "generated failures": 0, "client ids": []}  # type: ignore[type-arg]
    stop = asyncio.Event()
    metadata = (("authorization", f"Bearer {key}"),)
    metrics = f"http://127.0.0.1:{services['router'].env['XROUTER_ROUTER_METRICS_PORT']}/metrics"

    async def route_once(client_ids: bool, turn: int) -> bool:
        """One request (with a client-made id or without); whether it was answered."""
        request_id = uuid.uuid4().hex if client_ids else ""
        started = time.monotonic() - began
        if client_ids:
            sent.add(request_id)
        # A fresh channel per request: a channel to a killed router would keep failing for its backoff.
        async with grpc.aio.insecure_channel(services["router"].target) as channel:
            try:
                reply = await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
                    messages=[common_pb2.ChatMessage(role="user", content=prompts[turn % len(prompts)])],
                    request_id=request_id), timeout=20, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                # A dead service (or, on a crawling machine, a request that outlived the client's
                # deadline while the router waited for metering): not answered, not logged.
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                        grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED), error
                events["failures"].append(time.monotonic() - began)
                events["generated failures"] += not client_ids
                return False
        assert reply.request_id == (request_id or reply.request_id) and reply.request_id and not reply.replayed
        request_id = reply.request_id
        sent.add(request_id)
        events["client ids"].append(client_ids)
        log.append((request_id, reply.total_cost_micro_usd, {c.index: c.cost_micro_usd for c in reply.calls
                                                             if c.status != common_pb2.CALL_STATUS_SKIPPED_BUDGET}))
        events["answers"].append((started, time.monotonic() - began))
        return True

    async def worker(number: int) -> None:
        turn = number
        client_ids = number % 2 == 0  # the other half leave the id to the router
        while not stop.is_set():
            turn += WORKERS
            if not await route_once(client_ids, turn):
                await asyncio.sleep(0.1)

    async def crash(name: str) -> None:
        await asyncio.sleep(PHASE_S)
        if name == "router":  # its metrics die with it: how many settlement round trips carried several
            events["settle round trips carrying several"] = await asyncio.to_thread(_coalesced_settles, metrics)
        services[name].kill9()
        events[f"{name} killed"] = time.monotonic() - began  # dead and reaped by now
        if name == "metering":
            # The workers' requests in flight now wait for metering to take their Settle, so none of
            # them may start another while it is down: this one does, without an id. Without a hard
            # budget it is admitted without Authorize, which the router counts (metering stays down
            # until it has been, or 5 s), and answered once metering is back. With a budget, its
            # Authorize fails at once: refused, nothing spent.
            admitted = await asyncio.to_thread(_admitted_without_authorize, metrics)
            probe = asyncio.create_task(route_once(client_ids=False, turn=0))
            probes.append(probe)
            if budgeted:
                events["probe answered"] = await probe
            waited = time.monotonic()
            while not budgeted and time.monotonic() - waited < 5.0 and \
                    await asyncio.to_thread(_admitted_without_authorize, metrics) == admitted:
                await asyncio.sleep(0.02)
            events["admitted while metering was down"] = \
                await asyncio.to_thread(_admitted_without_authorize, metrics) - admitted
        await asyncio.to_thread(services[name].start)
        events[f"{name} serving again"] = time.monotonic() - began

    workers = [asyncio.create_task(worker(n)) for n in range(WORKERS)]
    probes: list[asyncio.Task[bool]] = []
    try:
        await crash("metering")
        await crash("router")
        await asyncio.sleep(PHASE_S)
    finally:
        stop.set()
        await asyncio.gather(*workers, *probes)
    events["ended"] = time.monotonic() - began
    return log, sent, events


def _coalesced_settles(metrics_url: str) -> float:
    """The router's SettleMany round trips so far: settlement round trips that carried more than one."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        samples = dict(line.rsplit(" ", 1) for line in reply.read().decode().splitlines()
                       if line.startswith("xrouter_settles_per_metering_call_"))
    return float(samples["xrouter_settles_per_metering_call_count"]) - \
        float(samples['xrouter_settles_per_metering_call_bucket{le="1.0"}'])


def _admitted_without_authorize(metrics_url: str) -> float:
    """The router's count of requests admitted without an Authorize round trip."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("xrouter_admitted_without_authorize_total "))
