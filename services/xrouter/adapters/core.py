"""The adapters' core: validate a call, run it on the model's backend within its deadline (retries,
circuit breaker and concurrency limit per model), and account for it — tokens, exact cost, latency —
whether it succeeds or fails. Plain Python; the gRPC servicer only converts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Protocol

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from xrouter.adapters import metrics
from xrouter.adapters.backends import BackendReply
from xrouter.adapters.catalog import ModelSpec
from xrouter.adapters.resilience import Attempts, BackendError, ModelGuard
from xrouter.adapters.token_count import counter_for
from xrouter.adapters.tracing import finish_call_span, in_span, start_call_span
from xrouter.common.call_options import CallOptions, check_options
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable, XRouterError

__all__ = ["AdapterCore", "Backend", "Invocation", "StreamingBackend", "backend_key", "failed_call"]

ROLES = frozenset({"system", "user", "assistant"})
Messages = Sequence[tuple[str, str]]


class Backend(Protocol):
    """Answers one call on a catalog model (raising :class:`BackendError` for a failed attempt).

    A backend that honours generation options lists their names in an ``options`` attribute
    (a frozenset; absent: none) and takes them as ``options=`` (a :class:`CallOptions`); it is
    passed only when some are set, and only to a backend that lists them all."""

    async def invoke(self, spec: ModelSpec, messages: Messages, temperature: float,
                     max_tokens: int) -> BackendReply: ...


class StreamingBackend(Protocol):
    """A backend that can also stream: text deltas, then the complete :class:`BackendReply`."""

    def stream(self, spec: ModelSpec, messages: Messages, temperature: float,
               max_tokens: int) -> AsyncIterator[str | BackendReply]: ...


@dataclasses.dataclass(frozen=True)
class Invocation:
    """The accounted result of one model call; a failed call has one too (see :func:`failed_call`)."""

    model: str
    text: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_micro_usd: int
    latency_ms: float
    finish_reason: str
    status: str = "OK"  # a common.v1.CallStatus name without its prefix: OK, ERROR, TIMEOUT
    attempts: int = 1
    tool_calls: str = ""  # JSON array of OpenAI tool calls; "" when none


def failed_call(error: BaseException) -> Invocation | None:
    """What a failed call consumed (status, latency, tokens and cost billed), if it reached a backend."""
    return getattr(error, "invocation", None)


class AdapterCore:
    """Calls catalog models on their backends (``backends`` maps :func:`backend_key` to a backend)."""

    def __init__(self, catalog: Mapping[str, ModelSpec], backends: Mapping[str, Backend],
                 on_call: Callable[[Invocation], None] = metrics.observe_call) -> None:
        self.catalog = dict(catalog)
        self._backends = dict(backends)
        for spec in self.catalog.values():
            if backend_key(spec) not in self._backends:
                raise ValueError(f"model {spec.id!r}: no backend {backend_key(spec)!r} configured")
        self.guards = {spec.id: ModelGuard(spec.id, spec.policy) for spec in self.catalog.values()}
        # Looked up once: a runtime Protocol check per call costs more than the rest of the call.
        self._streaming = {key for key, backend in self._backends.items() if callable(getattr(backend, "stream", None))}
        self._on_call = on_call
        self._tracer: Tracer = trace.get_tracer("xrouter.adapters")

    def trace_with(self, provider: TracerProvider) -> None:
        """Make the model-call spans (and the backends' HTTP client spans) with ``provider``'s tracer:
        the service's provider exists only once the server frame has built it."""
        self._tracer = provider.get_tracer("xrouter.adapters")
        for backend in self._backends.values():
            hand_over = getattr(backend, "trace_with", None)
            if hand_over is not None:
                hand_over(provider)

    def options(self, spec: ModelSpec) -> frozenset[str]:
        """The generation options ``spec``'s backend honours (see :class:`Backend`)."""
        return frozenset(getattr(self._backends[backend_key(spec)], "options", ()))

    async def invoke(self, model: str, messages: Messages, temperature: float = 0.0,
                     max_tokens: int = 0, timeout: float | None = None,
                     options: CallOptions = CallOptions()) -> Invocation:
        """One call, answered whole. ``timeout`` is the caller's (the model's own may be shorter)."""
        spec, deadline = self._prepare(model, messages, temperature, max_tokens, timeout, options)
        backend = self._backends[backend_key(spec)]
        extra = {"options": options} if options != CallOptions() else {}
        attempts, started = Attempts(), time.perf_counter()
        span = start_call_span(self._tracer, spec, temperature, max_tokens)
        try:
            with in_span(span):  # the backend's own spans (HTTP attempts) become its children
                reply = await self.guards[model].run(
                    lambda: backend.invoke(spec, messages, temperature, max_tokens, **extra), deadline, attempts)
        except (XRouterError, asyncio.CancelledError) as error:
            failed = self._failed(spec, error, attempts, started)
            finish_call_span(span, failed_call(failed), error=error)
            raise failed from None
        except BaseException as error:  # a bug: the interceptor reports it; the span must still end
            finish_call_span(span, None, error=error)
            raise
        invocation = self._succeeded(spec, reply, attempts, started)
        finish_call_span(span, invocation, reply.model)
        return invocation

    async def invoke_stream(self, model: str, messages: Messages, temperature: float = 0.0,
                            max_tokens: int = 0, timeout: float | None = None,
                            options: CallOptions = CallOptions()) -> AsyncIterator[str | Invocation]:
        """One call, streamed: text deltas, then the accounted :class:`Invocation` (which carries any
        tool calls). Retries happen only before the first delta; a backend without streaming sends
        its whole text as one delta."""
        spec, deadline = self._prepare(model, messages, temperature, max_tokens, timeout, options)
        backend = self._backends[backend_key(spec)]
        extra = {"options": options} if options != CallOptions() else {}
        streaming = backend_key(spec) in self._streaming
        attempts, started = Attempts(), time.perf_counter()
        queue: asyncio.Queue[str | BackendReply | BaseException] = asyncio.Queue()
        sent = [False]

        async def attempt() -> BackendReply:
            if not streaming:
                return await backend.invoke(spec, messages, temperature, max_tokens, **extra)
            async for item in backend.stream(spec, messages, temperature, max_tokens, **extra):  # type: ignore[attr-defined]
                if isinstance(item, BackendReply):
                    return item
                sent[0] = True
                queue.put_nowait(item)
            raise BackendError(Unavailable(f"model {spec.id!r}: stream ended without a final reply"))

        async def produce() -> None:
            try:
                reply = await self.guards[model].run(attempt, deadline, attempts, may_retry=lambda: not sent[0])
            except BaseException as error:  # handed to the consumer, which raises it  # noqa: BLE001
                queue.put_nowait(error)
            else:
                if not streaming and reply.text:
                    queue.put_nowait(reply.text)
                queue.put_nowait(reply)

        span = start_call_span(self._tracer, spec, temperature, max_tokens)
        with in_span(span):  # the task copies the context: the backend's spans become the span's children
            producer = asyncio.create_task(produce())
        streamed: list[str] = []
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, BackendReply):
                    break
                streamed.append(item)
                yield item
        except (XRouterError, asyncio.CancelledError, GeneratorExit) as error:
            producer.cancel()
            if streamed and not attempts.output_tokens:
                # Cut off (deadline, caller gone) mid-stream: what was generated is consumed all the same.
                counter = counter_for(spec.tokenizer)
                attempts.input_tokens = counter.messages(messages)
                attempts.output_tokens = counter.text("".join(streamed))
                attempts.tokens_estimated = attempts.tokens_estimated or not counter.exact
            if isinstance(error, GeneratorExit):  # the consumer stopped reading: account, then close
                cancelled = asyncio.CancelledError()
                finish_call_span(span, failed_call(self._failed(spec, cancelled, attempts, started)), error=cancelled)
                raise
            failed = self._failed(spec, error, attempts, started)
            finish_call_span(span, failed_call(failed), error=error)
            raise failed from None
        except BaseException as error:  # a bug: the interceptor reports it; the span must still end
            producer.cancel()
            finish_call_span(span, None, error=error)
            raise
        invocation = self._succeeded(spec, item, attempts, started)
        finish_call_span(span, invocation, item.model)
        yield invocation

    def _prepare(self, model: str, messages: Messages, temperature: float, max_tokens: int,
                 timeout: float | None, options: CallOptions) -> tuple[ModelSpec, float]:
        spec = self.catalog.get(model)
        if spec is None:
            raise NotFound(f"model: {model!r} is not in the catalog")
        _validate(spec, messages, temperature, max_tokens)
        check_options(options)
        # Refused, not dropped: a caller that asked for a seed or a tool must not get an answer
        # made without it and believe otherwise.
        missing = [name for name in options.used() if name not in self.options(spec)]
        if missing:
            raise InvalidArgument(missing[0], f"model {spec.id!r} ({spec.backend} backend) cannot honour "
                                  f"{', '.join(missing)}; it honours {sorted(self.options(spec)) or 'none of them'}")
        budget = spec.policy.timeout_s if timeout is None else min(timeout, spec.policy.timeout_s)
        return spec, asyncio.get_running_loop().time() + max(0.0, budget)

    def _succeeded(self, spec: ModelSpec, reply: BackendReply, attempts: Attempts, started: float) -> Invocation:
        cost = reply.cost_micro_usd
        if cost is None:
            cost = spec.cost_micro_usd(reply.input_tokens, reply.output_tokens)
        if attempts.input_tokens or attempts.output_tokens:  # earlier failed attempts consumed tokens too
            cost += spec.cost_micro_usd(attempts.input_tokens, attempts.output_tokens)
        invocation = Invocation(
            spec.id, reply.text, reply.input_tokens + attempts.input_tokens,
            reply.output_tokens + attempts.output_tokens, reply.tokens_estimated or attempts.tokens_estimated,
            cost, (time.perf_counter() - started) * 1000, reply.finish_reason, "OK", attempts.count,
            reply.tool_calls)
        self._on_call(invocation)
        return invocation

    def _failed(self, spec: ModelSpec, error: BaseException, attempts: Attempts, started: float) -> BaseException:
        """Account a failed call and attach the account to the error the caller gets."""
        status = "TIMEOUT" if isinstance(error, (DeadlineExceeded, asyncio.CancelledError)) else "ERROR"
        invocation = Invocation(
            spec.id, "", attempts.input_tokens, attempts.output_tokens, attempts.tokens_estimated,
            spec.cost_micro_usd(attempts.input_tokens, attempts.output_tokens),
            (time.perf_counter() - started) * 1000, "", status, attempts.count)
        self._on_call(invocation)
        error.invocation = invocation  # type: ignore[attr-defined]
        return error

    async def aclose(self) -> None:
        """Close the backends' connections."""
        for backend in self._backends.values():
            close = getattr(backend, "aclose", None)
            if close is not None:
                await close()


def backend_key(spec: ModelSpec) -> str:
    """Which backend instance serves ``spec`` (replay and local ones are per data set / weights)."""
    if spec.backend == "replay":
        return f"replay:{spec.dataset}"
    if spec.backend == "local":
        return f"local:{spec.weights_package}/{spec.weights_file}"
    return spec.backend


def _validate(spec: ModelSpec, messages: Messages, temperature: float, max_tokens: int) -> None:
    if not messages:
        raise InvalidArgument("messages", "at least one message is required")
    for number, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise InvalidArgument(f"messages[{number}].role", f"{role!r} is not one of {sorted(ROLES)}")
        if not content:
            raise InvalidArgument(f"messages[{number}].content", "must not be empty")
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument("temperature", f"must be within [0, 2], got {temperature}")
    if max_tokens < 0 or max_tokens > spec.max_output_tokens:
        raise InvalidArgument(
            "max_tokens", f"must be within [0, {spec.max_output_tokens}] for {spec.id}, got {max_tokens}")
