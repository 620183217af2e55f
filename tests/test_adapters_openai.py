"""The OpenAI-compatible backend against a local server that speaks the protocol: plain and streamed
completions, usage from the response (estimated and marked so only when absent), error bodies mapped
to domain errors, and the adapters' gRPC face (Invoke, InvokeStream, failed calls' accounting)."""

from __future__ import annotations

from typing import Any

import grpc
import openai
import pytest
from adapters_openai_server import Fault, OpenAIProtocolServer
from opentelemetry.sdk.trace import TracerProvider

from xrouter.adapters.backends.openai_http import OpenAIBackend, parse_retry_after
from xrouter.adapters.catalog import CatalogError, parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation, failed_call
from xrouter.adapters.server import register
from xrouter.adapters.status import failed_call_from_rpc_error
from xrouter.adapters.token_count import estimate_tokens
from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.api.common.v1 import common_pb2
from xrouter.common.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from xrouter.common.grpc_server import GrpcServer

ASK = [("system", "Be brief."), ("user", "what is two plus two")]


def entry(model: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": model, "backend": "openai", "endpoint": url, "input_usd_per_mtok": "2.5",
            "output_usd_per_mtok": "10", "context_tokens": 8192, "max_output_tokens": 256,
            "description": "test model", **extra}


def make_core(url: str, *models: str, keys: dict[str, str] | None = None, **extra: Any) -> AdapterCore:
    catalog = parse_catalog({"models": [entry(m, url, **extra) for m in models]})
    return AdapterCore(catalog, {"openai": OpenAIBackend.from_environment(list(catalog.values()), keys or {})})


@pytest.fixture()
async def server():  # type: ignore[no-untyped-def]
    started = await OpenAIProtocolServer().start()
    yield started
    await started.stop()


@pytest.fixture()
async def core(server: OpenAIProtocolServer):  # type: ignore[no-untyped-def]
    built = make_core(server.url, "echo", "quiet", "broken")
    yield built
    await built.aclose()


