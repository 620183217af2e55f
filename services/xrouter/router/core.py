"""The router's core: validate a request, reserve its spend, run the episode over the adapters,
account every call in metering, optionally score the answer. Plain Python (gRPC and HTTP faces
convert into and out of it), collaborators passed in through the constructor."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
import uuid

from opentelemetry import trace
from opentelemetry.trace import Tracer

from xrouter.common import bounds, metrics
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import AlreadyExists, InvalidArgument, XRouterError
from xrouter.common.telemetry import current_trace_id
from xrouter.router import replay
from xrouter.router.baselines import make_baseline
from xrouter.router.episode import OnEvent, _no_event, run_episode
from xrouter.router.exploration import ExplorationRates, ExploringPolicy
from xrouter.router.lm.charge import charge_router
from xrouter.router.policy import CallOutcome, EpisodeState, ModelOption, Policy, Strategy
from xrouter.router.ports import Adapters, Exploration, Meter, Scorer, ScoringReference
from xrouter.router.accounting import metrics_for_costs, settle_with_calls
from xrouter.router.calls import CallMaker, left
from xrouter.router.request_checks import MAX_NAME_CHARS, check_reference, pool_for_options
from xrouter.router.unbudgeted import UnbudgetedTenants

ROLES = frozenset({"system", "user", "assistant"})
# Bounds of the fields the ledger, the reward service and the metrics see (with common/bounds.py).
MAX_COST_LAMBDA = 1e6  # λ·cost stays a sane reward; the bundled policy is trained on λ ≤ 1000


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
    max_messages: int = 1_000
    # How long a retry waits for an earlier attempt with the same request_id to finish before
    # answering ALREADY_EXISTS (nothing spent either way); bounded by the request's deadline.
    in_flight_wait_s: float = 10.0
    # ε-exploration of the first call, per tenant (router/exploration.py); none by default.
    exploration: ExplorationRates = ExplorationRates()
    # How long "no hard budget applies" from metering lets router-made request ids in without an
    # Authorize round trip (router/unbudgeted.py: a new budget is enforced at most this late).
    unbudgeted_admission_s: float = 5.0


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
    # The caller sent no request_id and a face made this one up (the SSE stream's id): no retry
    # can carry it, so metering may hold its reservation without a ledger row, as for an empty id.
    request_id_generated: bool = False
    temperature: float | None = None  # replaces the policy's own for every call when set
    options: CallOptions = CallOptions()


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
    replayed: bool = False  # the stored response of an earlier request with this request_id


class RouterCore:
    """Routes requests with the serving policy (or a per-request baseline override)."""

    def __init__(self, adapters: Adapters, meter: Meter, scorer: Scorer | None, catalog: list[ModelOption],
                 policy: Policy, limits: Limits = Limits(), tracer: Tracer | None = None) -> None:
        self._adapters, self._meter, self._scorer = adapters, meter, scorer
        self.catalog = {option.id: option for option in catalog}
        self.policy = policy
        self.limits = limits
        self.tracer = tracer or trace.get_tracer("xrouter.router")  # public: the HTTP face's server spans too
        self._rng = random.Random()  # exploration's draws (shared by the per-request wrappers)
        self._unbudgeted = UnbudgetedTenants(limits.unbudgeted_admission_s)

    @property
    def meter(self) -> Meter:
        """The ledger's client (the feedback desk writes through it too)."""
        return self._meter

    async def route(self, request: RouteRequest, timeout: float | None = None,
                    on_event: OnEvent = _no_event, stream: bool = False) -> RouteResult:
        """``stream``: the answer reaches ``on_event`` as AnswerDelta events — a final call's text as
        its backend generates it. Cancelling the route cancels the model calls in flight; what they
        consumed is still recorded."""
        deadline = time.monotonic() + min(timeout or math.inf, self.limits.request_timeout_s)
        started = time.perf_counter()
        policy, state, tenant = self._prepare(request)  # every field checked before anything is spent
        if request.reference is not None:  # what the reward service would refuse after the calls, refused now
            if self._scorer is None:
                raise InvalidArgument("reference", "this router has no reward service to score answers with "
                                      "(XROUTER_ROUTER_REWARD_TARGET is not set)")
            await self._scorer.check(request.reference, left(deadline))
        explorer = self._explorer(policy, tenant, request)
        request_id = request.request_id or uuid.uuid4().hex
        generated = request.request_id_generated or not request.request_id  # no retry can carry it
        print_ = replay.fingerprint(request)
        with self.tracer.start_as_current_span("xrouter.route") as span:
            span.set_attributes({"xrouter.request_id": request_id, "xrouter.tenant": tenant,
                                 "xrouter.policy": f"{policy.kind}@{policy.version}",
                                 "xrouter.cost_lambda": state.cost_lambda})
            if request.options.user:  # the caller's end user, for abuse tracing (OpenAI's ``user``)
                span.set_attribute("xrouter.end_user", request.options.user)
            trace_id = current_trace_id()
            # Reserve (the budget check) for new work, or get back what an earlier request with
            # this id answered. Only the per-model budgets of models this request may call apply.
            # Meanwhile the policy readies what it needs of the request off the event loop (the
            # compact policy: the query's embedding); nothing is spent before admission.
            ready = _prepare_policy(policy, state)
            try:
                earlier = await self._admit(request_id, tenant, state, deadline, print_, generated)
            except BaseException:
                _drop(ready)
                raise
            if earlier is not None:
                _drop(ready)
                span.set_attribute("xrouter.replayed", True)
                return earlier
            metrics.POLICY_REQUESTS.labels(policy.kind, policy.version).inc()
            outcome, episode, result, stored = "ok", None, None, ""
            caller = CallMaker(self._adapters, self.catalog, self.tracer, request_id, state.max_tokens, deadline,
                               self.limits.call_timeout_s, request.temperature, request.options)
            try:
                if ready is not None:  # admitted: a failed preparation fails the request, which is then settled
                    await ready
                episode = await run_episode(_Traced(explorer or policy, self.tracer), state, caller, on_event,
                                            stream)
                charge_router(policy, state)  # the LM policy's own tokens: priced calls like any other
                total = sum(c.cost_micro_usd for c in state.calls)
                span.set_attributes({"xrouter.strategy": episode.strategy.value, "xrouter.cost_usd": total / 1e6,
                                     "xrouter.calls": len(state.calls)})
                score = reward = None
                if request.reference is not None and self._scorer is not None:
                    score, reward = await self._scorer.score(
                        state.prompt, episode.answer, request.reference, total / 1e6, state.cost_lambda,
                        left(deadline))
                result = RouteResult(episode.answer, state.calls, total, episode.strategy, episode.turns_used,
                                     episode.turn_limit_reached, episode.selected_call, policy.kind,
                                     policy.version, request_id, trace_id, score, reward)
                # Kept only under a client's own id: only a client that chose the id retries with it,
                # and answers are not kept for nothing.
                stored = replay.encode_result(result, print_) if request.request_id else ""
            except XRouterError as error:
                outcome = f"error:{error.code.name}"
                stored = replay.encode_error(error, print_) if request.request_id else ""
                raise
            except BaseException as error:  # cancelled (the client went away), or a bug: a retry learns the attempt died
                outcome = "cancelled" if isinstance(error, asyncio.CancelledError) else "error:INTERNAL"
                stored = replay.encode_error(XRouterError(f"the attempt ended without an answer ({outcome})"),
                                             print_) if request.request_id else ""
                raise
            finally:  # calls made are billed whatever happened to the episode; the response is kept
                state.calls.extend(sorted(caller.in_flight.values(), key=lambda c: c.index))  # cut off by a cancel
                charge_router(policy, state)  # (once: a no-op when the episode ended normally)
                # What a verdict on the answer is about: the call whose text the user got, if one did.
                returned = episode.selected_call if episode and outcome == "ok" and episode.selected_call >= 0 else None
                # Shielded: a second cancel (client gone during accounting) must not lose ledger rows.
                await asyncio.shield(self._account(request_id, tenant, policy, trace_id, state, request.reference,
                                                   deadline, episode.strategy.value if episode else "", outcome,
                                                   stored, returned, _behaviour(explorer)))
            if result.score is not None:
                # The scored episode becomes training data (metering's export).
                await self._meter.record_score(request_id, tenant, result.score, result.reward or 0.0,
                                               left(deadline, floor=5.0))
        metrics.ROUTING_OVERHEAD.observe(max(0.0, time.perf_counter() - started - caller.model_seconds))
        return result

    def _explorer(self, policy: Policy, tenant: str, request: RouteRequest) -> ExploringPolicy | None:
        """The serving policy wrapped for ε-exploration when the tenant's rate is above 0; None serves it
        as is. Only the compact policy explores: its later turns were trained on first calls it did not
        choose, which baselines and the LM policy were not; a per-request override is an evaluation."""
        epsilon = self.limits.exploration.rate(tenant)
        if epsilon <= 0.0 or request.policy or policy.kind != "compact":
            return None
        return ExploringPolicy(policy, epsilon, rng=self._rng)

    async def _admit(self, request_id: str, tenant: str, state: EpisodeState, deadline: float,
                     print_: str, generated: bool) -> RouteResult | None:
        """None when this is new work (reserved now, after the budget check); the earlier response
        when the id was answered before; waits (bounded) while an earlier attempt is in flight,
        then ALREADY_EXISTS. Nothing is spent on any path but the first. ``generated``: the id is
        the router's own (no retry can carry it), which spares metering a ledger row."""
        self._meter.check_room()  # new work only while its accounting can be kept
        models = [option.id for option in state.pool]
        if generated and self._unbudgeted.admits(tenant, models):  # nothing to check, no attempt to find
            metrics.ADMITTED_WITHOUT_AUTHORIZE.inc()
            return None
        give_up = min(deadline, time.monotonic() + self.limits.in_flight_wait_s)
        delay = 0.05
        while True:
            admission = await self._meter.authorize(request_id, tenant, self._reservation(state), left(deadline),
                                                    models=models, generated=generated)
            seen = admission.state if admission is not None else "new"
            if seen == "new":
                if admission is not None:
                    self._unbudgeted.note(tenant, models, admission.remaining_micro_usd,
                                          admission.soft_limit_exceeded)
                return None
            if seen == "settled":
                return replay.decode(admission.response_json, request_id, print_)  # type: ignore[union-attr]
            if seen == "abandoned":
                raise AlreadyExists(f"request_id {request_id} was started earlier and never finished (that attempt "
                                    "died and its reservation expired; calls it made are billed): send a new "
                                    "request_id")
            if time.monotonic() + delay > give_up:
                raise AlreadyExists(f"request_id {request_id} is still being answered by an earlier attempt: "
                                    "retry with the same request_id shortly to get its response")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _prepare(self, request: RouteRequest) -> tuple[Policy, EpisodeState, str]:
        """Validate the request (every error names its field, every field is bounded) and build
        the first episode state. Runs before anything is reserved or spent."""
        limits = self.limits
        if not request.messages:
            raise InvalidArgument("messages", "at least one message is required")
        if len(request.messages) > limits.max_messages:
            raise InvalidArgument("messages", f"{len(request.messages)} messages; the limit is {limits.max_messages}")
        for number, (role, content) in enumerate(request.messages):
            if role not in ROLES:
                raise InvalidArgument(f"messages[{number}].role", f"{bounds.shown(role)} is not one of {sorted(ROLES)}")
            if not content.strip():
                raise InvalidArgument(f"messages[{number}].content", "must not be empty")
        if not any(role == "user" for role, _ in request.messages):
            raise InvalidArgument("messages", "at least one message must have role 'user'")
        size = sum(len(content) for _, content in request.messages)
        if size > limits.max_prompt_chars:
            raise InvalidArgument("messages", f"the conversation is {size} characters; the limit is {limits.max_prompt_chars}")
        bounds.check_identifier(request.tenant, "tenant", required=False)
        bounds.check_identifier(request.request_id, "request_id", required=False)
        if len(request.allowed_models) > len(self.catalog):
            raise InvalidArgument("allowed_models", f"{len(request.allowed_models)} entries; the catalog has "
                                  f"{len(self.catalog)} models")
        for number, model in enumerate(request.allowed_models):
            if model not in self.catalog:
                raise InvalidArgument(f"allowed_models[{number}]", f"unknown model {bounds.shown(model)} (the catalog "
                                      f"has: {', '.join(self.catalog)})")
        lam = limits.default_cost_lambda if request.cost_lambda is None else request.cost_lambda
        if not (math.isfinite(lam) and 0 <= lam <= MAX_COST_LAMBDA):
            raise InvalidArgument("cost_lambda", f"must be a finite number within [0, {MAX_COST_LAMBDA:.0f}], got {lam}")
        if request.max_cost_usd is not None:
            bounds.check_usd(request.max_cost_usd, "max_cost_usd")
        if len(request.policy) > MAX_NAME_CHARS:
            raise InvalidArgument("policy", f"is {len(request.policy)} characters; at most {MAX_NAME_CHARS}")
        if request.reference is not None:
            check_reference(request.reference)
        if request.temperature is not None and not (math.isfinite(request.temperature)
                                                    and 0.0 <= request.temperature <= 2.0):
            raise InvalidArgument("temperature", f"must be within [0, 2], got {request.temperature}")
        policy = make_baseline(request.policy, set(self.catalog)) if request.policy else self.policy
        max_turns = request.max_turns or limits.default_max_turns
        if not policy.min_turns <= max_turns <= limits.max_turns:
            raise InvalidArgument("max_turns", f"must be within [{policy.min_turns}, {limits.max_turns}] "
                                  f"for policy {policy.kind}, got {max_turns}")
        pool = [self.catalog[m] for m in dict.fromkeys(request.allowed_models)] or list(self.catalog.values())
        pool = pool_for_options(pool, request.options, policy)
        # Each call is held to its own model's limit (the invoker clamps); past the largest, no
        # model could honour the request.
        most = max(option.max_output_tokens for option in pool)
        if request.max_tokens < 0 or (most and request.max_tokens > most):
            raise InvalidArgument("max_tokens", f"must be within [0, {most or 'the models limits'}] for the models "
                                  f"this request may call, got {request.max_tokens}")
        state = EpisodeState(list(request.messages), pool, lam, request.max_cost_usd, max_turns, request.max_tokens)
        return policy, state, request.tenant or limits.default_tenant

    def _reservation(self, state: EpisodeState) -> int:
        """Upper estimate of the spend to reserve: the cap, or two of the dearest calls a calling turn."""
        if state.max_cost_usd is not None:
            return round(state.max_cost_usd * 1e6)
        dearest = max(state.estimate_call_usd(option) for option in state.pool)
        return min(math.ceil(dearest * 2 * (state.max_turns - 1) * 1e6), bounds.MAX_REQUEST_MICRO_USD)

    async def _account(self, request_id: str, tenant: str, policy: Policy, trace_id: str, state: EpisodeState,
                       reference: ScoringReference | None, deadline: float, strategy: str, outcome: str,
                       response_json: str = "", returned_call: int | None = None,
                       exploration: Exploration | None = None) -> None:
        """Settle carrying every attempted call (failed ones too: they may be billed) and what the
        training export needs (the conversation itself is not kept): one round trip, and metering
        writes the calls and the settlement in one transaction. Every call has ended by now (a
        cancel accounted the ones cut off), so none needs a Record of its own."""
        attempted = [c for c in state.calls if c.attempted]
        metrics_for_costs(attempted, tenant)
        await settle_with_calls(
            self._meter, request_id, tenant, attempted, policy.version, trace_id, left(deadline, floor=5.0),
            strategy=strategy, outcome=outcome, total_cost_micro_usd=sum(c.cost_micro_usd for c in attempted),
            calls=len(attempted), policy_version=f"{policy.kind}@{policy.version}", cost_lambda=state.cost_lambda,
            dataset=reference.dataset if reference else "", prompt_id=reference.prompt_id if reference else "",
            response_json=response_json, returned_call_index=returned_call, exploration=exploration)


