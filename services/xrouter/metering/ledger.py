"""The cost ledger's domain operations in plain synchronous SQLAlchemy (no gRPC here).

Each public method of :class:`Ledger` is one transaction (two when a concurrent insert of the same
key wins a race). Schema in ``schema.py``, budget rules in ``budgets.py``, queries in ``usage.py``,
keys in ``auth.py``. Money is integer micro-dollars; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import re

from xrouter.common.bounds import check_finite, check_identifier, check_micro_usd, check_name, check_tokens, shown
from xrouter.common.errors import AlreadyExists, InvalidArgument
from xrouter.metering import auth, budgets, calls, feedback, migrate, settlements, usage
from xrouter.metering.budgets import PERIODS, Authorization, period_start, usd
from xrouter.metering.feedback import FeedbackRecord
from xrouter.metering.schema import UTC, LedgerCall, RequestSummary, Reservation
from xrouter.metering.store import session_factory, session_scope
from xrouter.metering.usage import BUCKETS, ModelUsage, Usage, UsageBucket

__all__ = ["Authorization", "CallRecord", "FeedbackRecord", "Ledger", "LedgerCall", "ModelUsage", "PERIODS", "Reservation",
           "Settlement", "Usage", "UsageBucket", "period_start", "usd", "utc_now"]

CALL_ROLES = frozenset({"tool", "router"})  # who made a call: a pool model, or the router LM itself
CALL_STATUSES = frozenset(
    {"CALL_STATUS_OK", "CALL_STATUS_ERROR", "CALL_STATUS_TIMEOUT", "CALL_STATUS_SKIPPED_BUDGET"})
MAX_BUDGET_MICRO_USD = 10**15  # a billion dollars a period: sums with it stay far below int64
MAX_LATENCY_MS = 86_400_000.0  # a call that took more than a day did not take that long
MAX_COST_LAMBDA = 1e6  # as the router's cost_lambda (router/core.py)
MAX_ABS_REWARD = 1e6
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})
_OUTCOME = re.compile(r"ok|cancelled|error:[A-Z_]{1,64}")
MAX_MESSAGES_CHARS = 1_000_000  # a kept conversation larger than this is refused, not truncated
MAX_RESPONSE_CHARS = 4_000_000  # a stored response (for idempotent retries); the router keeps under it
T = TypeVar("T")


def utc_now() -> dt.datetime:
    """The default clock: now, timezone-aware UTC."""
    return dt.datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class CallRecord:
    """One model call as the router reports it; ``status`` is a CallStatus name."""

    request_id: str
    call_index: int
    tenant: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_micro_usd: int
    latency_ms: float
    status: str
    policy_version: str = ""
    trace_id: str = ""
    role: str = "tool"

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field."""
        _ids(self.request_id, self.tenant)
        check_name(self.model, "model", required=True)
        check_name(self.policy_version, "policy_version")
        check_name(self.trace_id, "trace_id")
        _non_negative(self.call_index, "call_index")
        check_tokens(self.input_tokens, "input_tokens")
        check_tokens(self.output_tokens, "output_tokens")
        check_micro_usd(self.cost_micro_usd, "cost_micro_usd")
        check_finite(self.latency_ms, "latency_ms", 0.0, MAX_LATENCY_MS)
        if self.status not in CALL_STATUSES:
            raise InvalidArgument("status", f"must be one of {', '.join(sorted(CALL_STATUSES))}, got {self.status!r}")
        if self.role not in CALL_ROLES:
            raise InvalidArgument("role", f"must be one of {', '.join(sorted(CALL_ROLES))} (empty: tool), got "
                                  f"{self.role[:64]!r}")


