"""gRPC clients for the adapters, metering and reward services, implementing the router's ports.
Each call carries the remaining deadline, and a failed call comes back as a domain error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from xrouter.adapters.status import failed_call_from_rpc_error
from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.api.reward.v1 import reward_pb2, reward_pb2_grpc
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import DeadlineExceeded, Unavailable, from_rpc_error, from_status
from xrouter.router.auth import Caller
from xrouter.router.policy import CallOutcome, ModelOption
from xrouter.router.ports import Admission, Exploration, ModelReply, ScoringReference
from xrouter.router.journal import SettleJournal
from xrouter.router.settle_coalescing import MAX_IN_FLIGHT, SettleCoalescer, SettleRefused

T = TypeVar("T")


_STATES = {metering_pb2.REQUEST_STATE_IN_FLIGHT: "in_flight", metering_pb2.REQUEST_STATE_SETTLED: "settled",
           metering_pb2.REQUEST_STATE_ABANDONED: "abandoned"}  # NEW and UNSPECIFIED (an older metering): new


class AdaptersClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = adapters_pb2_grpc.AdapterServiceStub(channel)

    async def list_models(self, timeout: float = 10.0) -> list[ModelOption]:
        try:
            reply = await self._stub.ListModels(adapters_pb2.ListModelsRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "adapters") from None
        return [ModelOption(m.id, m.input_usd_per_mtok, m.output_usd_per_mtok, m.description, tuple(m.tags),
                            m.context_tokens, m.max_output_tokens, frozenset(m.options))
                for m in reply.models]

    async def invoke(self, model: str, messages: list[tuple[str, str]], temperature: float, max_tokens: int,
                     request_id: str, call_index: int, timeout: float,
                     options: CallOptions = CallOptions()) -> ModelReply:
        request = _invoke_request(model, messages, temperature, max_tokens, request_id, call_index, options)
        try:
            reply = await self._stub.Invoke(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from None
        return _reply(reply)

    async def invoke_stream(self, model: str, messages: list[tuple[str, str]], temperature: float,
                            max_tokens: int, request_id: str, call_index: int, timeout: float,
                            options: CallOptions = CallOptions()) -> AsyncIterator[str | ModelReply]:
        request = _invoke_request(model, messages, temperature, max_tokens, request_id, call_index, options)
        call = self._stub.InvokeStream(request, timeout=timeout)
        done = None
        try:
            async for chunk in call:
                if chunk.HasField("done"):
                    # Read on to the stream's end (it follows at once): the traced call's client span
                    # ends only there, and would otherwise end whenever the iterator is collected.
                    done = _reply(chunk.done)
                    continue
                yield chunk.delta
            if done is not None:
                yield done
                return
        except grpc.aio.AioRpcError as error:
            raise _failure(error) from None
        finally:
            # Closed early (the client went away, or the episode was cancelled): cancelling the RPC
            # makes the adapters cancel the backend call, so generation stops being paid for.
            call.cancel()
        raise _failure_without_status(model)


def _record_request(call: CallOutcome, policy_version: str, trace_id: str, request_id: str = "",
                    tenant: str = "") -> metering_pb2.RecordRequest:
    """One call for metering; request_id and tenant empty inside a Settle (it supplies its own)."""
    return metering_pb2.RecordRequest(
        request_id=request_id, call_index=call.index, tenant=tenant, model=call.model,
        input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost_micro_usd=call.cost_micro_usd,
        latency_ms=call.latency_ms, status=common_pb2.CallStatus.Value(call.status.value),
        policy_version=policy_version, trace_id=trace_id, role=call.role)


def _invoke_request(model: str, messages: list[tuple[str, str]], temperature: float, max_tokens: int,
                    request_id: str, call_index: int, options: CallOptions) -> adapters_pb2.InvokeRequest:
    return adapters_pb2.InvokeRequest(
        model=model, messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        temperature=temperature, max_tokens=max_tokens, request_id=request_id, call_index=call_index,
        top_p=options.top_p, stop=list(options.stop), seed=options.seed, user=options.user,
        tools_json=options.tools, tool_choice_json=options.tool_choice, response_format_json=options.response_format)


def _reply(reply: adapters_pb2.InvokeResponse) -> ModelReply:
    return ModelReply(reply.text, reply.input_tokens, reply.output_tokens, reply.tokens_estimated,
                      reply.cost_micro_usd, reply.latency_ms, reply.finish_reason, reply.tool_calls_json)


def _failure(error: grpc.aio.AioRpcError) -> Exception:
    failure = from_rpc_error(error, "adapters")
    # What the failed call consumed (tokens, cost), so that it is still recorded and billed.
    failure.failed_call = failed_call_from_rpc_error(error)  # type: ignore[attr-defined]
    return failure


def _failure_without_status(model: str) -> Exception:
    failure = Unavailable(f"adapters: the stream of {model!r} ended without its final chunk")
    failure.failed_call = None  # type: ignore[attr-defined]
    return failure


class MeteringClient:
    """The router's side of the metering service. ``api_key`` is the router's service key, sent as
    ``authorization: Bearer <key>`` on every call (needed when metering runs with
    XROUTER_METERING_AUTH=required; empty sends none). ``settle_round_trips``: Settles under way
    at once before further ones queue to share a SettleMany (settle_coalescing.py)."""

    def __init__(self, channel: grpc.aio.Channel, api_key: str = "", *,
                 settle_round_trips: int = MAX_IN_FLIGHT) -> None:
        self.journal: SettleJournal | None = None  # set (and started) by the router when it keeps one
        self._stub = metering_pb2_grpc.MeteringServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        def one(request: metering_pb2.SettleRequest, timeout: float):  # type: ignore[no-untyped-def]
            return self._stub.Settle(request, timeout=timeout, metadata=self._metadata, wait_for_ready=True)

        def many(request: metering_pb2.SettleManyRequest, timeout: float):  # type: ignore[no-untyped-def]
            return self._stub.SettleMany(request, timeout=timeout, metadata=self._metadata, wait_for_ready=True)

        self._settles = SettleCoalescer(one, many, max_in_flight=settle_round_trips)
        # The journal's deliveries are behind the answers, so nothing waits on them: one round trip
        # at a time, each batch the shipper hands over one SettleMany (metering's CPU and
        # transactions per settlement are lowest).
        self._deliveries = SettleCoalescer(one, many, max_in_flight=1, lone_settles=False)

    async def _call(self, method, request, timeout: float):  # type: ignore[no-untyped-def]
        try:
            return await method(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "metering") from None

    async def _write(self, method, request, timeout: float):  # type: ignore[no-untyped-def]
        """Record, Settle and RecordScore are idempotent, and the calls they account were already
        paid for: while metering is unreachable (restarting, a reply lost with its connection) they
        wait for it and are sent again until ``timeout``, instead of leaving made calls unbilled."""
        return await _until_answered(
            lambda remaining: method(request, timeout=remaining, metadata=self._metadata, wait_for_ready=True),
            timeout)

    async def authorize(self, request_id: str, tenant: str, estimate_micro_usd: int, timeout: float,
                        models: Sequence[str] = (), generated: bool = False) -> Admission:
        """Reserve the estimate; ``models`` (the pool the request may call) selects which per-model
        budgets apply (empty: all of them). A request_id seen before reserves nothing: the
        admission says what that request is doing. ``generated``: the router made the id up (no
        retry can carry it), so metering may hold the reservation without a ledger row."""
        reply = await self._call(self._stub.Authorize, metering_pb2.AuthorizeRequest(
            request_id=request_id, tenant=tenant, estimate_micro_usd=estimate_micro_usd, models=list(models),
            generated_request_id=generated), timeout)
        return Admission(_STATES.get(reply.state, "new"), reply.response_json, reply.remaining_micro_usd,
                         reply.soft_limit_exceeded)

    async def record(self, request_id: str, tenant: str, call: CallOutcome, policy_version: str,
                     trace_id: str, timeout: float) -> None:
        await self._write(self._stub.Record, _record_request(call, policy_version, trace_id, request_id, tenant),
                          timeout)

    async def settle(self, request_id: str, tenant: str, strategy: str, outcome: str,
                     total_cost_micro_usd: int, calls: int, timeout: float, *, policy_version: str = "",
                     trace_id: str = "", cost_lambda: float | None = None, dataset: str = "", prompt_id: str = "",
                     messages: Sequence[tuple[str, str]] = (), response_json: str = "",
                     returned_call_index: int | None = None, exploration: Exploration | None = None,
                     call_records: Sequence[CallOutcome] = (), call_policy_version: str = "") -> int:
        """Close the request, writing ``call_records`` (recorded with ``call_policy_version``) in the
        same transaction; returns how many of them metering holds (0 from a metering that predates
        call_records). The keyword fields feed the training export (metering/EXPORT.md);
        ``messages`` only when conversations may be kept."""
        explored = None if exploration is None else metering_pb2.Exploration(
            epsilon=exploration.epsilon, first_call_probability=exploration.first_call_probability,
            explored=exploration.explored)
        request = metering_pb2.SettleRequest(
            request_id=request_id, tenant=tenant, strategy=strategy, outcome=outcome,
            total_cost_micro_usd=total_cost_micro_usd, calls=calls, policy_version=policy_version,
            trace_id=trace_id, cost_lambda=cost_lambda, dataset=dataset, prompt_id=prompt_id,
            messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
            response_json=response_json, returned_call_index=returned_call_index, exploration=explored,
            call_records=[_record_request(c, call_policy_version, trace_id) for c in call_records])
        if self.journal is not None:  # durable on the router's disk now; metering gets it behind the answer
            await self.journal.append(request)
            return len(request.call_records)
        # Through the coalescer: concurrent requests' settlements share a round trip (SettleMany).
        reply = await _until_answered(lambda remaining: self._settles.settle(request, remaining), timeout)
        return reply.recorded_calls

    def check_room(self) -> None:
        """Refuse new work (UNAVAILABLE) while the journal holds too much that metering has not taken."""
        if self.journal is not None:
            self.journal.check_room()

    async def deliver(self, request: metering_pb2.SettleRequest, timeout: float = 10.0) -> None:
        """Send a journaled settlement until metering holds it (or ``timeout``: UNAVAILABLE, and the
        journal sends it again). A metering older than Settle's call_records answers that it holds
        none of them: they then go as Records and the request is settled again."""
        reply = await _until_answered(lambda remaining: self._deliveries.settle(request, remaining), timeout)
        if reply.recorded_calls >= len(request.call_records):
            return
        for call in request.call_records:
            record = metering_pb2.RecordRequest()
            record.CopyFrom(call)
            record.request_id, record.tenant = request.request_id, request.tenant
            await self._write(self._stub.Record, record, timeout)
        bare = metering_pb2.SettleRequest()
        bare.CopyFrom(request)
        del bare.call_records[:]
        await _until_answered(lambda remaining: self._deliveries.settle(bare, remaining), timeout)

    async def record_feedback(self, request_id: str, tenant: str, score: float, comment: str,
                              timeout: float) -> tuple[bool, float]:
        """File a user's verdict (metering checks ownership and keeps one per request): (duplicate,
        the score stored)."""
        reply = await self._call(self._stub.RecordFeedback, metering_pb2.RecordFeedbackRequest(
            request_id=request_id, tenant=tenant, score=score, source=metering_pb2.FEEDBACK_SOURCE_USER,
            comment=comment), timeout)
        return reply.duplicate, reply.score

    async def authenticate(self, key_sha256: str, timeout: float = 5.0) -> Caller | None:
        """Whose key has this SHA-256 (None: no live key). Metering refusing the router's own
        key is the operator's problem, not the caller's: reported as UNAVAILABLE."""
        try:
            reply = await self._stub.Authenticate(metering_pb2.AuthenticateRequest(key_sha256=key_sha256),
                                                  timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise Unavailable(f"metering refused the router's service key ({error.details()}): check "
                                  "XROUTER_ROUTER_METERING_API_KEY") from None
            raise from_rpc_error(error, "metering") from None
        return Caller(reply.tenant, reply.admin, reply.key_id) if reply.key_id else None

    async def record_score(self, request_id: str, tenant: str, score: float, reward: float,
                           timeout: float) -> None:
        """Attach the verifier's score and the reward to the request (training export)."""
        await self._write(self._stub.RecordScore, metering_pb2.RecordScoreRequest(
            request_id=request_id, tenant=tenant, score=score, reward=reward), timeout)