def _behaviour(explorer: ExploringPolicy | None) -> Exploration | None:
    """How the first call was chosen, for off-policy correction; None when the router did not explore,
    or when the first action was not a call (exploration only ever draws calls)."""
    if explorer is None or not explorer.log:
        return None
    first = explorer.log[0]
    return Exploration(explorer.epsilon, first.probability, first.explored)


def _prepare_policy(policy: Policy, state: EpisodeState) -> asyncio.Future[None] | None:
    """The policy's ``prepare(state)`` started as a task (None for a policy without one)."""
    prepare = getattr(policy, "prepare", None)
    return None if prepare is None else asyncio.ensure_future(prepare(state))


def _drop(ready: asyncio.Future[None] | None) -> None:
    """Cancel a preparation no decision will use (a worker thread already running finishes unheard)."""
    if ready is not None:
        ready.cancel()
        ready.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning


class _Traced:
    """Wraps a policy so that each decision is a span."""

    def __init__(self, policy: Policy, tracer: Tracer) -> None:
        self._policy, self._tracer = policy, tracer
        self.kind, self.version, self.min_turns = policy.kind, policy.version, policy.min_turns
        self.one_answer = getattr(policy, "one_answer", False)

    async def decide(self, state: EpisodeState):  # type: ignore[no-untyped-def]
        with self._tracer.start_as_current_span("xrouter.decide") as span:
            action = await self._policy.decide(state)
            span.set_attributes({"xrouter.turn": state.turn, "xrouter.action": type(action).__name__})
            return action
