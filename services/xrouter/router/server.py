"""The router's gRPC face, and the process that serves it beside the OpenAI-compatible HTTP face."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import sys
from collections.abc import AsyncIterator

import grpc
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common import grpc_server, settings, telemetry
from xrouter.common.errors import FailedPrecondition, Unavailable, XRouterError
from xrouter.common.grpc_server import Register
from xrouter.router import convert
from xrouter.router.policy_store import PolicyStore, build_policy
from xrouter.router.clients import AdaptersClient, MeteringClient, RewardClient
from xrouter.router.journal import SettleJournal
from xrouter.router.auth import Caller, RouterAuth, key_from_metadata, named_tenant, tenant_from_metadata
from xrouter.router.core import RouteRequest, RouterCore
from xrouter.router.episode import Event
from xrouter.router.feedback import FeedbackDesk
from xrouter.router.settings import RouterSettings

log = logging.getLogger(__name__)
SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
_DONE = object()


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """proto → core → proto; every RPC authenticated first (router/auth.py)."""

    def __init__(self, core: RouterCore, store: PolicyStore, auth: RouterAuth, processes: int = 1) -> None:
        self._core = core
        self._store = store
        self._auth = auth
        self._processes = processes
        self._feedback = FeedbackDesk(core.meter, core.limits.request_timeout_s)

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return await self._auth.caller(key_from_metadata(context.invocation_metadata() or ()))

    def _tenant(self, caller: Caller, named: str, context: grpc.aio.ServicerContext) -> str:
        """The tenant a message bills: its ``tenant`` field or ``x-tenant`` metadata (not both,
        differently), checked against the caller's key."""
        beside = tenant_from_metadata(context.invocation_metadata() or ())
        return self._auth.tenant_for(caller, named_tenant(named, beside, "tenant", "x-tenant"))

    async def _route_request(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext) -> RouteRequest:
        """The domain request, billed to the tenant of the caller's key (never one it merely names)."""
        caller = await self._caller(context)
        parsed = convert.route_request(request)
        return dataclasses.replace(parsed, tenant=self._tenant(caller, parsed.tenant, context))

    async def Route(self, request: router_pb2.RouteRequest,
                    context: grpc.aio.ServicerContext) -> router_pb2.RouteResponse:
        result = await self._core.route(await self._route_request(request, context), context.time_remaining())
        return convert.route_response(result)

    async def RouteStream(self, request: router_pb2.RouteRequest,
                          context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.RouteEvent]:
        # Events (and the answer's chunks, as the backend generates them) go out as they happen.
        route_request = await self._route_request(request, context)
        queue: asyncio.Queue[object] = asyncio.Queue()

        async def on_event(event: Event) -> None:
            queue.put_nowait(convert.route_event(event))

        async def run() -> router_pb2.RouteResponse:
            try:
                return convert.route_response(await self._core.route(
                    route_request, context.time_remaining(), on_event, stream=True))
            finally:
                queue.put_nowait(_DONE)

        task = asyncio.create_task(run())
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            response = await task  # re-raises the routing error, if any: the stream's terminal status
        finally:
            task.cancel()  # the caller went away: cancel the episode (and the backend call); no-op when done
        yield router_pb2.RouteEvent(done=response)

    async def Feedback(self, request: router_pb2.FeedbackRequest,
                       context: grpc.aio.ServicerContext) -> router_pb2.FeedbackResponse:
        caller = await self._caller(context)
        parsed = convert.feedback_request(request)
        parsed = dataclasses.replace(parsed, tenant=self._tenant(caller, parsed.tenant, context))
        result = await self._feedback.submit(parsed, context.time_remaining())
        return router_pb2.FeedbackResponse(request_id=result.request_id, score=result.score,
                                           duplicate=result.duplicate)

    async def GetPolicy(self, request: router_pb2.GetPolicyRequest,
                        context: grpc.aio.ServicerContext) -> router_pb2.PolicyInfo:
        await self._caller(context)
        policy = self._core.policy
        return router_pb2.PolicyInfo(kind=policy.kind, version=policy.version, source=self._store.source)

    async def LoadPolicy(self, request: router_pb2.LoadPolicyRequest,
                         context: grpc.aio.ServicerContext) -> router_pb2.PolicyInfo:
        caller = await self._caller(context)
        self._auth.require_admin(caller, "LoadPolicy")
        if self._processes > 1:  # this call reaches one of the processes: the others would keep the old policy
            raise FailedPrecondition(f"LoadPolicy switches one router process's policy, and XROUTER_ROUTER_PROCESSES="
                                     f"{self._processes}: publish the checkpoint through the policy ConfigMap "
                                     "(XROUTER_ROUTER_POLICY_CONFIGMAP, which every process watches), or run one process")
        log.warning("audit: admin key %s loads policy %r", caller.key_id, request.source)
        policy = await self._store.load(request.source)
        return router_pb2.PolicyInfo(kind=policy.kind, version=policy.version, source=self._store.source)


def register(core: RouterCore, store: PolicyStore | None, auth: RouterAuth, processes: int = 1) -> Register:
    store = store or PolicyStore(core, core.policy.kind)

    def add(server: grpc.aio.Server) -> list[str]:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(core, store, auth, processes), server)
        return [SERVICE]
    return add