async def _until_answered(attempt: Callable[[float], Awaitable[T]], timeout: float) -> T:
    """``attempt(remaining seconds)`` again while metering is UNAVAILABLE, until ``timeout``; any
    other failure, or the last one, as its domain error."""
    give_up = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return await attempt(max(0.001, give_up - time.monotonic()))
        except grpc.aio.AioRpcError as error:
            code, failure = error.code(), from_rpc_error(error, "metering")
        except SettleRefused as refused:
            code, failure = refused.code, from_status(refused.code, refused.details, "metering")
        except TimeoutError:
            raise DeadlineExceeded("metering: no answer within the accounting deadline") from None
        if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() + delay >= give_up:
            raise failure from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


def reference_to_proto(reference: ScoringReference) -> reward_pb2.Reference:
    """Every field of the domain reference (code tests, rubric, aliases included)."""
    message = reward_pb2.Reference(task_type=reference.task_type, gold=reference.gold, dataset=reference.dataset,
                                   prompt_id=reference.prompt_id, aliases=list(reference.aliases),
                                   rubric=reference.rubric, options=reference.options)
    if reference.code is not None:
        code = reference.code
        message.code.CopyFrom(reward_pb2.CodeTests(asserts=list(code.asserts), setup=code.setup, check=code.check,
                                                   entry_point=code.entry_point, prefix=code.prefix))
    return message


class RewardClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = reward_pb2_grpc.RewardServiceStub(channel)

    async def score(self, prompt: str, response: str, reference: ScoringReference, cost_usd: float,
                    cost_lambda: float, timeout: float) -> tuple[float, float]:
        request = reward_pb2.ScoreRequest(
            prompt=prompt, response=response, cost_usd=cost_usd, cost_lambda=cost_lambda,
            reference=reference_to_proto(reference))
        try:
            reply = await self._stub.Score(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "reward") from None
        return reply.score, reply.reward

    async def check(self, reference: ScoringReference, timeout: float) -> None:
        request = reward_pb2.CheckReferenceRequest(reference=reference_to_proto(reference))
        try:
            await self._stub.CheckReference(request, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "reward") from None
