"""The model calls of one routed request, made through the adapters: one ``CallMaker`` per request,
handed to the episode as its ``invoke``. Each call becomes a ``CallOutcome`` with what it cost,
whether it succeeded, failed, or was cut off by a cancel (then the router estimates what it used),
and a span of its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from opentelemetry import trace
from opentelemetry.trace import Tracer

from xrouter.adapters.token_count import estimate_tokens
from xrouter.common import metrics
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import DeadlineExceeded, Unavailable, XRouterError
from xrouter.router.episode import OnDelta
from xrouter.router.policy import CallOutcome, CallStatus, ModelOption, ToolCall
from xrouter.router.ports import Adapters, ModelReply


class CallMaker:
    """Makes one request's model calls. ``in_flight`` holds the calls not yet ended (a cancel leaves
    them there for the router to bill); ``model_seconds`` is the wall time spent waiting for models,
    a turn's parallel calls counted once (the router's own overhead is the rest)."""

    def __init__(self, adapters: Adapters, catalog: Mapping[str, ModelOption], tracer: Tracer, request_id: str,
                 max_tokens: int, deadline: float, call_timeout_s: float, temperature: float | None,
                 options: CallOptions) -> None:
        self._adapters, self._catalog, self._tracer = adapters, catalog, tracer
        self._request_id, self._max_tokens, self._deadline = request_id, max_tokens, deadline
        self._call_timeout_s, self._temperature, self._options = call_timeout_s, temperature, options
        self.in_flight: dict[int, CallOutcome] = {}
        self.model_seconds = 0.0
        self._turn_wall: dict[int, float] = {}

    async def __call__(self, call: ToolCall, messages: list[tuple[str, str]], index: int, turn: int,
                       on_delta: OnDelta | None = None) -> CallOutcome:
        if self._temperature is not None:  # the caller's temperature wins over the policy's
            call = dataclasses.replace(call, temperature=self._temperature)
        outcome = CallOutcome(index, turn, call.model, call.system_prompt, call.temperature, CallStatus.OK,
                              attempted=True)
        started = time.perf_counter()
        received: list[str] = []  # streamed text, to account a call cut off by a cancel
        self.in_flight[index] = outcome
        # The router's view of one tool call (which model, which turn, what it cost). The GenAI
        # span of the model call itself is the adapters', where the call happens; repeating its
        # attributes here would count every call twice in GenAI dashboards.
        with self._tracer.start_as_current_span("xrouter.call") as span:
            span.set_attributes({"xrouter.model": call.model, "xrouter.call_index": index, "xrouter.turn": turn})
            option = self._catalog.get(call.model)
            limit = option.max_output_tokens if option is not None else 0
            max_tokens = min(self._max_tokens, limit) if limit else self._max_tokens
            try:
                timeout = min(left(self._deadline), self._call_timeout_s)
                if on_delta is None:
                    reply = await self._adapters.invoke(call.model, messages, call.temperature, max_tokens,
                                                        self._request_id, index, timeout, **given(self._options))
                else:
                    reply = await self._stream(call, messages, max_tokens, index, timeout, on_delta, received)
            except asyncio.CancelledError:
                outcome.status, outcome.error = CallStatus.ERROR, "cancelled: the client went away"
                outcome.latency_ms = (time.perf_counter() - started) * 1000
                self._estimate_used(outcome, messages, received)
                raise
            except XRouterError as error:
                outcome.status = CallStatus.TIMEOUT if isinstance(error, DeadlineExceeded) else CallStatus.ERROR
                outcome.error = error.message
                billed = getattr(error, "failed_call", None)  # the adapters' account of a failed call
                if billed is not None:
                    outcome.input_tokens, outcome.output_tokens = billed.input_tokens, billed.output_tokens
                    outcome.tokens_estimated, outcome.cost_micro_usd = billed.tokens_estimated, billed.cost_micro_usd
                elif received:  # streamed text but no account from the adapters
                    self._estimate_used(outcome, messages, received)
                span.set_status(trace.Status(trace.StatusCode.ERROR, error.message))
                metrics.MODEL_CALL_ERRORS.labels(call.model, outcome.status.name).inc()
            else:
                outcome.text, outcome.finish_reason = reply.text, reply.finish_reason
                outcome.tool_calls = reply.tool_calls
                outcome.input_tokens, outcome.output_tokens = reply.input_tokens, reply.output_tokens
                outcome.tokens_estimated, outcome.cost_micro_usd = reply.tokens_estimated, reply.cost_micro_usd
            span.set_attributes({"xrouter.call_status": outcome.status.name,
                                 "xrouter.cost_usd": outcome.cost_micro_usd / 1e6})
        del self.in_flight[index]
        metrics.MODEL_CALLS.labels(call.model, outcome.status.name).inc()
        wall = time.perf_counter() - started
        outcome.latency_ms = wall * 1000
        # Calls of one turn overlap: the turn costs its slowest call in wall time.
        self.model_seconds += max(0.0, wall - self._turn_wall.get(turn, 0.0))
        self._turn_wall[turn] = max(self._turn_wall.get(turn, 0.0), wall)
        return outcome

    async def _stream(self, call: ToolCall, messages: list[tuple[str, str]], max_tokens: int, index: int,
                      timeout: float, on_delta: OnDelta, received: list[str]) -> ModelReply:
        """One streamed call: each delta goes to ``on_delta`` as it arrives; returns the accounted reply."""
        async with contextlib.aclosing(self._adapters.invoke_stream(
                call.model, messages, call.temperature, max_tokens, self._request_id, index, timeout,
                **given(self._options))) as chunks:
            async for item in chunks:
                if isinstance(item, ModelReply):
                    return item
                received.append(item)
                await on_delta(item)
        raise Unavailable(f"adapters: the stream of {call.model!r} ended without its final reply")

    def _estimate_used(self, outcome: CallOutcome, messages: list[tuple[str, str]], received: list[str]) -> None:
        """Account a call cut off in flight (the caller went away). The adapters' own account cannot
        reach a cancelled caller, so the router estimates what was used from the prompt and the text
        received, priced from the catalog as the adapters price it."""
        outcome.input_tokens = sum(estimate_tokens(content) for _, content in messages)
        outcome.output_tokens, outcome.tokens_estimated = estimate_tokens("".join(received)), True
        option = self._catalog.get(outcome.model)
        if option is not None:
            exact = (outcome.input_tokens * Decimal(str(option.input_usd_per_mtok))
                     + outcome.output_tokens * Decimal(str(option.output_usd_per_mtok)))
            outcome.cost_micro_usd = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def given(options: CallOptions) -> dict[str, CallOptions]:
    """``options=`` only when some are set: in-process adapters written before options existed
    (training's, tests') keep working for requests that set none."""
    return {"options": options} if options != CallOptions() else {}


def left(deadline: float, floor: float = 0.0) -> float:
    """Seconds left before the deadline. Accounting gets ``floor`` seconds even past it: a call that
    was made must be recorded even when the request ran out of time."""
    remaining = deadline - time.monotonic()
    if remaining <= floor and floor == 0.0:
        raise DeadlineExceeded("the request deadline passed")
    return max(remaining, floor)
