"""Hot swap of the serving policy on a live router: LoadPolicy pushes and the watched policy-pointer
ConfigMap swap between two real checkpoints and the baselines while concurrent Route calls keep
flowing (none may fail, and every request that starts after a swap reports the new version); corrupt
checkpoints are refused with INVALID_ARGUMENT naming the problem while the old policy keeps serving;
rollback restores the previous policy.

The four services are real gRPC servers on real channels (InProcessStack). The Kubernetes API is
kmock's in-process emulator (PyPI `kmock`, `KubernetesEmulator`), a real HTTP server that serves
ConfigMap get/patch/watch streams from memory; it stands in for a cluster, which the test machines
do not have (issue 6 names it as acceptable). The router's watcher reaches it through the official
`kubernetes` client and a kubeconfig, as it would reach a cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import shutil
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import grpc
import kmock
import pytest
import pytest_asyncio
from kubernetes import client
from prometheus_client import REGISTRY

from policy_checkpoints import edit_manifest, make_checkpoint
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import settings
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.auth import bearer_interceptors
from xrouter.router.compact.checkpoint import ENCODER, MANIFEST, WEIGHTS, manifest_digest
from xrouter.router.policy_watch import PolicyWatcher, start_policy_watch
from xrouter.router.settings import RouterSettings
from xrouter_training.publish import copy_to_store, publish

pytestmark = pytest.mark.asyncio(loop_scope="module")
NAMESPACE, POINTER = "xrouter", "xrouter-policy"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("checkpoint-store")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Two checkpoints as training writes them (versions a-1 and b-2), not yet published."""
    folder = tmp_path_factory.mktemp("runs")
    return {"a": make_checkpoint(folder / "a", "a-1", seed=1), "b": make_checkpoint(folder / "b", "b-2", seed=2)}


@pytest.fixture(scope="module")
def published(trained: dict[str, pathlib.Path], store: pathlib.Path) -> dict[str, str]:
    return {name: str(copy_to_store(path, store).path) for name, path in trained.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("swap"))).start()
    yield running
    await running.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def router(stack):  # type: ignore[no-untyped-def]
    async with grpc.aio.insecure_channel(stack.router_target, interceptors=bearer_interceptors(stack.admin_key)) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """The shortest RouterBench prompts every catalog model has a recorded answer for (short: the
    compact policy's encoder time grows with the prompt, and the test wants many requests)."""
    answered: dict[str, set[str]] = {}
    text: dict[str, str] = {}
    for row in read_outcomes(ROUTERBENCH):
        if row.response is not None:
            answered.setdefault(row.prompt_id, set()).add(row.model)
            text[row.prompt_id] = row.prompt
    complete = sorted(p for p, models in answered.items() if len(models) == max(map(len, answered.values())))
    return sorted((text[p] for p in complete), key=len)[:12]


def route_request(prompt: str) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                                   cost_lambda=1.0, tenant=f"t-{uuid.uuid4().hex[:6]}")


@dataclasses.dataclass(frozen=True)
class Served:
    started: float
    finished: float
    policy: str  # kind@version the reply reports