async def test_plain_completion_takes_usage_from_the_response(core: AdapterCore, server: OpenAIProtocolServer) -> None:
    result = await core.invoke("echo", ASK, temperature=0.3, max_tokens=100, timeout=5)
    assert result.text == "echo: what is two plus two"
    # The server counts words: 2 + 5 prompt, 6 completion — not the adapters' 4-characters estimate.
    assert (result.input_tokens, result.output_tokens, result.tokens_estimated) == (7, 6, False)
    assert result.cost_micro_usd == 78  # 7 × 2.5 + 6 × 10 = 77.5 µ$ → half-even → 78
    assert result.status == "OK" and result.attempts == 1 and result.finish_reason == "stop"
    sent = server.bodies[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (sent["temperature"], sent["max_tokens"], sent.get("stream")) == (0.3, 100, None)


async def test_missing_usage_is_estimated_and_marked(core: AdapterCore, server: OpenAIProtocolServer) -> None:
    server.script["quiet"] = [Fault(usage=False)]
    result = await core.invoke("quiet", ASK, timeout=5)
    assert result.tokens_estimated is True
    assert result.input_tokens == estimate_tokens("Be brief.") + estimate_tokens("what is two plus two")
    assert result.output_tokens == estimate_tokens("echo: what is two plus two")


@pytest.mark.parametrize("usage", [{"prompt_tokens": 2**63 - 1, "completion_tokens": 6},
                                   {"prompt_tokens": 7, "completion_tokens": -1},
                                   {"prompt_tokens": True, "completion_tokens": 6}])
def test_a_usage_the_ledger_cannot_hold_is_estimated_instead(core: AdapterCore, usage: dict) -> None:
    """A backend's absurd usage, believed, was refused at settlement (the ledger bounds tokens):
    the answered request went unbilled. It is counted as a reply without usage is."""
    from xrouter.adapters.backends.openai_http import _reply

    reply = _reply(core.catalog["echo"], ASK, "echo: what is two plus two", "stop", usage)
    assert reply.tokens_estimated is True
    assert reply.input_tokens == estimate_tokens("Be brief.") + estimate_tokens("what is two plus two")


async def test_streamed_completion_yields_deltas_then_the_accounted_call(
        core: AdapterCore, server: OpenAIProtocolServer) -> None:
    items = [item async for item in core.invoke_stream("echo", ASK, max_tokens=4, timeout=5)]
    deltas, final = items[:-1], items[-1]
    assert deltas == ["echo:", " what", " is", " two"]
    assert isinstance(final, Invocation) and final.text == "echo: what is two"
    assert (final.input_tokens, final.output_tokens, final.tokens_estimated) == (7, 4, False)
    assert server.bodies[-1]["stream"] is True and server.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_streamed_completion_without_usage_is_estimated(core: AdapterCore, server: OpenAIProtocolServer) -> None:
    server.script["quiet"] = [Fault(usage=False)]
    *_, final = [item async for item in core.invoke_stream("quiet", ASK, timeout=5)]
    assert isinstance(final, Invocation) and final.tokens_estimated and final.text == "echo: what is two plus two"


async def test_the_test_server_speaks_the_protocol_the_official_client_expects(server: OpenAIProtocolServer) -> None:
    client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi there"}])
    assert reply.choices[0].message.content == "echo: hi there" and reply.usage.completion_tokens == 3
    stream = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hi"
    assert chunks[-1].usage.prompt_tokens == 1
    with pytest.raises(openai.RateLimitError, match="scripted 429"):
        server.script["limited"] = [Fault("status", 429)]
        await client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
    await client.close()


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (400, {"error": {"message": "temperature too high", "type": "invalid_request_error", "param": "temperature"}},
     InvalidArgument,
     "^temperature: model 'broken': backend said HTTP 400 invalid_request_error: temperature too high"),
    (401, None, PermissionDenied, "HTTP 401 invalid_request_error: scripted 401 .check the key in credentials_env"),
    (404, {"error": {"message": "The model `broken` does not exist", "code": "model_not_found"}},
     NotFound, "HTTP 404 model_not_found: The model `broken` does not exist"),
    (418, {"detail": "not openai-shaped"}, Unavailable, "HTTP 418: {'detail': 'not openai-shaped'}"),
])
async def test_error_bodies_become_domain_errors_without_retry(
        core: AdapterCore, server: OpenAIProtocolServer, status: int, body: Any, error: type, message: str) -> None:
    server.script["broken"] = [Fault("status", status, body=body)]
    with pytest.raises(error, match=message) as raised:
        await core.invoke("broken", ASK, timeout=5)
    assert server.requests["broken"] == 1  # a client error is never retried
    account = failed_call(raised.value)
    assert account is not None and account.status == "ERROR" and account.attempts == 1


async def test_the_key_is_read_from_the_named_variable_and_sent(server: OpenAIProtocolServer) -> None:
    with pytest.raises(ValueError, match="credentials_env PROVIDER_KEY is not set"):
        make_core(server.url, "echo", credentials_env="PROVIDER_KEY")
    core = make_core(server.url, "echo", keys={"PROVIDER_KEY": "sk-test"}, credentials_env="PROVIDER_KEY")
    await core.invoke("echo", ASK, timeout=5)
    assert server.headers[-1]["Authorization"] == "Bearer sk-test"
    await core.aclose()


def test_catalog_checks_the_new_backends_fields() -> None:
    base = entry("m", "http://127.0.0.1:1/v1")
    for change, message in [
        ({"endpoint": ""}, "model 'm'.endpoint: openai model needs its URL as http"),
        ({"backend": "kserve", "protocol": "soap"}, "model 'm'.protocol: 'soap' is not one of"),
        ({"backend": "local"}, "model 'm'.weights_package: a local model needs"),
        ({"credentials_env": "sk-live-123"}, "model 'm'.credentials_env: must be an environment variable name"),
        ({"resilience": {"retries": 3}}, "model 'm'.resilience.retries: is not a known field"),
        ({"resilience": {"timeout_s": 0}}, "model 'm'.resilience.timeout_s: must be > 0, got 0"),
        ({"resilience": {"max_attempts": 1.5}}, "model 'm'.resilience.max_attempts: must be an integer, got 1.5"),
        ({"resilience": {"max_queue": -1}}, "model 'm'.resilience.max_queue: must be >= 0, got -1"),
    ]:
        with pytest.raises(CatalogError, match=message.replace("(", r"\(").replace(".", r"\.")):
            parse_catalog({"models": [{**base, **change}]})
    with pytest.raises(CatalogError, match=r"unknown top-level keys \['defaults'\]"):  # was read as nothing
        parse_catalog({"models": [base], "defaults": {"timeout_s": 5}})
    spec = parse_catalog({"models": [{**base, "resilience": {"timeout_s": 2, "max_queue": 0}}]})["m"]
    assert spec.policy.timeout_s == 2.0 and spec.policy.max_queue == 0 and spec.policy.max_attempts == 3


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- through the adapters' real gRPC server --------------------------------------------------------