@dataclasses.dataclass(frozen=True)
class Settlement:
    """How a request ended (Settle): the summary the ledger keeps, the header of an episode."""

    request_id: str
    tenant: str
    strategy: str
    outcome: str
    total_cost_micro_usd: int
    calls: int
    policy_version: str = ""
    trace_id: str = ""
    cost_lambda: float | None = None
    dataset: str = ""
    prompt_id: str = ""
    messages: tuple[tuple[str, str], ...] = ()  # (role, content), only when the router keeps them
    response_json: str = ""  # the router's final response or error, replayed to a retry of request_id
    returned_call_index: int | None = None  # whose answer the user got verbatim; None: no single call's
    # How an exploring router chose the first call (all None when it did not explore).
    exploration_epsilon: float | None = None
    first_call_probability: float | None = None
    first_call_explored: bool | None = None
    # The request's calls, written in the settlement's transaction (idempotent as Record).
    call_records: tuple[CallRecord, ...] = ()

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad field."""
        _ids(self.request_id, self.tenant)
        indexes: set[int] = set()
        for number, call in enumerate(self.call_records):
            field = f"call_records[{number}]"
            try:
                call.validate()
            except InvalidArgument as error:
                raise InvalidArgument(f"{field}.{error.field}", error.message.removeprefix(f"{error.field}: ")) from None
            if (call.request_id, call.tenant) != (self.request_id, self.tenant):
                wrong = "request_id" if call.request_id != self.request_id else "tenant"
                raise InvalidArgument(f"{field}.{wrong}", f"must be empty or this Settle's {wrong}")
            if call.call_index in indexes:
                raise InvalidArgument(f"{field}.call_index", f"{call.call_index} appears twice in this Settle")
            indexes.add(call.call_index)
        check_micro_usd(self.total_cost_micro_usd, "total_cost_micro_usd")
        _non_negative(self.calls, "calls")
        if self.calls < len(self.call_records):
            raise InvalidArgument("calls", f"{self.calls}, but {len(self.call_records)} call_records are carried")
        if self.returned_call_index is not None:
            _non_negative(self.returned_call_index, "returned_call_index")
            if self.call_records and self.returned_call_index not in indexes:
                raise InvalidArgument("returned_call_index", f"{self.returned_call_index} is none of the carried "
                                      f"calls' call_index {sorted(indexes)}")
        # "" is what a summary row holds while only its score has arrived (RecordScore first): a
        # settlement with it would read as unsettled, and a retry of its request would run again.
        if not _OUTCOME.fullmatch(self.outcome):
            raise InvalidArgument("outcome", f"{shown(self.outcome)} is not ok, cancelled or error:<CODE>")
        check_name(self.strategy, "strategy", max_chars=64)
        for name in ("policy_version", "trace_id", "dataset", "prompt_id"):
            check_name(getattr(self, name), name)
        if self.cost_lambda is not None:
            check_finite(self.cost_lambda, "cost_lambda", 0.0, MAX_COST_LAMBDA)
        for number, (role, _) in enumerate(self.messages):
            if role not in MESSAGE_ROLES:
                raise InvalidArgument(f"messages[{number}].role", f"must be one of {sorted(MESSAGE_ROLES)}")
        if self.exploration_epsilon is not None:
            if not 0.0 < self.exploration_epsilon <= 1.0:
                raise InvalidArgument("exploration.epsilon", f"must be within (0, 1], got {self.exploration_epsilon}")
            if not 0.0 < (self.first_call_probability or 0.0) <= 1.0:
                raise InvalidArgument("exploration.first_call_probability",
                                      f"must be within (0, 1], got {self.first_call_probability}")
        size = sum(len(role) + len(content) for role, content in self.messages)
        if size > MAX_MESSAGES_CHARS:
            raise InvalidArgument("messages", f"{size} characters; at most {MAX_MESSAGES_CHARS} are kept")
        if len(self.response_json) > MAX_RESPONSE_CHARS:
            raise InvalidArgument("response_json", f"{len(self.response_json)} characters; at most "
                                  f"{MAX_RESPONSE_CHARS} are kept")


def is_transient(error: sa.exc.DBAPIError) -> bool:
    """A deadlock or serialization failure (SQLSTATE class 40): the transaction may simply be retried."""
    return str(getattr(error.orig, "sqlstate", "") or "").startswith("40")


def validate_authorize(request_id: str, tenant: str, estimate_micro_usd: int, models: Sequence[str]) -> None:
    """Raise InvalidArgument naming the first bad field of an Authorize."""
    _ids(request_id, tenant)
    check_micro_usd(estimate_micro_usd, "estimate_micro_usd")
    if any(not model for model in models):
        raise InvalidArgument("models", "must not contain an empty model name")


def validate_score(request_id: str, tenant: str, score: float, reward: float = 0.0) -> None:
    """Raise InvalidArgument naming the first bad field of a RecordScore."""
    _ids(request_id, tenant)
    if not 0.0 <= score <= 1.0:
        raise InvalidArgument("score", f"must be within [0, 1], got {score}")
    # score · (K − min(λ·cost, cost_max)): bounded by the reward service's K, never NaN or infinite.
    check_finite(reward, "reward", -MAX_ABS_REWARD, MAX_ABS_REWARD)



def _ids(request_id: str, tenant: str) -> None:
    """Both bounded (common/bounds.py): an oversized key would fail in the database's index, which
    must never look like an outage."""
    check_identifier(request_id, "request_id")
    check_identifier(tenant, "tenant")


def _non_negative(value: float, field: str) -> None:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")


class Ledger:
    """The ledger on one database. Blocking: the gRPC layer runs these methods in worker threads."""

    def __init__(self, engine: Engine, reservation_ttl_s: float,
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        if reservation_ttl_s <= 0:
            raise ValueError(f"reservation_ttl_s must be positive, got {reservation_ttl_s}")
        self._engine = engine
        self._sessions = session_factory(engine)
        self._ttl = dt.timedelta(seconds=reservation_ttl_s)
        self.now = clock

    @property
    def reservation_ttl(self) -> dt.timedelta:
        """How long a reservation holds budget when its request never settles."""
        return self._ttl

    @property
    def engine(self) -> Engine:
        """The database engine (health checks, exports)."""
        return self._engine

    def create_schema(self) -> None:
        """Bring the database to the newest migration (tests and the embedded default; production
        runs ``xrouter db upgrade`` instead)."""
        migrate.upgrade(self._engine)

    def ping(self) -> None:
        """One round trip to the database; raises what the driver raises when it is down."""
        with self._engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a transaction, again (twice at most) when it may succeed on a second try:
        a concurrent insert of the same key won (the retry sees that row: read-then-insert upserts
        race only that way), the database aborted a deadlock or serialization failure, or the
        connection was one the server had dropped (a restart; the pool is fresh now). Every
        operation here is idempotent, so a retry never counts anything twice."""
        for attempt in range(3):
            try:
                with session_scope(self._sessions) as session:
                    return work(session)
            except IntegrityError:
                if attempt:
                    raise
            except sa.exc.DBAPIError as error:
                if attempt == 2 or not (is_transient(error) or error.connection_invalidated):
                    raise
        raise AssertionError("unreachable")

    # --- budgets --------------------------------------------------------------------------------

    def authorize(self, request_id: str, tenant: str, estimate_micro_usd: int,
                  models: Sequence[str] = ()) -> Authorization:
        """Reserve ``estimate_micro_usd`` for a request that may call ``models`` (empty: any), or
        raise ResourceExhausted naming the hard budget it would pass (see budgets.py)."""
        validate_authorize(request_id, tenant, estimate_micro_usd, models)
        return self._transaction(lambda s: budgets.authorize(
            s, request_id, tenant, estimate_micro_usd, models, self.now(), self._ttl))

    def set_budget(self, tenant: str, period: str, limit_micro_usd: int | None,
                   soft_limit_micro_usd: int | None = None, model: str = "") -> None:
        """Set a tenant's hard and soft limits for "day" or "month", for all models ("") or one;
        None is no limit, and a budget with neither is removed."""
        check_identifier(tenant, "tenant")
        check_name(model, "model")
        for name, limit in (("limit_micro_usd", limit_micro_usd), ("soft_limit_micro_usd", soft_limit_micro_usd)):
            if limit is not None and limit > MAX_BUDGET_MICRO_USD:  # (budgets.py refuses negatives)
                raise InvalidArgument(name, f"must be at most {MAX_BUDGET_MICRO_USD} micro-dollars, got {limit}")
        self._transaction(lambda s: budgets.set_budget(
            s, tenant, period, limit_micro_usd, soft_limit_micro_usd, model, self.now()))

    # --- writes from the router -----------------------------------------------------------------

    def record(self, call: CallRecord, at: dt.datetime | None = None) -> bool:
        """Store one model call made at ``at`` (default now) and consume it from the request's
        reservation; True when it was already recorded with the same content. A changed duplicate
        raises AlreadyExists naming the differing fields."""
        outcome = self.record_many([call], at)[0]
        if isinstance(outcome, AlreadyExists):
            raise outcome
        return outcome

    def record_many(self, records: Sequence[CallRecord],
                    at: dt.datetime | Sequence[dt.datetime] | None = None) -> list[bool | AlreadyExists]:
        """Store many calls in one transaction (group commit), made at ``at`` (one time for all,
        one per call, or now): per call False (new), True (a duplicate with the same content) or
        the AlreadyExists refusal of a changed duplicate."""
        for call in records:
            call.validate()
        if at is None or isinstance(at, dt.datetime):
            times: Sequence[dt.datetime] = [at or self.now()] * len(records)
        else:
            times = at
        return self._transaction(lambda s: calls.insert_many(s, records, times))

    def settle(self, summary: Settlement, at: dt.datetime | None = None) -> list[bool]:
        """Write the calls the settlement carries, release the request's reservation and store (or
        overwrite) its summary, in one transaction; repeatable. A score already recorded for the
        request is kept, and so is a stored response when this settlement carries none. Returns,
        per carried call, whether it was recorded before; a changed one raises AlreadyExists and
        nothing is written."""
        return self.settle_many([summary], at)[0]

    def settle_many(self, summaries: Sequence[Settlement],
                    at: dt.datetime | Sequence[dt.datetime] | None = None,
                    without_reservation_rows: frozenset[str] = frozenset()) -> list[list[bool]]:
        """Settle many requests in one transaction (group commit), in order, at ``at`` (one time
        for all, one per settlement, or now): per settlement, per carried call, whether it was
        recorded before. One changed call refuses the whole transaction (AlreadyExists). Requests in
        ``without_reservation_rows`` were reserved in memory only: there is no row to release."""
        for summary in summaries:
            summary.validate()
        times = [at or self.now()] * len(summaries) if at is None or isinstance(at, dt.datetime) else at
        return self._transaction(lambda s: settlements.settle_many(s, summaries, times, without_reservation_rows))

    def seen(self, request_id: str) -> bool:
        """Whether ``request_id`` was reserved or settled before."""
        with session_scope(self._sessions) as session:
            return budgets.seen(session, request_id)

    def reserve_many(self, reservations: Sequence[tuple[str, str, str, int, Sequence[str], dt.datetime,
                                                        dt.datetime]]) -> list[bool]:
        """Write reservations admitted from the in-memory totals (totals.py) in one transaction:
        per reservation True (new work) or False (its request_id was seen before)."""
        return self._transaction(lambda s: budgets.reserve_many(s, reservations))

    def record_score(self, request_id: str, tenant: str, score: float, reward: float,
                     at: dt.datetime | None = None) -> None:
        """Attach the verifier's score and reward to a request's summary (created if the request
        has not settled yet); the last score wins."""
        refusal = self.record_score_many([(request_id, tenant, score, reward)], at)[0]
        if refusal is not None:
            raise refusal

    def record_score_many(self, scores: Sequence[tuple[str, str, float, float]],
                          at: dt.datetime | Sequence[dt.datetime] | None = None) -> list[AlreadyExists | None]:
        """Attach many (request_id, tenant, score, reward) in one transaction, in order: per score
        None (stored) or the refusal of a request that belongs to another tenant."""
        for request_id, tenant, score, reward in scores:
            validate_score(request_id, tenant, score, reward)
        times = [at or self.now()] * len(scores) if at is None or isinstance(at, dt.datetime) else at

        def work(session: Session) -> list[AlreadyExists | None]:
            outcomes: list[AlreadyExists | None] = []
            for (request_id, tenant, score, reward), when in zip(scores, times, strict=True):
                row = session.get(RequestSummary, request_id)
                if row is not None and row.tenant != tenant:
                    outcomes.append(AlreadyExists(f"request {request_id} belongs to another tenant"))
                    continue
                if row is None:
                    row = RequestSummary(request_id=request_id, tenant=tenant, strategy="", outcome="",
                                         total_cost_micro_usd=0, calls=0, settled_at=when)
                    session.add(row)
                row.score, row.reward, row.scored_at = score, reward, when
                session.flush()
                outcomes.append(None)
            return outcomes

        return self._transaction(work)

    def record_feedback(self, item: FeedbackRecord, at: dt.datetime | None = None) -> tuple[bool, float]:
        """Store a verdict on a settled request's answer (metering/feedback.py): (duplicate, score
        stored). A concurrent identical verdict loses the key's race and is retried as a duplicate."""
        item.validate()
        when = at or self.now()
        return self._transaction(lambda s: feedback.record(s, item, when))

    # --- reads ----------------------------------------------------------------------------------

    def usage(self, tenant: str, start: dt.datetime | None = None, end: dt.datetime | None = None,
              model: str = "", bucket: str | None = None) -> Usage:
        """Spend of ``tenant`` by model over calls made in [start, end) (an unset bound is open),
        only ``model`` when set, and per UTC ``bucket`` ("hour", "day", "month") when asked."""
        check_identifier(tenant, "tenant")
        if start is not None and end is not None and end < start:
            raise InvalidArgument("end", "must not be before start")
        if bucket is not None and bucket not in BUCKETS:
            raise InvalidArgument("bucket", f"must be one of {', '.join(BUCKETS)}, got {bucket!r}")
        with session_scope(self._sessions) as session:
            return usage.query(session, tenant, start, end, model, bucket)

    # --- API keys -------------------------------------------------------------------------------

    def find_tenant_key(self, digest: str) -> auth.Identity | None:
        """The tenant identity of an unrevoked key with SHA-256 ``digest``."""
        with session_scope(self._sessions) as session:
            return auth.find_tenant_key(session, digest)

    def create_api_key(self, tenant: str, label: str = "", role: str = "tenant") -> tuple[str, str]:
        """Issue a key for ``tenant``: (key id, secret). The secret is not stored."""
        return self._transaction(lambda s: auth.create_key(s, tenant, label, self.now(), role))

    def list_api_keys(self, tenant: str = "", include_revoked: bool = False) -> list[auth.KeyInfo]:
        """Keys (never their secrets), oldest first."""
        with session_scope(self._sessions) as session:
            return auth.list_keys(session, tenant, include_revoked)

    def rotate_api_key(self, key_id: str) -> tuple[str, str]:
        """A new key in place of ``key_id`` (revoked at once): (new key id, secret)."""
        return self._transaction(lambda s: auth.rotate_key(s, key_id, self.now()))

    def revoke_api_key(self, key_id: str) -> None:
        """Revoke a key by id."""
        self._transaction(lambda s: auth.revoke_key(s, key_id, self.now()))