class Traffic:
    """Concurrent clients calling Route in a loop until the block ends; every reply and error is kept."""

    def __init__(self, router: router_pb2_grpc.RouterServiceStub, prompts: list[str], clients: int = 4) -> None:
        self.router, self.prompts, self.clients = router, prompts, clients
        self.served: list[Served] = []
        self.errors: list[str] = []
        self._running = True

    async def _client(self, offset: int) -> None:
        loop = asyncio.get_running_loop()
        sent = offset
        while self._running:
            started = loop.time()
            try:
                reply = await self.router.Route(route_request(self.prompts[sent % len(self.prompts)]), timeout=60)
            except grpc.aio.AioRpcError as error:
                self.errors.append(f"{error.code().name}: {error.details()}")
            else:
                self.served.append(Served(started, loop.time(), f"{reply.policy_kind}@{reply.policy_version}"))
            sent += self.clients

    async def completed_since(self, since: float, count: int = 3, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` requests that started after ``since`` have been answered."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(s.started >= since for s in self.served) < count and not self.errors:
            assert asyncio.get_running_loop().time() < deadline, "traffic stalled"
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        await asyncio.sleep(0.3)  # traffic is flowing before the first swap
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)


async def policy_of(router: router_pb2_grpc.RouterServiceStub) -> router_pb2.PolicyInfo:
    return await router.GetPolicy(router_pb2.GetPolicyRequest())


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def phases_hold(served: list[Served], swaps: list[tuple[float, float, str]]) -> dict[str, int]:
    """Every request that started after swap i returned and ended before swap i+1 began reports
    swap i's policy. Returns how many requests each phase checked."""
    checked: dict[str, int] = {}
    for i, (_, done, policy) in enumerate(swaps):
        until = swaps[i + 1][0] if i + 1 < len(swaps) else float("inf")
        inside = [s for s in served if s.started >= done and s.finished <= until]
        assert {s.policy for s in inside} <= {policy}, f"phase {i} ({policy}) served {sorted({s.policy for s in inside})}"
        checked[f"{i}:{policy}"] = len(inside)
    return checked


async def test_load_policy_swaps_under_live_traffic_without_a_failed_request(router, published, prompts) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    sources = [published["a"], published["b"], "cascade", published["a"], "cheapest", published["b"], "rollback"]
    swaps: list[tuple[float, float, str]] = []
    async with Traffic(router, prompts) as traffic:
        for source in sources:
            began = loop.time()
            info = await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=source), timeout=60)
            swaps.append((began, loop.time(), f"{info.kind}@{info.version}"))
            reply = await router.Route(route_request(prompts[0]), timeout=60)
            assert (reply.policy_kind, reply.policy_version) == (info.kind, info.version)
            await traffic.completed_since(swaps[-1][1])

    assert traffic.errors == [], f"{len(traffic.errors)} failed requests, e.g. {traffic.errors[:3]}"
    assert [policy for _, _, policy in swaps] == [
        "compact@a-1", "compact@b-2", "cascade@1", "compact@a-1", "cheapest@1", "compact@b-2", "cheapest@1"]
    checked = phases_hold(traffic.served, swaps)
    assert all(count > 0 for count in checked.values()), f"a phase saw no complete request: {checked}"
    assert {s.policy for s in traffic.served} >= {"compact@a-1", "compact@b-2", "cascade@1", "cheapest@1"}


def _flip_weights_byte(folder: pathlib.Path) -> None:
    weights = bytearray((folder / WEIGHTS).read_bytes())
    weights[-10] ^= 0x01
    (folder / WEIGHTS).write_bytes(bytes(weights))


def _resized_network(folder: pathlib.Path) -> None:
    # A consistent manifest (its digest recomputed) whose network does not match the weights.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["network"]["hidden"] = 32
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


CORRUPTIONS: dict[str, tuple[Callable[[pathlib.Path], object], str]] = {
    "flipped byte in the weights": (_flip_weights_byte, f"{WEIGHTS}: missing or its sha256 does not match"),
    "missing encoder": (lambda f: (f / ENCODER).unlink(), f"{ENCODER}: missing or its sha256 does not match"),
    "edited manifest": (lambda f: edit_manifest(f, version="9-edited"), "the manifest was edited after it was written"),
    "unreadable manifest": (lambda f: (f / MANIFEST).write_text('{"kind": "compact",'), "unreadable manifest"),
    "no manifest": (lambda f: (f / MANIFEST).unlink(), f"is not a checkpoint: no {MANIFEST}"),
    "weights that do not fit": (_resized_network, f"{WEIGHTS}: weights do not fit the network"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
async def test_a_corrupt_checkpoint_is_refused_and_the_old_one_keeps_serving(router, published, trained, prompts,  # type: ignore[no-untyped-def]
                                                                             tmp_path, corruption) -> None:
    damage, problem = CORRUPTIONS[corruption]
    bad = pathlib.Path(shutil.copytree(trained["b"], tmp_path / "bad"))
    damage(bad)
    if (await policy_of(router)).source != published["a"]:
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=published["a"]), timeout=60)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=str(bad)), timeout=60)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("source: ") and problem in refused.value.details()
    assert await policy_of(router) == router_pb2.PolicyInfo(kind="compact", version="a-1", source=published["a"])
    reply = await router.Route(route_request(prompts[1]), timeout=60)
    assert (reply.policy_kind, reply.policy_version) == ("compact", "a-1")


async def test_a_checkpoint_for_another_catalog_is_refused(router, prompts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    foreign = make_checkpoint(tmp_path / "foreign", "f-1", seed=4, models=["acme/model-x", "acme/model-y"])
    await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="cascade"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=str(foreign)), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trained on ['acme/model-x', 'acme/model-y'], none of which is in the serving catalog" in \
        refused.value.details()
    assert (await policy_of(router)).kind == "cascade"


async def test_rollback_restores_the_previous_policy_and_skips_refused_ones(router, published, prompts,  # type: ignore[no-untyped-def]
                                                                            tmp_path) -> None:
    await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=published["a"]), timeout=60)
    info = await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=published["b"]), timeout=60)
    assert info == router_pb2.PolicyInfo(kind="compact", version="b-2", source=published["b"])
    with pytest.raises(grpc.aio.AioRpcError):
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=str(tmp_path / "missing")), timeout=60)

    info = await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="rollback"), timeout=60)

    assert info == router_pb2.PolicyInfo(kind="compact", version="a-1", source=published["a"])
    assert await policy_of(router) == info
    reply = await router.Route(route_request(prompts[2]), timeout=60)
    assert (reply.policy_kind, reply.policy_version) == ("compact", "a-1")


async def test_get_policy_reports_kind_version_and_source(router, published) -> None:  # type: ignore[no-untyped-def]
    await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="fixed:gpt-4-1106-preview"))
    assert await policy_of(router) == router_pb2.PolicyInfo(kind="fixed:gpt-4-1106-preview", version="1",
                                                            source="fixed:gpt-4-1106-preview")
    await router.LoadPolicy(router_pb2.LoadPolicyRequest(source=published["b"]), timeout=60)
    assert await policy_of(router) == router_pb2.PolicyInfo(kind="compact", version="b-2", source=published["b"])


# --- the policy pointer ConfigMap, watched through the Kubernetes API (kmock's emulator) ------------

class QuickShutdownServer(aiohttp.test_utils.RawTestServer):
    """aiohttp waits 60 s for open handlers when a server closes, and a watch stream never ends by
    itself: give them half a second, as an API server restart would."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web.ServerRunner:
        return aiohttp.web.ServerRunner(aiohttp.web.Server(self._handler, debug=debug, **kwargs), debug=debug,
                                        shutdown_timeout=0.5, **kwargs)


def api_server(emulator: kmock.KubernetesEmulator, port: int | None = None) -> kmock.Server:
    return kmock.Server(emulator, port=port, server_cls=QuickShutdownServer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def emulator():  # type: ignore[no-untyped-def]
    async with kmock.KubernetesEmulator() as k8s:
        yield k8s


def core_api(server: kmock.Server) -> client.CoreV1Api:
    configuration = client.Configuration()
    configuration.host = str(server.url).rstrip("/")
    return client.CoreV1Api(client.ApiClient(configuration))


async def point(api: client.CoreV1Api, value: str) -> None:
    await asyncio.to_thread(api.patch_namespaced_config_map, POINTER, NAMESPACE, {"data": {"checkpoint": value}})


def pointer_loads(outcome: str) -> float:
    return REGISTRY.get_sample_value("xrouter_policy_pointer_loads_total", {"outcome": outcome}) or 0.0


async def test_routers_follow_the_pointer_under_live_traffic(stack, router, emulator, trained, store, published,  # type: ignore[no-untyped-def]
                                                             prompts, tmp_path, monkeypatch, caplog) -> None:
    async with api_server(emulator) as server:
        api = core_api(server)
        await asyncio.to_thread(api.create_namespaced_config_map, NAMESPACE,
                                {"metadata": {"name": POINTER, "namespace": NAMESPACE}})
        await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="cascade"))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "router", "user": {"token": "router-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "router"}}]}))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        config = settings.load(RouterSettings, {
            "XROUTER_ROUTER_ADAPTERS_TARGET": "127.0.0.1:1", "XROUTER_ROUTER_METERING_TARGET": "127.0.0.1:1",
            "XROUTER_ROUTER_POLICY_CONFIGMAP": POINTER, "XROUTER_ROUTER_POLICY_NAMESPACE": NAMESPACE})
        watcher = start_policy_watch(config, stack.policy_store)  # what the router's main() runs
        assert watcher is not None
        loaded_before, refused_before = pointer_loads("loaded"), pointer_loads("refused")
        monkeypatch.setenv("XROUTER_API_KEY", stack.admin_key)  # the publisher's LoadPolicy is an admin's
        try:
            async with Traffic(router, prompts) as traffic:
                for name, version in (("a", "a-1"), ("b", "b-2")):
                    # The trainer's step: copy into the store (already there: a no-op), patch the pointer,
                    # and push to this router directly too (both paths may race; both must be safe).
                    await asyncio.to_thread(publish, trained[name], store, configmap=POINTER, namespace=NAMESPACE,
                                            api=api, routers=[stack.router_target])

                    async def serving(version: str = version) -> bool:
                        return (await policy_of(router)).version == version
                    await eventually(serving, f"the router to serve {version}")
                    await traffic.completed_since(asyncio.get_running_loop().time())
                assert (await policy_of(router)).source == published["b"]

                bad = pathlib.Path(shutil.copytree(trained["a"], tmp_path / "bad"))
                _flip_weights_byte(bad)
                with caplog.at_level(logging.ERROR, logger="xrouter.router.policy_watch"):
                    await point(api, str(bad))

                    async def refused() -> bool:
                        return watcher.last is not None and watcher.last.value == str(bad)
                    await eventually(refused, "the watcher to act on the corrupt checkpoint")
                await traffic.completed_since(asyncio.get_running_loop().time())
        finally:
            await watcher.stop()

    assert traffic.errors == [], f"{len(traffic.errors)} failed requests, e.g. {traffic.errors[:3]}"
    assert {"compact@a-1", "compact@b-2"} <= {s.policy for s in traffic.served}
    assert watcher.last.outcome == "refused" and "sha256 does not match" in watcher.last.message
    assert await policy_of(router) == router_pb2.PolicyInfo(kind="compact", version="b-2", source=published["b"])
    # (Failed once in a fresh-clone run on a busy machine, 2026-12-08, not reproduced in isolation:
    # the timeline of the last replies says whether a late pointer event briefly re-loaded a-1.)
    assert traffic.served[-1].policy == "compact@b-2", [(round(s.started, 2), round(s.finished, 2), s.policy)
                                                         for s in traffic.served[-12:]]
    (record,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert str(bad) in record.getMessage() and "still serving compact@b-2" in record.getMessage()
    assert pointer_loads("refused") == refused_before + 1
    # Each publish either loaded from the pointer or found the direct push already serving it.
    assert pointer_loads("loaded") - loaded_before <= 2
    # Both paths delivered b-2 (maybe twice): the rollback target is still the version before it.
    rolled = await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="rollback"), timeout=60)
    assert (rolled.version, rolled.source) == ("a-1", published["a"])
    assert all(request.headers["Authorization"] == "Bearer router-token"
               for request in emulator[kmock.action.WATCH])


async def test_the_watch_reconnects_and_catches_up_after_the_api_server_was_away(stack, router, emulator,  # type: ignore[no-untyped-def]
                                                                               published) -> None:
    await router.LoadPolicy(router_pb2.LoadPolicyRequest(source="cascade"))
    async with api_server(emulator) as admin:  # the publisher's way in stays up throughout
        api = core_api(admin)
        await point(api, "cheapest")
        async with api_server(emulator) as first:
            port = first.port
            watcher = PolicyWatcher(stack.policy_store, core_api(first), POINTER, NAMESPACE,
                                    backoff_s=(0.05, 0.4)).start()

            async def cheapest() -> bool:
                return (await policy_of(router)).kind == "cheapest"
            await eventually(cheapest, "the initial pointer to load")
        # The router's API endpoint is gone: the watch fails and retries with backoff meanwhile.
        await point(api, published["a"])
        await asyncio.sleep(1.0)
        assert (await policy_of(router)).kind == "cheapest"
        assert REGISTRY.get_sample_value("xrouter_policy_pointer_watching") == 0.0
        loaded = pointer_loads("loaded")
        async with api_server(emulator, port):  # back, on the same address
            try:
                async def caught_up() -> bool:
                    return (await policy_of(router)).version == "a-1"
                await eventually(caught_up, "the watcher to reconnect and load what was published meanwhile")
                await asyncio.sleep(0.5)  # a replayed state must not reload
                assert REGISTRY.get_sample_value("xrouter_policy_pointer_watching") == 1.0
            finally:
                await watcher.stop()
    assert pointer_loads("loaded") == loaded + 1
    assert watcher.last is not None and (watcher.last.value, watcher.last.outcome) == (published["a"], "loaded")
