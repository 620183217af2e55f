"""The gRPC server frame every service runs in: grpc.aio, the standard health service and
reflection, one interceptor that maps domain errors to status codes and counts requests, tracing,
and a graceful drain on SIGTERM; :func:`run`, the event loop every service runs on."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Literal, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.sdk.trace import TracerProvider

from xrouter.common import metrics, settings, telemetry
from xrouter.common.errors import InvalidArgument, XRouterError, short, status_details
from xrouter.common.tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)

# Registers servicers on the server and returns the full names of the services it added.
Register = Callable[[grpc.aio.Server], Iterable[str]]


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps :class:`XRouterError` to its status (with rich details) and records RPC metrics,
    for the project's own services only (health and reflection pass through untouched)."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or not details.method.startswith("/xrouter."):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        # Requests arrive as bytes and are parsed in the handler: a message that does not parse (a
        # string field that is not UTF-8, garbage) is then INVALID_ARGUMENT like any bad input, where
        # grpc's own parsing answered UNKNOWN ("Unexpected <class 'DecodeError'>").
        parse = _parser(handler.request_deserializer, method)
        if handler.unary_unary:
            inner = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                self._unary(lambda raw, context: inner(parse(raw), context), method),
                response_serializer=handler.response_serializer)
        if handler.unary_stream:
            inner_stream = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                self._stream(lambda raw, context: inner_stream(parse(raw), context), method),
                response_serializer=handler.response_serializer)
        if handler.stream_stream:
            inner_both = handler.stream_stream

            async def parsed(requests: Any) -> Any:
                async for raw in requests:
                    yield parse(raw)
            return grpc.stream_stream_rpc_method_handler(
                self._stream(lambda raw, context: inner_both(parsed(raw), context), method),
                response_serializer=handler.response_serializer)
        return handler

    def _observe(self, method: str, started: float, code: grpc.StatusCode) -> None:
        metrics.RPC_REQUESTS.labels(self._service, method, code.name).inc()
        metrics.RPC_LATENCY.labels(self._service, method).observe(time.perf_counter() - started)

    async def _abort(self, context: grpc.aio.ServicerContext, method: str, error: Exception) -> None:
        if isinstance(error, XRouterError):
            await context.abort(error.code, short(error.message), trailing_metadata=status_details(error))
        log.exception("%s.%s failed unexpectedly", self._service, method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")

    def _unary(self, inner: Callable[..., Awaitable[Any]], method: str):  # type: ignore[no-untyped-def]
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = await inner(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                self._observe(method, started, _code_of(context))
                raise
            except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
                self._observe(method, started, _code_for(error))
                await self._abort(context, method, error)
            self._observe(method, started, grpc.StatusCode.OK)
            return response
        return handle

    def _stream(self, inner: Callable[..., Any], method: str):  # type: ignore[no-untyped-def]
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                async for item in inner(request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                self._observe(method, started, _code_of(context))
                raise
            except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
                self._observe(method, started, _code_for(error))
                await self._abort(context, method, error)
            self._observe(method, started, grpc.StatusCode.OK)
        return handle


def _parser(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError, and whatever a codec raises
            raise InvalidArgument("request", f"is not a valid {method} request message ({error})") from None
    return parse


def _code_for(error: Exception) -> grpc.StatusCode:
    return error.code if isinstance(error, XRouterError) else grpc.StatusCode.INTERNAL


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The code a handler aborted with itself, or CANCELLED when the caller went away."""
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.CANCELLED


class GrpcServer:
    """One service's gRPC server: start on a port (0 picks a free one), drain on stop. With ``tls``
    it listens with TLS (mutual when ``require_client_cert`` and a CA is set, see common/tls.py)."""

    def __init__(self, name: str, register: Register, provider: TracerProvider,
                 host: str = "127.0.0.1", port: int = 0, tls: TlsFiles | None = None,
                 require_client_cert: bool = True, health_port: int = 0) -> None:
        self.name = name
        self._address = f"{host}:{port}"
        self._tls, self._mutual = tls, require_client_cert
        self._health_address = f"{host}:{health_port}" if health_port else ""
        self._health_server: grpc.aio.Server | None = None
        self._server = grpc.aio.server(interceptors=[
            *telemetry.server_interceptors(provider), DomainErrorInterceptor(name)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        self._services = list(register(self._server))
        reflection.enable_server_reflection(
            [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server)
        self.port = 0

    async def start(self) -> int:
        if self._tls is not None and self._tls.enabled:
            self.port = self._server.add_secure_port(self._address, server_credentials(self._tls, self._mutual))
        else:
            self.port = self._server.add_insecure_port(self._address)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {self._address}")
        await self._server.start()
        if self._health_address:  # the same health status, in plaintext, for probes
            self._health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
            if self._health_server.add_insecure_port(self._health_address) == 0:
                raise OSError(f"{self.name}: cannot bind health port {self._health_address}")
            await self._health_server.start()
        await self.set_serving(True)
        log.info("%s listening on port %d", self.name, self.port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ["", *self._services]:
            await self.health.set(service, status)

    async def stop(self, grace: float) -> None:
        """Refuse new work (health NOT_SERVING), let in-flight RPCs finish for ``grace`` seconds."""
        await self.set_serving(False)
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def wait_for_shutdown_signal() -> signal.Signals:
    """Block until SIGTERM or SIGINT; plain grpc servers ignore them, so each service waits here."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    return await received


# Builds a service's servicers once the tracer provider exists; returns how to register them and
# an optional async close hook (database engines, downstream channels).
Build = Callable[[TracerProvider], Awaitable[tuple[Register, Callable[[], Awaitable[None]] | None]]]


async def run_service(name: str, build: Build, *, host: str, port: int, grace: float,
                      metrics_port: int = 0, tls: TlsFiles | None = None, require_client_cert: bool = True,
                      health_port: int = 0) -> None:
    """Run one service until SIGTERM/SIGINT, then drain for ``grace`` seconds and close."""
    provider = telemetry.tracer_provider(f"xrouter-{name}")
    register, close = await build(provider)
    server = GrpcServer(name, register, provider, host=host, port=port, tls=tls,
                        require_client_cert=require_client_cert, health_port=health_port)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=host)
    await server.start()
    sig = await wait_for_shutdown_signal()
    log.info("%s: %s received, draining for up to %.1fs", name, sig.name, grace)
    await server.stop(grace)
    if close is not None:
        await close()
    provider.shutdown()


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


T = TypeVar("T")
class LoopSettings(settings.Settings):
    """Which event loop the services run on (one setting for all four)."""

    # uvloop (libuv): fewer microseconds per callback, socket read and timer than the stdlib loop,
    # which every hop of a routed request pays several times. "asyncio": the stdlib loop (to compare).
    event_loop: Literal["uvloop", "asyncio"] = settings.env("XROUTER_EVENT_LOOP", "uvloop")


def run(name: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a service's ``main()`` to completion on the event loop XROUTER_EVENT_LOOP names; a bad
    value exits with status 2 before anything starts."""
    try:
        chosen = settings.load(LoopSettings).event_loop
    except settings.SettingsError as error:
        print(f"xrouter-{name}: {error}", file=sys.stderr)
        sys.exit(2)
    factory = None
    if chosen == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
