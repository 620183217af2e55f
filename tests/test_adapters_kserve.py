"""The KServe Open Inference Protocol backend (REST and gRPC, through the kserve SDK's clients)
against a real ``kserve.ModelServer`` started by the test (tests/adapters_kserve_server.py), once
per module: replies and token counts, estimation when the model reports none, error mapping, the
deadline, connection failures, and that the server's own (traceback-heavy) logging cannot wedge it."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

pytest.importorskip("kserve", reason="the KServe backend needs kserve==0.21.0")

from xrouter.adapters.backends.kserve_oip import KServeBackend  # noqa: E402
from xrouter.adapters.catalog import parse_catalog  # noqa: E402
from xrouter.adapters.core import AdapterCore, failed_call  # noqa: E402
from xrouter.adapters.token_count import estimate_tokens  # noqa: E402
from xrouter.common.call_options import CallOptions  # noqa: E402
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable  # noqa: E402

SERVER = pathlib.Path(__file__).with_name("adapters_kserve_server.py")
ASK = [("system", "Be brief."), ("user", "name a colour")]
MODELS = ("echo", "echo-nocount", "slow", "picky", "broken", "ghost")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ModelServerProcess(NamedTuple):
    http_port: int
    grpc_port: int
    log: pathlib.Path  # the server's stdout and stderr


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    """A running kserve.ModelServer; stopped after the module.

    Its output goes to a file, never to a pipe: nobody reads a pipe while the tests run, and KServe
    logs a full traceback for every failed request (about 9 KB per REST 500). Once the pipe was full
    (64 KiB at most, less when writes fragment its pages) the server's event loop blocked in write()
    and the next request never answered: the "hanging third gRPC attempt on a failing model"."""
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    with log.open("wb") as sink:  # the child keeps its own descriptor
        process = subprocess.Popen([sys.executable, str(SERVER), f"--http_port={http_port}",
                                    f"--grpc_port={grpc_port}"], stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", http_port), timeout=0.2), \
                    socket.create_connection(("127.0.0.1", grpc_port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"kserve.ModelServer did not start: {log_tail(log)}")
            time.sleep(0.2)
    yield ModelServerProcess(http_port, grpc_port, log)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        # A server that ignores SIGTERM is wedged (as it was when its log pipe filled): say so.
        process.kill()
        process.wait()
        pytest.fail(f"kserve.ModelServer did not stop within 10 s of SIGTERM: {log_tail(log)}")


def log_tail(log: pathlib.Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def make_core(endpoint: str, protocol: str, **policy: Any) -> AdapterCore:
    catalog = parse_catalog({"models": [{
        "id": f"kserve-{name}", "backend": "kserve", "protocol": protocol, "endpoint": endpoint,
        "backend_model": name, "input_usd_per_mtok": "1", "output_usd_per_mtok": "3", "context_tokens": 4096,
        "max_output_tokens": 64, "description": "x", "resilience": {"backoff_base_s": 0.01, **policy}}
        for name in MODELS]})
    return AdapterCore(catalog, {"kserve": KServeBackend()}, on_call=lambda call: None)


@pytest.fixture(params=["rest", "grpc"])
async def core(request: pytest.FixtureRequest, model_server: ModelServerProcess):  # type: ignore[no-untyped-def]
    endpoint = (f"http://127.0.0.1:{model_server.http_port}" if request.param == "rest"
                else f"grpc://127.0.0.1:{model_server.grpc_port}")
    built = make_core(endpoint, request.param)
    yield built
    await built.aclose()


async def test_reply_and_token_counts_from_the_model(core: AdapterCore) -> None:
    result = await core.invoke("kserve-echo", ASK, temperature=0.5, timeout=10)
    assert result.text == "echo: name a colour" and result.finish_reason == "stop"
    assert (result.input_tokens, result.output_tokens, result.tokens_estimated) == (5, 4, False)
    assert result.cost_micro_usd == 17  # 5 × 1 + 4 × 3
    short = await core.invoke("kserve-echo", ASK, max_tokens=2, timeout=10)
    assert (short.text, short.output_tokens, short.finish_reason) == ("echo: name", 2, "length")


async def test_counts_are_estimated_when_the_model_reports_none(core: AdapterCore) -> None:
    result = await core.invoke("kserve-echo-nocount", ASK, timeout=10)
    assert result.tokens_estimated and result.output_tokens == estimate_tokens("echo: name a colour")


async def test_streaming_falls_back_to_one_delta(core: AdapterCore) -> None:
    items = [item async for item in core.invoke_stream("kserve-echo", ASK, timeout=10)]
    assert items[0] == "echo: name a colour" and len(items) == 2 and items[1].output_tokens == 4


@pytest.mark.parametrize(("model", "error", "message"), [
    ("kserve-picky", InvalidArgument, "this model accepts nothing"),
    ("kserve-ghost", NotFound, "ghost"),
    # An unhandled model error: REST answers 500 with the message and drops the keep-alive connection
    # (so a quick retry may read a closed socket); gRPC answers INTERNAL without the message.
    ("kserve-broken", Unavailable,
     "HTTP 500: RuntimeError : the model fell over|cannot reach|INTERNAL: Internal server error"),
])
async def test_model_server_errors_map_to_domain_errors(core: AdapterCore, model: str, error: type,
                                                        message: str) -> None:
    # A generous deadline: three attempts against KServe's error path can take seconds on a loaded
    # 2-core machine, and this test is about the mapping, not speed (test_slow_model_* covers that).
    with pytest.raises(error, match=message) as raised:
        await core.invoke(model, ASK, timeout=30)
    account = failed_call(raised.value)
    assert account is not None and account.status == "ERROR"
    # A server-side fault (500 / INTERNAL) may be transient: retried; a refused input is not.
    assert account.attempts == (3 if model == "kserve-broken" else 1)


async def test_server_keeps_answering_after_logging_more_than_a_pipe_holds(model_server: ModelServerProcess) -> None:
    # Regression guard for the fixture: failing requests make KServe log tracebacks; once more than a
    # Linux pipe holds (64 KiB) has been written, a server whose output nobody drains stops answering.
    endpoint = f"http://127.0.0.1:{model_server.http_port}"
    start = model_server.log.stat().st_size
    for _ in range(10):  # about 9 KB of traceback each
        # A fresh client each time: after a 500 the server drops the connection, and a reused one
        # would fail on the client side without reaching (and logging in) the server.
        failing = make_core(endpoint, "rest", max_attempts=1)
        with pytest.raises(Unavailable, match="HTTP 500"):
            await failing.invoke("kserve-broken", ASK, timeout=10)
        await failing.aclose()
    core = make_core(endpoint, "rest")
    result = await core.invoke("kserve-echo", ASK, timeout=10)
    logged = model_server.log.stat().st_size - start
    assert logged > 65_536, f"10 failed requests logged only {logged} bytes: KServe's error logging changed"
    assert result.text == "echo: name a colour"
    await core.aclose()


async def test_slow_model_ends_at_the_deadline(core: AdapterCore) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await core.invoke("kserve-slow", ASK, timeout=0.5)
    assert time.monotonic() - started < 1.8


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
async def test_nothing_listening_is_unavailable_after_retries(protocol: str) -> None:
    port = free_port()
    core = make_core(f"http://127.0.0.1:{port}" if protocol == "rest" else f"grpc://127.0.0.1:{port}", protocol)
    started = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        await core.invoke("kserve-echo", ASK, timeout=3)
    assert time.monotonic() - started < 3.5
    assert failed_call(raised.value).attempts == 3  # type: ignore[union-attr]
    await core.aclose()


@pytest.mark.parametrize("options", [CallOptions(seed=1), CallOptions(stop=("x",)),
                                     CallOptions(tools='[{"type": "function", "function": {"name": "f"}}]')])
async def test_an_option_the_protocol_cannot_carry_is_refused_not_dropped(core: AdapterCore, options) -> None:  # type: ignore[no-untyped-def]
    # The Open Inference Protocol has no seed, stop sequences or tools: a caller that set one must
    # not get an answer made without it, and the model is not called.
    with pytest.raises(InvalidArgument) as raised:
        await core.invoke("kserve-echo", ASK, options=options, timeout=10)
    assert raised.value.field == options.used()[0] and "(kserve backend) cannot honour" in raised.value.message
    assert failed_call(raised.value) is None


async def test_each_request_is_a_span_under_the_model_call_and_its_context_reaches_the_server(
        core: AdapterCore, model_server: ModelServerProcess) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    core.trace_with(provider)
    await core.invoke("kserve-echo", ASK, max_tokens=8, timeout=10)
    chat, = [s for s in spans.get_finished_spans() if s.name == "chat kserve-echo"]
    request, = [s for s in spans.get_finished_spans() if s.parent is not None and s.parent.span_id == chat.context.span_id]
    assert request.name in ("POST", "/inference.GRPCInferenceService/ModelInfer")  # REST or gRPC
    assert chat.attributes["gen_ai.provider.name"] == "kserve" and chat.attributes["gen_ai.response.model"] == "echo"
    assert chat.attributes["gen_ai.request.max_tokens"] == 8 and chat.attributes["gen_ai.usage.output_tokens"] == 4
    sent = f"00-{format(request.context.trace_id, '032x')}-{format(request.context.span_id, '016x')}-"  # any flags
    deadline = time.monotonic() + 5
    while f"echo received traceparent={sent}" not in log_tail(model_server.log) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server's log is written by another process
    assert f"echo received traceparent={sent}" in model_server.log.read_text(errors="replace")
