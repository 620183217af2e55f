"""KServe Open Inference Protocol (v2) over REST or gRPC, with the ``kserve`` SDK's own clients.

OIP carries tensors, not chats, so text generation follows one convention (Triton's text-generation
names, which KServe runtimes share):

- request: input ``text_input`` (BYTES, shape [1]) holding the chat as JSON
  (``[{"role": ..., "content": ...}, ...]``); request parameters ``temperature`` (a number over REST,
  a decimal string over gRPC, whose InferParameter has no float) and ``max_tokens``.
- response: output ``text_output`` (BYTES, [1]); optional ``input_tokens`` and ``output_tokens``
  (INT64, [1]) and ``finish_reason`` (BYTES, [1]). Without token outputs the counts are the catalog
  tokenizer's, or estimated (and marked so) where the catalog names none.

The SDK clients' own retries are switched off: the model's guard (resilience.py) retries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import httpx
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig
from kserve.errors import InvalidInput
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.backends.openai_http import http_error
from xrouter.adapters.catalog import ModelSpec
from xrouter.adapters.resilience import BackendError
from xrouter.adapters.token_count import counter_for
from xrouter.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable, XRouterError
from xrouter.common.http_tracing import TracedTransport

__all__ = ["KServeBackend", "chat_request", "reply_from_response"]

# gRPC codes a retry may cure (the equivalents of HTTP 429/500/502/503/504 and a dropped connection).
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED})


def chat_request(spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                 max_tokens: int) -> InferRequest:
    """The OIP request for one chat call (see the module docstring for the tensor names)."""
    chat = json.dumps([{"role": role, "content": content} for role, content in messages])
    text = InferInput("text_input", [1], "BYTES", [chat])
    # KServe's v2 gRPC InferParameter has no floating-point field (bool, int64, string only), so the
    # temperature travels as a decimal string there; REST carries a JSON number.
    parameters: dict[str, Any] = {"temperature": repr(float(temperature)) if spec.protocol == "grpc"
                                  else float(temperature)}
    if max_tokens:
        parameters["max_tokens"] = int(max_tokens)
    return InferRequest(model_name=spec.served_name, infer_inputs=[text], parameters=parameters)


def reply_from_response(spec: ModelSpec, messages: Sequence[tuple[str, str]], response: InferResponse) -> BackendReply:
    """Read ``text_output`` and the optional token counts; a response without text is a backend fault."""
    outputs = {output.name: output for output in response.outputs}
    if "text_output" not in outputs:
        raise BackendError(Unavailable(f"model {spec.id!r}: the KServe response has no text_output "
                                       f"(outputs: {sorted(outputs)})"))
    text = _first(outputs["text_output"])
    finish = _first(outputs["finish_reason"]) if "finish_reason" in outputs else "stop"
    if "input_tokens" in outputs and "output_tokens" in outputs:
        return BackendReply(text, int(_first(outputs["input_tokens"])), int(_first(outputs["output_tokens"])),
                            False, finish, model=response.model_name or "")
    counter = counter_for(spec.tokenizer)
    return BackendReply(text, counter.messages(messages), counter.text(text), not counter.exact, finish,
                        model=response.model_name or "")


def _first(output: Any) -> Any:
    value = output.data[0] if output.data is not None else output.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"  # named as the gRPC instrumentation names RPCs


class KServeBackend:
    """One SDK client per endpoint, made on first use (the clients belong to the running loop)."""

    def __init__(self) -> None:
        self._rest: InferenceRESTClient | None = None
        self._grpc: dict[str, InferenceGRPCClient] = {}
        self._tracer: Tracer = trace.get_tracer("xrouter.adapters.kserve")

    def trace_with(self, provider: TracerProvider) -> None:
        """Each OIP request becomes a CLIENT span of ``provider`` carrying ``traceparent`` to the model server."""
        self._tracer = provider.get_tracer("xrouter.adapters.kserve")

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply:
        try:
            request = chat_request(spec, messages, temperature, max_tokens)
        except InvalidInput as error:
            raise BackendError(InvalidArgument("messages", f"model {spec.id!r}: {error}")) from None
        if spec.protocol == "grpc":
            response = await self._infer_grpc(spec, request)
        else:
            response = await self._infer_rest(spec, request)
        return reply_from_response(spec, messages, response)

    async def _infer_rest(self, spec: ModelSpec, request: InferRequest) -> InferResponse:
        if self._rest is None:
            self._rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=None,
                                                        transport=TracedTransport(lambda: self._tracer)))
        try:
            response = await self._rest.infer(spec.endpoint, request, model_name=spec.served_name)
        except httpx.HTTPStatusError as error:
            raise http_error(spec, error.response.status_code, error.response.content, error.response.headers) from None
        except httpx.TransportError as error:
            raise BackendError(Unavailable(f"model {spec.id!r}: cannot reach {spec.endpoint}: "
                                           f"{type(error).__name__}: {error}"), retryable=True) from None
        except (ValueError, KeyError, TypeError) as error:  # the SDK could not parse the body
            raise BackendError(Unavailable(f"model {spec.id!r}: malformed OIP response: {error}")) from None
        if not isinstance(response, InferResponse):
            raise BackendError(Unavailable(f"model {spec.id!r}: unexpected OIP response {type(response).__name__}"))
        return response

    async def _infer_grpc(self, spec: ModelSpec, request: InferRequest) -> InferResponse:
        target = spec.endpoint.removeprefix("grpc://")
        client = self._grpc.get(target)
        if client is None:
            client = self._grpc[target] = InferenceGRPCClient(
                target, channel_args=[("grpc.enable_retries", 0)], timeout=None, retries=0)
        # The SDK's gRPC channel is not instrumented: the span and the traceparent metadata are made here.
        with self._tracer.start_as_current_span(_MODEL_INFER, kind=SpanKind.CLIENT, attributes={
                "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer"},
                record_exception=False, set_status_on_exception=False) as span:
            metadata: dict[str, str] = {}
            inject(metadata)
            try:
                return await client.infer(request, headers=list(metadata.items()))
            except grpc.aio.AioRpcError as error:
                span.set_attribute("rpc.grpc.status_code", error.code().value[0])
                span.set_attribute("error.type", error.code().name)
                span.set_status(Status(StatusCode.ERROR, error.code().name))
                raise _grpc_error(spec, error) from None

    async def aclose(self) -> None:
        if self._rest is not None:
            await self._rest.close()
        for client in self._grpc.values():
            await client.close()


def _grpc_error(spec: ModelSpec, error: grpc.aio.AioRpcError) -> BackendError:
    code = error.code()
    said = f"model {spec.id!r}: KServe gRPC {code.name}: {error.details()}"
    domain: XRouterError
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        domain = InvalidArgument("messages", said)
    elif code == grpc.StatusCode.NOT_FOUND:
        domain = NotFound(said)
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        domain = ResourceExhausted(said, subject=f"model:{spec.id}", description="rate limited by the backend")
    else:
        domain = Unavailable(said)
    return BackendError(domain, retryable=code in RETRYABLE_CODES)
