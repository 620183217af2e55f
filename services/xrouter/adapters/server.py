"""The adapters' gRPC face: a thin servicer over :class:`AdapterCore`, and the service entry point."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping

import grpc
from opentelemetry import trace

from xrouter.adapters.backends.replay import ReplayBackend
from xrouter.adapters.catalog import CatalogError, load_catalog, micro_to_usd
from xrouter.adapters.core import AdapterCore, Backend, Invocation, backend_key, failed_call
from xrouter.adapters.settings import AdapterSettings
from xrouter.adapters.status import failed_call_status
from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.common import bounds, grpc_server, settings
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import InvalidArgument, XRouterError
from xrouter.common.grpc_server import Register

SERVICE = adapters_pb2.DESCRIPTOR.services_by_name["AdapterService"].full_name


def _correlate(request: adapters_pb2.InvokeRequest) -> None:
    """The router's request id and the call's index in it: checked, and put on this call's server
    span, where a trace search finds them (they were accepted and never read)."""
    bounds.check_identifier(request.request_id, "request_id", required=False)
    if request.call_index < 0:
        raise InvalidArgument("call_index", f"must not be negative, got {request.call_index}")
    span = trace.get_current_span()
    if request.request_id:
        span.set_attribute("xrouter.request_id", request.request_id)
        span.set_attribute("xrouter.call_index", request.call_index)


class AdapterServicer(adapters_pb2_grpc.AdapterServiceServicer):
    """proto → core → proto; errors are the interceptor's business."""

    def __init__(self, core: AdapterCore) -> None:
        self._core = core

    async def Invoke(self, request: adapters_pb2.InvokeRequest,
                     context: grpc.aio.ServicerContext) -> adapters_pb2.InvokeResponse:
        _correlate(request)
        try:
            result = await self._core.invoke(
                request.model, [(m.role, m.content) for m in request.messages], request.temperature,
                request.max_tokens, timeout=_time_left(context), options=call_options(request))
        except XRouterError as error:
            await _abort_with_account(context, error)
        return invocation_to_proto(result)

    async def InvokeStream(self, request: adapters_pb2.InvokeRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[adapters_pb2.InvokeChunk]:
        _correlate(request)
        stream = self._core.invoke_stream(
            request.model, [(m.role, m.content) for m in request.messages], request.temperature,
            request.max_tokens, timeout=_time_left(context), options=call_options(request))
        try:
            async for item in stream:
                if isinstance(item, Invocation):
                    yield adapters_pb2.InvokeChunk(done=invocation_to_proto(item))
                else:
                    yield adapters_pb2.InvokeChunk(delta=item)
        except XRouterError as error:
            await _abort_with_account(context, error)

    async def ListModels(self, request: adapters_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> adapters_pb2.ListModelsResponse:
        return adapters_pb2.ListModelsResponse(models=[
            adapters_pb2.ModelInfo(
                id=spec.id, backend=spec.backend, input_usd_per_mtok=float(spec.input_usd_per_mtok),
                output_usd_per_mtok=float(spec.output_usd_per_mtok), context_tokens=spec.context_tokens,
                max_output_tokens=spec.max_output_tokens, description=spec.description, tags=spec.tags,
                options=sorted(self._core.options(spec)))
            for spec in self._core.catalog.values()])


def call_options(request: adapters_pb2.InvokeRequest) -> CallOptions:
    return CallOptions(top_p=request.top_p if request.HasField("top_p") else None, stop=tuple(request.stop),
                       seed=request.seed if request.HasField("seed") else None, user=request.user,
                       tools=request.tools_json, tool_choice=request.tool_choice_json,
                       response_format=request.response_format_json)


def invocation_to_proto(result: Invocation) -> adapters_pb2.InvokeResponse:
    return adapters_pb2.InvokeResponse(
        model=result.model, text=result.text, input_tokens=result.input_tokens,
        output_tokens=result.output_tokens, tokens_estimated=result.tokens_estimated,
        cost_micro_usd=result.cost_micro_usd, cost_usd=micro_to_usd(result.cost_micro_usd),
        latency_ms=result.latency_ms, finish_reason=result.finish_reason, attempts=result.attempts,
        tool_calls_json=result.tool_calls)


def _time_left(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline, less a margin so that our status (with its accounting) reaches the
    caller before its own timer fires."""
    left = context.time_remaining()
    return None if left is None else max(0.0, left - min(0.05, left * 0.05))


async def _abort_with_account(context: grpc.aio.ServicerContext, error: XRouterError) -> None:
    """Abort with the error's status; the rich details carry a FailedCall when the call was accounted."""
    invocation = failed_call(error)
    if invocation is None:
        raise error  # the interceptor maps it
    await context.abort(error.code, error.message, trailing_metadata=failed_call_status(error, invocation))


def register(core: AdapterCore) -> Register:
    def add(server: grpc.aio.Server) -> list[str]:
        adapters_pb2_grpc.add_AdapterServiceServicer_to_server(AdapterServicer(core), server)
        return [SERVICE]
    return add


def build_core(config: AdapterSettings, environ: Mapping[str, str] | None = None) -> AdapterCore:
    """Load the catalog and the backends its models need (credentials read once, from ``environ``)."""
    catalog = load_catalog(config.catalog_path)
    datasets = config.datasets()
    backends: dict[str, Backend] = {}
    for spec in catalog.values():
        key = backend_key(spec)
        if key in backends:
            continue
        if spec.backend == "replay":
            if spec.dataset not in datasets:
                raise CatalogError(f"model {spec.id!r}: replay dataset {spec.dataset!r} is not configured "
                                   f"in XROUTER_ADAPTERS_REPLAY_DATASETS (known: {sorted(datasets)})")
            backends[key] = ReplayBackend(spec.dataset, datasets[spec.dataset])
        elif spec.backend == "openai":
            from xrouter.adapters.backends.openai_http import OpenAIBackend
            try:
                backends[key] = OpenAIBackend.from_environment(
                    [s for s in catalog.values() if s.backend == "openai"], environ)
            except ValueError as error:
                raise CatalogError(str(error)) from None
        elif spec.backend == "kserve":  # heavy imports only for the backends the catalog uses
            from xrouter.adapters.backends.kserve_oip import KServeBackend
            backends[key] = KServeBackend()
        elif spec.backend == "local":
            from xrouter.adapters.backends.local_hf import LocalModelBackend
            backends[key] = LocalModelBackend(spec.weights_package, spec.weights_file, config.model_cache())
    return AdapterCore(catalog, backends)


def main() -> None:
    grpc_server.configure_logging()
    try:
        config = settings.load(AdapterSettings)
        core = build_core(config)
    except (settings.SettingsError, CatalogError) as error:
        sys.exit(f"xrouter-adapters: {error}")

    async def build(provider):  # type: ignore[no-untyped-def]
        core.trace_with(provider)  # model-call and backend HTTP spans under the service's provider
        return register(core), core.aclose

    grpc_server.run("adapters", lambda: grpc_server.run_service(
        "adapters", build, host=config.host, port=config.port, grace=config.grace_s,
        metrics_port=config.metrics_port, tls=config.tls(), health_port=config.health_port))