@pytest.fixture()
async def stub(core: AdapterCore):  # type: ignore[no-untyped-def]
    grpc_server = GrpcServer("adapters", register(core), TracerProvider())
    port = await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield adapters_pb2_grpc.AdapterServiceStub(channel)
    await channel.close()
    await grpc_server.stop(0)


def _request(model: str, **fields: Any) -> adapters_pb2.InvokeRequest:
    return adapters_pb2.InvokeRequest(
        model=model, messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in ASK], **fields)


async def test_grpc_invoke_and_invoke_stream(stub: adapters_pb2_grpc.AdapterServiceStub) -> None:
    reply = await stub.Invoke(_request("echo"), timeout=5)
    assert (reply.text, reply.output_tokens, reply.cost_micro_usd, reply.attempts) == \
        ("echo: what is two plus two", 6, 78, 1)
    chunks = [chunk async for chunk in stub.InvokeStream(_request("echo", max_tokens=3), timeout=5)]
    assert [c.delta for c in chunks[:-1]] == ["echo:", " what", " is"]
    assert chunks[-1].WhichOneof("chunk") == "done" and chunks[-1].done.text == "echo: what is"


async def test_grpc_failed_call_carries_its_account(
        stub: adapters_pb2_grpc.AdapterServiceStub, server: OpenAIProtocolServer) -> None:
    server.script["broken"] = [Fault("truncate", chunks=3)]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub.InvokeStream(_request("broken"), timeout=5):
            pass
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stream truncated after 3 chunk(s)" in raised.value.details()
    account = failed_call_from_rpc_error(raised.value)
    assert account is not None and account.status == common_pb2.CALL_STATUS_ERROR
    # The three chunks it did stream ("echo:", " what", " is") were generated: counted, estimated, billed.
    assert account.output_tokens == estimate_tokens("echo: what is") and account.tokens_estimated
    assert account.cost_micro_usd > 0 and account.latency_ms > 0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Invoke(_request("nope"), timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and failed_call_from_rpc_error(raised.value) is None


def test_build_core_reads_credentials_once_and_names_a_missing_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from xrouter.adapters.server import build_core
    from xrouter.adapters.settings import AdapterSettings
    from xrouter.common.settings import load

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [
        entry("gpt-x", "https://api.example.invalid/v1", credentials_env="PROVIDER_KEY"),
        {**entry("oip", "grpc://127.0.0.1:1"), "backend": "kserve", "protocol": "grpc"}]}))
    config = load(AdapterSettings, {"XROUTER_ADAPTERS_CATALOG": str(path)})
    with pytest.raises(CatalogError, match="model 'gpt-x': credentials_env PROVIDER_KEY is not set"):
        build_core(config, environ={})
    core = build_core(config, environ={"PROVIDER_KEY": "sk-test"})
    assert sorted(core.catalog) == ["gpt-x", "oip"] and core.catalog["oip"].protocol == "grpc"


@pytest.mark.parametrize("fields, field", [({"call_index": -5}, "call_index"),
                                           ({"request_id": "r" * 200}, "request_id"),
                                           ({"request_id": "a b"}, "request_id")])
async def test_grpc_correlation_fields_are_checked(stub: adapters_pb2_grpc.AdapterServiceStub, fields: dict,
                                                  field: str) -> None:
    """request_id and call_index were accepted whatever they held and never read; now they are
    bounded as everywhere else and put on the call's server span."""
    request = adapters_pb2.InvokeRequest(model="echo", messages=[common_pb2.ChatMessage(role="user", content="hi")],
                                         **fields)
    for call in (stub.Invoke(request), stub.InvokeStream(request)):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            if isinstance(call, grpc.aio.UnaryStreamCall):
                async for _ in call:
                    pass
            else:
                await call
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}: ")
