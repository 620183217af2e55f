"""Conversions between the router's protos and its domain types (used by the gRPC servicer)."""

from __future__ import annotations

from xrouter.adapters.catalog import micro_to_usd
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2
from xrouter.common.call_options import CallOptions
from xrouter.router.core import RouteRequest, RouteResult
from xrouter.router.episode import AnswerDelta, CallEvent, Decision, Event
from xrouter.router.feedback import FeedbackRequest
from xrouter.router.policy import CallOutcome
from xrouter.reward.server import to_reference


def route_request(message: router_pb2.RouteRequest) -> RouteRequest:
    reference = to_reference(message.reference) if message.HasField("reference") else None
    return RouteRequest(
        messages=[(m.role, m.content) for m in message.messages],
        allowed_models=list(message.allowed_models),
        cost_lambda=message.cost_lambda if message.HasField("cost_lambda") else None,
        max_cost_usd=message.max_cost_usd if message.HasField("max_cost_usd") else None,
        max_turns=message.max_turns, max_tokens=message.max_tokens, tenant=message.tenant,
        policy=message.policy, reference=reference, request_id=message.request_id,
        temperature=message.temperature if message.HasField("temperature") else None,
        options=CallOptions(top_p=message.top_p if message.HasField("top_p") else None, stop=tuple(message.stop),
                            seed=message.seed if message.HasField("seed") else None, user=message.user,
                            tools=message.tools_json, tool_choice=message.tool_choice_json,
                            response_format=message.response_format_json))


_THUMBS = {router_pb2.THUMBS_UP: "up", router_pb2.THUMBS_DOWN: "down"}


def feedback_request(message: router_pb2.FeedbackRequest) -> FeedbackRequest:
    # An enum number this version does not know stays visible (as a number) so that it is refused.
    thumbs = None if message.thumbs == router_pb2.THUMBS_UNSPECIFIED else _THUMBS.get(message.thumbs,
                                                                                       str(message.thumbs))
    return FeedbackRequest(request_id=message.request_id,
                           score=message.score if message.HasField("score") else None, thumbs=thumbs,
                           comment=message.comment, tenant=message.tenant)


def model_call(call: CallOutcome) -> router_pb2.ModelCall:
    return router_pb2.ModelCall(
        index=call.index, turn=call.turn, model=call.model, system_prompt=call.system_prompt,
        temperature=call.temperature, input_tokens=call.input_tokens, output_tokens=call.output_tokens,
        tokens_estimated=call.tokens_estimated, cost_micro_usd=call.cost_micro_usd,
        cost_usd=micro_to_usd(call.cost_micro_usd), latency_ms=call.latency_ms,
        status=common_pb2.CallStatus.Value(call.status.value), error=call.error, response=call.text,
        finish_reason=call.finish_reason, tool_calls_json=call.tool_calls, role=call.role)


def route_response(result: RouteResult) -> router_pb2.RouteResponse:
    response = router_pb2.RouteResponse(
        answer=result.answer, calls=[model_call(c) for c in result.calls],
        total_cost_usd=micro_to_usd(result.total_cost_micro_usd),
        total_cost_micro_usd=result.total_cost_micro_usd,
        strategy=router_pb2.Strategy.Value(result.strategy.value), turns_used=result.turns_used,
        turn_limit_reached=result.turn_limit_reached, policy_kind=result.policy_kind,
        policy_version=result.policy_version, request_id=result.request_id, trace_id=result.trace_id,
        selected_call=result.selected_call, replayed=result.replayed)
    if result.score is not None:
        response.score = result.score
    if result.reward is not None:
        response.reward = result.reward
    return response


def route_event(event: Event) -> router_pb2.RouteEvent:
    if isinstance(event, Decision):
        return router_pb2.RouteEvent(decision=router_pb2.Decision(
            turn=event.turn, action=event.action, models=event.models, selected_call=event.selected_call))
    if isinstance(event, AnswerDelta):
        return router_pb2.RouteEvent(answer_chunk=event.text)
    assert isinstance(event, CallEvent)
    if event.started:
        return router_pb2.RouteEvent(call_started=model_call(event.call))
    return router_pb2.RouteEvent(call_finished=model_call(event.call))
