"""The router's core: validate a request, reserve its spend, run the episode over the adapters,
account every call in metering, optionally score the answer. Plain Python (gRPC and HTTP faces
convert into and out of it), collaborators passed in through the constructor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import time
import uuid
from decimal import ROUND_HALF_EVEN, Decimal

from opentelemetry import trace
from opentelemetry.trace import Tracer

from xrouter.common import metrics
from xrouter.adapters.backends import estimate_tokens
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable, XRouterError
from xrouter.common.telemetry import current_trace_id
from xrouter.router.baselines import make_baseline
from xrouter.router.episode import OnDelta, OnEvent, _no_event, run_episode
from xrouter.router.policy import CallOutcome, CallStatus, EpisodeState, ModelOption, Policy, Strategy, ToolCall
from xrouter.router.ports import Adapters, Meter, ModelReply, Scorer, ScoringReference

ROLES = frozenset({"system", "user", "assistant"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request bounds and defaults (from the router's settings)."""

    default_max_turns: int = 3
    max_turns: int = 8
    max_prompt_chars: int = 200_000
    default_cost_lambda: float = 1.0
    default_tenant: str = "default"
    request_timeout_s: float = 60.0
    call_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class RouteRequest:
    messages: list[tuple[str, str]]
    allowed_models: list[str] = dataclasses.field(default_factory=list)
    cost_lambda: float | None = None
    max_cost_usd: float | None = None
    max_turns: int = 0
    max_tokens: int = 0
    tenant: str = ""
    policy: str = ""
    reference: ScoringReference | None = None
    request_id: str = ""


@dataclasses.dataclass(frozen=True)
class RouteResult:
    answer: str
    calls: list[CallOutcome]
    total_cost_micro_usd: int
    strategy: Strategy
    turns_used: int
    turn_limit_reached: bool
    selected_call: int
    policy_kind: str
    policy_version: str
    request_id: str
    trace_id: str
    score: float | None = None
    reward: float | None = None


