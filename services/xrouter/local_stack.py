"""All four services in one process, each on its own real gRPC server (port 0) and talking over
real channels — for end-to-end tests and benchmarks. ``xrouter up`` runs them as separate
processes instead (cli.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib

import grpc
from aiohttp import web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

from xrouter.adapters import server as adapters_server
from xrouter.adapters.core import AdapterCore
from xrouter.adapters.settings import AdapterSettings
from xrouter.common import settings, telemetry
from xrouter.common.grpc_server import GrpcServer
from xrouter.common.outcomes import ROUTERBENCH
from xrouter.common.tls import TlsFiles
from xrouter.metering import server as metering_server
from xrouter.metering.ledger import Ledger
from xrouter.metering.store import make_engine
from xrouter.reward import server as reward_server
from xrouter.reward.core import Scorer
from xrouter.reward.verifiers.judge import Judge
from xrouter.router import server as router_server
from xrouter.router.core import RouterCore
from xrouter.router.http_api import bound_port, start_http
from xrouter.router.policy_store import PolicyStore
from xrouter.router.settings import RouterSettings


@dataclasses.dataclass
class InProcessStack:
    """Start with :meth:`start`; ``router_target``, ``http_url`` and ``admin_key`` (an admin API key,
    which may act for any tenant it names) are then set; :meth:`tenant_key` issues tenant keys."""

    database_url: str
    exporter: SpanExporter | None = None
    policy: str = "cascade"
    adapter_core: AdapterCore | None = None  # defaults to the bundled replay catalog
    router_env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra XROUTER_ROUTER_* settings
    tls: TlsFiles | None = None  # every server listens with TLS (mutual between services) when set
    # A catalog model the reward service grades ``judge`` references with (through the adapters, as
    # the deployed service does); "" leaves the judge off.
    judge_model: str = ""

    async def start(self) -> InProcessStack:
        core = self.adapter_core or await asyncio.to_thread(
            adapters_server.build_core, settings.load(AdapterSettings, {}))
        self.ledger = Ledger(make_engine(self.database_url), reservation_ttl_s=300)
        await asyncio.to_thread(self.ledger.create_schema)
        self.providers = {name: self._provider(name) for name in ("adapters", "metering", "reward", "router")}
        core.trace_with(self.providers["adapters"])
        self.servers: dict[str, GrpcServer] = {}
        catalog_models = frozenset(core.catalog)  # a budget may name only these (metering/catalog_models.py)
        for name, register in (("adapters", adapters_server.register(core)),
                               ("metering", metering_server.register(self.ledger, models=lambda: catalog_models))):
            self.servers[name] = GrpcServer(name, register, self.providers[name], tls=self.tls)
            await self.servers[name].start()
        self._channels: list[grpc.aio.Channel] = []
        judge = None
        if self.judge_model:  # the reward service's own traced channel to the adapters, as in reward/server.py
            self._channels.append(telemetry.channel(f"127.0.0.1:{self.servers['adapters'].port}",
                                                    self.providers["reward"], self.tls))
            judge = Judge(self._channels[-1], self.judge_model)
        scorer = Scorer(await asyncio.to_thread(reward_server.load_recorded, {"routerbench": ROUTERBENCH}),
                        judge=judge)
        self.servers["reward"] = GrpcServer("reward", reward_server.register(scorer), self.providers["reward"],
                                            tls=self.tls)
        await self.servers["reward"].start()
        config = settings.load(RouterSettings, {
            "XROUTER_ROUTER_ADAPTERS_TARGET": f"127.0.0.1:{self.servers['adapters'].port}",
            "XROUTER_ROUTER_METERING_TARGET": f"127.0.0.1:{self.servers['metering'].port}",
            "XROUTER_ROUTER_REWARD_TARGET": f"127.0.0.1:{self.servers['reward'].port}",
            "XROUTER_ROUTER_POLICY": self.policy, **self._tls_env(), **self.router_env})
        provider = self.providers["router"]
        self.router_core: RouterCore
        self.router_core, channels = await router_server.connect(config, provider)
        self._channels[:0] = channels  # the router's first: make_auth below takes its metering channel
        self.policy_store = PolicyStore(self.router_core, self.policy)  # LoadPolicy's, for watchers in tests
        self.auth = router_server.make_auth(config, self._channels[1])
        self.servers["router"] = GrpcServer(
            "router", router_server.register(self.router_core, self.policy_store, self.auth), provider,
            tls=self.tls, require_client_cert=False)
        await self.servers["router"].start()
        self._http: web.AppRunner = await start_http(self.router_core, "127.0.0.1", 0, self.auth)
        self.admin_key = (await asyncio.to_thread(self.ledger.create_api_key, "stack-admin", "tests", "admin"))[1]
        self.router_target = f"127.0.0.1:{self.servers['router'].port}"
        self.http_url = f"http://127.0.0.1:{bound_port(self._http)}"
        return self

    def _tls_env(self) -> dict[str, str]:
        if self.tls is None:
            return {}
        return {"XROUTER_ROUTER_TLS_CERT_FILE": self.tls.cert_file, "XROUTER_ROUTER_TLS_KEY_FILE": self.tls.key_file,
                "XROUTER_ROUTER_TLS_CA_FILE": self.tls.ca_file}

    def tenant_key(self, tenant: str) -> str:
        """A new API key of ``tenant`` (written to the ledger directly, as `xrouter keys create` does)."""
        return self.ledger.create_api_key(tenant, "tests")[1]

    def _provider(self, name: str) -> TracerProvider:
        if self.exporter is None:  # as each deployed service does: OTLP when the OTEL_* variables say so
            return telemetry.tracer_provider(f"xrouter-{name}")
        provider = TracerProvider(resource=Resource.create({"service.name": f"xrouter-{name}"}))
        telemetry.export_to(provider, SimpleSpanProcessor(self.exporter))
        return provider

    def force_flush(self) -> None:
        """Export every finished span now (batched exporters hold spans for a while)."""
        for provider in self.providers.values():
            provider.force_flush()

    async def stop(self) -> None:
        await self._http.cleanup()
        for name in ("router", "reward", "metering", "adapters"):
            await self.servers[name].stop(grace=1.0)
        for channel in self._channels:
            await channel.close()
        for provider in self.providers.values():
            provider.shutdown()  # flushes what is still batched, as a service does on SIGTERM


def sqlite_url(folder: pathlib.Path) -> str:
    return f"sqlite:///{folder / 'metering.db'}"
