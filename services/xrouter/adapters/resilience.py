"""Per-model resilience: bounded concurrency, a circuit breaker, and retries with jittered backoff
that honour Retry-After, all inside one deadline.

A :class:`ModelGuard` wraps every call on one catalog model. Backends raise :class:`BackendError`
for a failed attempt, saying whether a retry may help and what the attempt consumed; the guard
decides whether to retry, when, and whether the model's circuit opens.

Why not tenacity: rewritten on ``tenacity.AsyncRetrying`` (custom Retry-After wait, stop by attempts or
deadline, a give-up callback for the messages) it passed the same tests but was 19 lines longer and
cost about 4x the per-call overhead (60-90 µs against 14-25 µs for a call that succeeds at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from xrouter.common.errors import DeadlineExceeded, ResourceExhausted, Unavailable, XRouterError

__all__ = ["BackendError", "BreakerState", "CallPolicy", "CircuitBreaker", "ConcurrencyLimit", "ModelGuard"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class CallPolicy:
    """How one model is called; every field can be set per model in the catalog's ``resilience``."""

    timeout_s: float = 60.0  # the model's own deadline; the caller's may be shorter
    max_attempts: int = 3  # first try included
    backoff_base_s: float = 0.2  # full jitter: sleep uniform(0, min(max, base * 2**retry))
    backoff_max_s: float = 5.0
    max_concurrency: int = 16  # calls in flight on the backend
    max_queue: int = 64  # calls waiting for a slot; one more is refused with RESOURCE_EXHAUSTED
    breaker_failures: int = 5  # consecutive failed attempts that open the circuit
    breaker_reset_s: float = 30.0  # how long it stays open before half-open probes
    breaker_probes: int = 1  # calls let through while half-open