class RouterCore:
    """Routes requests with the serving policy (or a per-request baseline override)."""

    def __init__(self, adapters: Adapters, meter: Meter, scorer: Scorer | None, catalog: list[ModelOption],
                 policy: Policy, limits: Limits = Limits(), tracer: Tracer | None = None) -> None:
        self._adapters, self._meter, self._scorer = adapters, meter, scorer
        self.catalog = {option.id: option for option in catalog}
        self.policy = policy
        self.limits = limits
        self._tracer = tracer or trace.get_tracer("xrouter.router")

    async def route(self, request: RouteRequest, timeout: float | None = None,
                    on_event: OnEvent = _no_event, stream: bool = False) -> RouteResult:
        """``stream``: the answer reaches ``on_event`` as AnswerDelta events — a final call's text as
        its backend generates it. Cancelling the route cancels the model calls in flight; what they
        consumed is still recorded."""
        deadline = time.monotonic() + min(timeout or math.inf, self.limits.request_timeout_s)
        started = time.perf_counter()
        policy, state, tenant = self._prepare(request)
        metrics.POLICY_REQUESTS.labels(policy.kind, policy.version).inc()
        request_id = request.request_id or uuid.uuid4().hex
        with self._tracer.start_as_current_span("xrouter.route") as span:
            span.set_attributes({"xrouter.request_id": request_id, "xrouter.tenant": tenant,
                                 "xrouter.policy": f"{policy.kind}@{policy.version}",
                                 "xrouter.cost_lambda": state.cost_lambda})
            trace_id = current_trace_id()
            model_seconds = [0.0]
            # Only the per-model budgets of models this request may call apply to it.
            await self._meter.authorize(request_id, tenant, self._reservation(state), _left(deadline),
                                        models=[option.id for option in state.pool])
            outcome, result = "ok", None
            in_flight: dict[int, CallOutcome] = {}
            try:
                invoke = self._invoker(request_id, state.max_tokens, deadline, model_seconds, in_flight)
                result = await run_episode(_Traced(policy, self._tracer), state, invoke, on_event, stream)
            except XRouterError as error:
                outcome = f"error:{error.code.name}"
                raise
            except asyncio.CancelledError:  # the client went away
                outcome = "cancelled"
                raise
            finally:  # calls made are billed whatever happened to the episode
                state.calls.extend(sorted(in_flight.values(), key=lambda c: c.index))  # cut off by a cancel
                # Shielded: a second cancel (client gone during accounting) must not lose ledger rows.
                await asyncio.shield(self._account(request_id, tenant, policy, trace_id, state, request.reference,
                                                   deadline, result.strategy.value if result else "", outcome))
            total = sum(c.cost_micro_usd for c in state.calls)
            span.set_attributes({"xrouter.strategy": result.strategy.value, "xrouter.cost_usd": total / 1e6,
                                 "xrouter.calls": len(state.calls)})
            score = reward = None
            if request.reference is not None and self._scorer is not None:
                score, reward = await self._scorer.score(
                    state.prompt, result.answer, request.reference, total / 1e6, state.cost_lambda, _left(deadline))
                # The scored episode becomes training data (metering's export).
                await self._meter.record_score(request_id, tenant, score, reward, _left(deadline, floor=5.0))
        metrics.ROUTING_OVERHEAD.observe(max(0.0, time.perf_counter() - started - model_seconds[0]))
        return RouteResult(result.answer, state.calls, total, result.strategy, result.turns_used,
                           result.turn_limit_reached, result.selected_call, policy.kind, policy.version,
                           request_id, trace_id, score, reward)

    def _prepare(self, request: RouteRequest) -> tuple[Policy, EpisodeState, str]:
        """Validate the request (every error names its field) and build the first episode state."""
        limits = self.limits
        if not request.messages:
            raise InvalidArgument("messages", "at least one message is required")
        for number, (role, content) in enumerate(request.messages):
            if role not in ROLES:
                raise InvalidArgument(f"messages[{number}].role", f"{role!r} is not one of {sorted(ROLES)}")
            if not content.strip():
                raise InvalidArgument(f"messages[{number}].content", "must not be empty")
        if not any(role == "user" for role, _ in request.messages):
            raise InvalidArgument("messages", "at least one message must have role 'user'")
        size = sum(len(content) for _, content in request.messages)
        if size > limits.max_prompt_chars:
            raise InvalidArgument("messages", f"the conversation is {size} characters; the limit is {limits.max_prompt_chars}")
        for model in request.allowed_models:
            if model not in self.catalog:
                raise NotFound(f"allowed_models: unknown model {model!r} (the catalog has: {', '.join(self.catalog)})")
        lam = limits.default_cost_lambda if request.cost_lambda is None else request.cost_lambda
        if not math.isfinite(lam) or lam < 0:
            raise InvalidArgument("cost_lambda", f"must be a finite number >= 0, got {lam}")
        if request.max_cost_usd is not None and not (math.isfinite(request.max_cost_usd) and request.max_cost_usd > 0):
            raise InvalidArgument("max_cost_usd", f"must be a positive number of dollars, got {request.max_cost_usd}")
        if request.max_tokens < 0:
            raise InvalidArgument("max_tokens", f"must be >= 0, got {request.max_tokens}")
        if request.request_id and not _REQUEST_ID.match(request.request_id):
            raise InvalidArgument("request_id", "must be 1-128 characters of letters, digits and . _ : -")
        policy = make_baseline(request.policy, set(self.catalog)) if request.policy else self.policy
        max_turns = request.max_turns or limits.default_max_turns
        if not policy.min_turns <= max_turns <= limits.max_turns:
            raise InvalidArgument("max_turns", f"must be within [{policy.min_turns}, {limits.max_turns}] "
                                  f"for policy {policy.kind}, got {max_turns}")
        pool = [self.catalog[m] for m in dict.fromkeys(request.allowed_models)] or list(self.catalog.values())
        state = EpisodeState(list(request.messages), pool, lam, request.max_cost_usd, max_turns, request.max_tokens)
        return policy, state, request.tenant or limits.default_tenant

    def _reservation(self, state: EpisodeState) -> int:
        """Upper estimate of the spend to reserve: the cap, or two of the dearest calls a calling turn."""
        if state.max_cost_usd is not None:
            return round(state.max_cost_usd * 1e6)
        dearest = max(state.estimate_call_usd(option) for option in state.pool)
        return math.ceil(dearest * 2 * (state.max_turns - 1) * 1e6)

    def _invoker(self, request_id: str, max_tokens: int, deadline: float,  # type: ignore[no-untyped-def]
                 model_seconds: list[float], in_flight: dict[int, CallOutcome]):
        turn_wall: dict[int, float] = {}

        async def invoke(call: ToolCall, messages: list[tuple[str, str]], index: int, turn: int,
                         on_delta: OnDelta | None = None) -> CallOutcome:
            outcome = CallOutcome(index, turn, call.model, call.system_prompt, call.temperature, CallStatus.OK,
                                  attempted=True)
            started = time.perf_counter()
            received: list[str] = []  # streamed text, to account a call cut off by a cancel
            in_flight[index] = outcome
            with self._tracer.start_as_current_span(f"chat {call.model}", kind=trace.SpanKind.CLIENT) as span:
                span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": call.model,
                                     "gen_ai.request.temperature": call.temperature, "xrouter.call_index": index})
                try:
                    timeout = min(_left(deadline), self.limits.call_timeout_s)
                    if on_delta is None:
                        reply = await self._adapters.invoke(call.model, messages, call.temperature, max_tokens,
                                                            request_id, index, timeout)
                    else:
                        reply = await self._stream(call, messages, max_tokens, request_id, index, timeout,
                                                   on_delta, received)
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
                    outcome.input_tokens, outcome.output_tokens = reply.input_tokens, reply.output_tokens
                    outcome.tokens_estimated, outcome.cost_micro_usd = reply.tokens_estimated, reply.cost_micro_usd
                    span.set_attributes({"gen_ai.response.model": call.model,
                                         "gen_ai.usage.input_tokens": reply.input_tokens,
                                         "gen_ai.usage.output_tokens": reply.output_tokens,
                                         "gen_ai.response.finish_reasons": [reply.finish_reason],
                                         "xrouter.cost_usd": reply.cost_micro_usd / 1e6})
            del in_flight[index]
            metrics.MODEL_CALLS.labels(call.model, outcome.status.name).inc()
            wall = time.perf_counter() - started
            outcome.latency_ms = wall * 1000
            # Calls of one turn overlap: the turn costs its slowest call in wall time.
            model_seconds[0] += max(0.0, wall - turn_wall.get(turn, 0.0))
            turn_wall[turn] = max(turn_wall.get(turn, 0.0), wall)
            return outcome
        return invoke

    async def _stream(self, call: ToolCall, messages: list[tuple[str, str]], max_tokens: int, request_id: str,
                      index: int, timeout: float, on_delta: OnDelta, received: list[str]) -> ModelReply:
        """One streamed call: each delta goes to ``on_delta`` as it arrives; returns the accounted reply."""
        async with contextlib.aclosing(self._adapters.invoke_stream(
                call.model, messages, call.temperature, max_tokens, request_id, index, timeout)) as chunks:
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
        option = self.catalog.get(outcome.model)
        if option is not None:
            exact = (outcome.input_tokens * Decimal(str(option.input_usd_per_mtok))
                     + outcome.output_tokens * Decimal(str(option.output_usd_per_mtok)))
            outcome.cost_micro_usd = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    async def _account(self, request_id: str, tenant: str, policy: Policy, trace_id: str, state: EpisodeState,
                       reference: ScoringReference | None, deadline: float, strategy: str, outcome: str) -> None:
        """Record every attempted call (failed ones too: they may be billed), then settle with what the
        training export needs (the conversation itself is not kept)."""
        attempted = [c for c in state.calls if c.attempted]
        for call in attempted:
            if call.ok:
                metrics.COST.labels(call.model, tenant).inc(call.cost_micro_usd / 1e6)
            await self._meter.record(request_id, tenant, call, policy.version, trace_id, _left(deadline, floor=5.0))
        await self._meter.settle(
            request_id, tenant, strategy, outcome, sum(c.cost_micro_usd for c in attempted), len(attempted),
            _left(deadline, floor=5.0), policy_version=f"{policy.kind}@{policy.version}", trace_id=trace_id,
            cost_lambda=state.cost_lambda, dataset=reference.dataset if reference else "",
            prompt_id=reference.prompt_id if reference else "")


class _Traced:
    """Wraps a policy so that each decision is a span."""

    def __init__(self, policy: Policy, tracer: Tracer) -> None:
        self._policy, self._tracer = policy, tracer
        self.kind, self.version, self.min_turns = policy.kind, policy.version, policy.min_turns

    async def decide(self, state: EpisodeState):  # type: ignore[no-untyped-def]
        with self._tracer.start_as_current_span("xrouter.decide") as span:
            action = await self._policy.decide(state)
            span.set_attributes({"xrouter.turn": state.turn, "xrouter.action": type(action).__name__})
            return action


def _left(deadline: float, floor: float = 0.0) -> float:
    """Seconds left before the deadline. Accounting gets ``floor`` seconds even past it: a call that
    was made must be recorded even when the request ran out of time."""
    left = deadline - time.monotonic()
    if left <= floor and floor == 0.0:
        raise DeadlineExceeded("the request deadline passed")
    return max(left, floor)