async def connect(config: RouterSettings, provider: TracerProvider) -> tuple[RouterCore, list[grpc.aio.Channel]]:
    """Open channels to the other services, fetch the catalog (waiting for the adapters to come up)
    and build the core."""
    tls = config.tls()
    channels = [telemetry.channel(config.adapters_target, provider, tls),
                telemetry.channel(config.metering_target, provider, tls)]
    adapters, meter = AdaptersClient(channels[0]), MeteringClient(channels[1], config.metering_api_key)
    scorer = None
    if config.reward_target:
        channels.append(telemetry.channel(config.reward_target, provider, tls))
        scorer = RewardClient(channels[2])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.startup_timeout_s
    while True:
        try:
            catalog = await adapters.list_models(timeout=max(0.1, deadline - loop.time()))
            break
        except XRouterError as error:
            if loop.time() >= deadline:
                raise Unavailable(f"adapters at {config.adapters_target} not reachable: {error.message}") from None
            await asyncio.sleep(0.2)
    policy = await build_policy(config.policy, catalog, config.lm_generation())
    core = RouterCore(adapters, meter, scorer, catalog, policy, config.limits(), provider.get_tracer("xrouter.router"))
    return core, channels


async def open_journal(config: RouterSettings, meter: MeteringClient, worker: int | None) -> SettleJournal | None:
    """This process's settlement journal (its own subdirectory), started: what a previous run left
    is delivered first. Worker 0 also adopts the journals of workers that no longer exist (the pod
    runs fewer processes than before)."""
    if not config.journal_dir:
        return None
    root = pathlib.Path(config.journal_dir)
    index = worker or 0
    journals = [SettleJournal(root / f"worker-{index}", meter.deliver, config.journal_max_pending)]
    if index == 0:
        journals += [SettleJournal(path, meter.deliver, config.journal_max_pending)
                     for path in sorted(root.glob("worker-*")) if int(path.name.split("-")[1]) >= config.processes]
    for journal in journals:
        await journal.start()
    for orphan in journals[1:]:  # delivered in the background; its directory goes once it is empty
        task = asyncio.create_task(_retire(orphan))
        _RETIRING.add(task)
        task.add_done_callback(_RETIRING.discard)
    meter.journal = journals[0]
    return journals[0]


_RETIRING: set[asyncio.Task[None]] = set()


async def _retire(journal: SettleJournal) -> None:
    while not await journal.drain(60.0):
        pass
    await journal.close()
    for leftover in journal.directory.iterdir():
        leftover.unlink()
    journal.directory.rmdir()


def make_auth(config: RouterSettings, metering_channel: grpc.aio.Channel) -> RouterAuth:
    """API-key authentication of the public faces, resolved by metering over ``metering_channel``."""
    meter = MeteringClient(metering_channel, config.metering_api_key)
    return RouterAuth(meter.authenticate, config.default_tenant, config.key_cache_s)


def main(worker: int | None = None) -> None:
    """``xrouter-router``; with XROUTER_ROUTER_PROCESSES > 1 it supervises that many workers
    (router/processes.py), each of which runs this with its ``worker`` index."""
    grpc_server.configure_logging()
    try:
        config = settings.load(RouterSettings)
    except settings.SettingsError as error:
        sys.exit(f"xrouter-router: {error}")
    if config.processes > 1 and worker is None:
        from xrouter.router.processes import supervise

        sys.exit(supervise(config))

    async def build(provider: TracerProvider):  # type: ignore[no-untyped-def]
        core, channels = await connect(config, provider)
        journal = await open_journal(config, core.meter, worker)  # type: ignore[arg-type]
        auth = make_auth(config, channels[1])
        store = PolicyStore(core, config.policy, config.lm_generation())
        from xrouter.router.policy_watch import start_policy_watch  # the kubernetes client only when used

        watcher = start_policy_watch(config, store)
        http = None
        if config.http_port:
            from xrouter.router.http_api import start_http

            http = await start_http(core, config.host, config.http_port, auth,
                                    worker=worker if config.processes > 1 else None)

        async def close() -> None:
            if watcher is not None:
                await watcher.stop()
            if http is not None:
                await http.cleanup()
            if journal is not None:  # metering gets what this process answered, within the grace
                if not await journal.drain(config.grace_s):
                    log.warning("router: %d journaled settlements not delivered within the grace: they stay in %s "
                                "for the next start", journal.pending, journal.directory)
                await journal.close()
            for channel in channels:
                await channel.close()
        return register(core, store, auth, config.processes), close

    try:
        grpc_server.run("router", lambda: grpc_server.run_service("router", build, host=config.host, port=config.port,
                                            grace=config.grace_s, metrics_port=config.metrics_port,
                                            # The public port: callers prove who they are with API keys.
                                            tls=config.tls(), require_client_cert=False,
                                            health_port=config.health_port))
    except XRouterError as error:
        sys.exit(f"xrouter-router: {error.message}")
    except settings.SettingsError as error:  # e.g. a policy pointer to watch but no Kubernetes credentials
        sys.exit(f"xrouter-router: {error}")