class BackendError(Exception):
    """One failed attempt. ``error`` is the domain error the caller sees if no retry saves the call;
    ``retryable`` says whether another attempt may succeed; ``retry_after`` is the backend's own
    wish (seconds); the token counts are what the attempt consumed (and may have been billed)."""

    def __init__(self, error: XRouterError, *, retryable: bool = False, retry_after: float | None = None,
                 input_tokens: int = 0, output_tokens: int = 0, tokens_estimated: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.retry_after = retry_after
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.tokens_estimated = tokens_estimated

    @property
    def backend_fault(self) -> bool:
        """Whether this failure says something about the backend's health (so it counts for the breaker)."""
        return self.retryable or isinstance(self.error, (Unavailable, DeadlineExceeded))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failures`` consecutive backend faults; while open every call fails fast; after
    ``reset_s`` up to ``probes`` calls go through (half-open): a success closes it, a fault reopens it."""

    def __init__(self, model: str, failures: int, reset_s: float, probes: int,
                 clock: Callable[[], float]) -> None:
        self.model = model
        self._threshold, self._reset_s, self._probes = failures, reset_s, probes
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = 0

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._reset_s:
            self._state, self._probing = BreakerState.HALF_OPEN, 0
        return self._state

    def acquire(self) -> bool:
        """Permission for one attempt (raises while open); True when the attempt is a half-open probe."""
        state = self.state
        if state is BreakerState.OPEN:
            wait = self._reset_s - (self._clock() - self._opened_at)
            raise Unavailable(f"model {self.model!r}: circuit open after {self._threshold} consecutive "
                              f"failures; next probe in {wait:.1f}s")
        if state is BreakerState.HALF_OPEN:
            if self._probing >= self._probes:
                raise Unavailable(f"model {self.model!r}: circuit half-open, {self._probing} probe(s) "
                                  "already in flight")
            self._probing += 1
            return True
        return False

    def release(self, probe: bool, outcome: bool | None) -> None:
        """End of an attempt: ``outcome`` True (success), False (backend fault) or None (no verdict:
        the caller went away, or the backend refused the input)."""
        if probe:
            self._probing = max(0, self._probing - 1)
        if outcome is True:
            if self._state is not BreakerState.CLOSED:
                log.info("model %s: circuit closed", self.model)
            self._state, self._consecutive = BreakerState.CLOSED, 0
        elif outcome is False:
            self._consecutive += 1
            if self._state is BreakerState.HALF_OPEN or self._consecutive >= self._threshold:
                if self._state is not BreakerState.OPEN:
                    log.warning("model %s: circuit open after %d consecutive failures", self.model,
                                self._consecutive)
                self._state, self._opened_at = BreakerState.OPEN, self._clock()


class ConcurrencyLimit:
    """At most ``limit`` calls in flight and ``queue`` waiting; the next one is refused at once."""

    def __init__(self, model: str, limit: int, queue: int) -> None:
        self.model = model
        self.limit, self.queue = limit, queue
        self._semaphore = asyncio.Semaphore(limit)
        self.in_flight = 0
        self.waiting = 0

    async def acquire(self) -> None:
        if self.in_flight >= self.limit and self.waiting >= self.queue:
            raise ResourceExhausted(
                f"model {self.model!r}: {self.in_flight} calls in flight and {self.waiting} queued "
                f"(max_concurrency {self.limit}, max_queue {self.queue})",
                subject=f"model:{self.model}", description="per-model concurrency limit reached")
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._semaphore.release()


@dataclasses.dataclass
class Attempts:
    """What the attempts of one call consumed, whatever the outcome (for accounting a failed call)."""

    count: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False

    def add(self, error: BackendError) -> None:
        self.input_tokens += error.input_tokens
        self.output_tokens += error.output_tokens
        if error.input_tokens or error.output_tokens:
            self.tokens_estimated = self.tokens_estimated or error.tokens_estimated


class ModelGuard:
    """Runs attempts on one model within a deadline (a ``loop.time()`` instant)."""

    def __init__(self, model: str, policy: CallPolicy, rng: random.Random | None = None) -> None:
        self.model = model
        self.policy = policy
        loop_time = lambda: asyncio.get_running_loop().time()  # noqa: E731 - the clock the deadline uses
        self.breaker = CircuitBreaker(model, policy.breaker_failures, policy.breaker_reset_s,
                                      policy.breaker_probes, loop_time)
        self.limit = ConcurrencyLimit(model, policy.max_concurrency, policy.max_queue)
        self._rng = rng or random.Random()

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): the backend's Retry-After when it
        gave one, otherwise full jitter over an exponential ceiling."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.policy.backoff_max_s, self.policy.backoff_base_s * 2 ** (retry - 1))
        return self._rng.uniform(0, ceiling)

    async def run(self, attempt: Callable[[], Awaitable[T]], deadline: float, attempts: Attempts,
                  may_retry: Callable[[], bool] = lambda: True) -> T:
        """Call ``attempt`` until it succeeds, fails for good, or the deadline passes (DEADLINE_EXCEEDED).
        ``may_retry`` returning False (e.g. a stream already sent text) stops retries."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                await self.limit.acquire()
        except TimeoutError:
            raise DeadlineExceeded(f"model {self.model!r}: deadline passed while queued behind "
                                   f"{self.limit.in_flight} calls in flight") from None
        try:
            while True:
                probe = self.breaker.acquire()
                attempts.count += 1
                outcome: bool | None = None
                try:
                    async with asyncio.timeout_at(deadline):
                        result = await attempt()
                    outcome = True
                    return result
                except TimeoutError:
                    outcome = False
                    raise DeadlineExceeded(
                        f"model {self.model!r} did not answer within the deadline "
                        f"(attempt {attempts.count})") from None
                except BackendError as error:
                    attempts.add(error)
                    outcome = False if error.backend_fault else None
                    if not error.retryable or not may_retry() or attempts.count >= self.policy.max_attempts:
                        raise self._final(error, attempts) from None
                    delay = self.backoff(attempts.count, error.retry_after)
                    reason = error.error.message
                    if loop.time() + delay >= deadline:
                        raise type(error.error)(*_args(error.error, f"{error.error.message} (no retry: waiting "
                                                       f"{delay:.2f}s would pass the deadline)")) from None
                finally:
                    self.breaker.release(probe, outcome)
                attempts.retries += 1
                log.info("model %s: attempt %d failed (%s); retrying in %.2fs", self.model, attempts.count,
                         reason, delay)
                await asyncio.sleep(delay)
        finally:
            self.limit.release()

    def _final(self, error: BackendError, attempts: Attempts) -> XRouterError:
        if attempts.count == 1 or not error.retryable:
            return error.error
        return type(error.error)(*_args(error.error, f"{error.error.message} (after {attempts.count} attempts)"))


def _args(error: XRouterError, message: str) -> tuple[str, ...]:
    """Constructor arguments to rebuild ``error`` with a new message (InvalidArgument takes a field)."""
    field = getattr(error, "field", None)
    if field is not None:
        return (field, message.removeprefix(f"{field}: "))
    return (message,)
