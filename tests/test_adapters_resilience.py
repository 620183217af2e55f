"""Fault tests against the real local OpenAI-protocol server: every failure ends with the right
status within the deadline, retries happen only on retryable failures (honouring Retry-After), the
circuit breaker and the concurrency limit work per model, and a failed call is still accounted."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from adapters_openai_server import Fault, OpenAIProtocolServer

from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation, failed_call
from xrouter.adapters.resilience import BreakerState
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable

ASK = [("user", "hello there")]
FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def make_core(url: str, calls: list[Invocation], **policy: Any) -> AdapterCore:
    catalog = parse_catalog({"models": [{
        "id": "m", "backend": "openai", "endpoint": url, "input_usd_per_mtok": "1", "output_usd_per_mtok": "2",
        "context_tokens": 4096, "max_output_tokens": 64, "description": "x", "resilience": {**FAST, **policy}}]})
    return AdapterCore(catalog, {"openai": OpenAIBackend()}, on_call=calls.append)


@pytest.fixture()
async def server():  # type: ignore[no-untyped-def]
    started = await OpenAIProtocolServer().start()
    yield started
    await started.stop()


@pytest.fixture()
def calls() -> list[Invocation]:
    return []


@pytest.fixture()
async def core(server: OpenAIProtocolServer, calls: list[Invocation]):  # type: ignore[no-untyped-def]
    built = make_core(server.url, calls)
    yield built
    await built.aclose()


async def timed(awaitable: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        return await awaitable, time.monotonic() - started
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return error, time.monotonic() - started


async def test_slow_backend_ends_with_deadline_exceeded_at_the_callers_deadline(
        core: AdapterCore, server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    server.script["m"] = [Fault("sleep", seconds=5)]
    error, elapsed = await timed(core.invoke("m", ASK, timeout=0.4))
    assert isinstance(error, DeadlineExceeded) and "did not answer within the deadline" in error.message
    assert 0.35 < elapsed < 1.4  # generous upper bounds: shared 2-core machines stall
    assert calls[-1].status == "TIMEOUT" and calls[-1].latency_ms >= 350 and failed_call(error) is calls[-1]


async def test_the_models_own_deadline_applies_when_the_caller_gives_none(
        server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    core = make_core(server.url, calls, timeout_s=0.3)
    server.script["m"] = [Fault("sleep", seconds=5)]
    error, elapsed = await timed(core.invoke("m", ASK))
    assert isinstance(error, DeadlineExceeded) and elapsed < 1.3
    await core.aclose()


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried_then_succeed(
        core: AdapterCore, server: OpenAIProtocolServer, status: int) -> None:
    server.script["m"] = [Fault("status", status), Fault("status", status), Fault()]
    result = await core.invoke("m", ASK, timeout=5)
    assert result.text == "echo: hello there" and result.attempts == 3 and server.requests["m"] == 3


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(core: AdapterCore, server: OpenAIProtocolServer, status: int) -> None:
    server.script["m"] = [Fault("status", status, retry_after="0.3"), Fault()]
    result, elapsed = await timed(core.invoke("m", ASK, timeout=5))
    assert isinstance(result, Invocation) and result.attempts == 2 and elapsed >= 0.3


@pytest.mark.parametrize(("status", "error"), [(429, ResourceExhausted), (503, Unavailable)])
async def test_retry_after_past_the_deadline_fails_at_once(
        core: AdapterCore, server: OpenAIProtocolServer, status: int, error: type) -> None:
    server.script["m"] = [Fault("status", status, retry_after="30")]
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=2))
    assert isinstance(raised, error) and "waiting 30.00s would pass the deadline" in raised.message
    assert elapsed < 1.0 and server.requests["m"] == 1


async def test_persistent_failure_gives_up_after_max_attempts(
        core: AdapterCore, server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    server.script["m"] = [Fault("status", 500)]
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=5))
    assert isinstance(raised, Unavailable) and "HTTP 500" in raised.message and "after 3 attempts" in raised.message
    assert server.requests["m"] == 3 and calls[-1].status == "ERROR" and calls[-1].attempts == 3


async def test_client_errors_and_malformed_json_are_not_retried(core: AdapterCore,
                                                                server: OpenAIProtocolServer) -> None:
    server.script["m"] = [Fault("status", 400)]
    assert isinstance((await timed(core.invoke("m", ASK, timeout=5)))[0], InvalidArgument)
    server.script["m"] = [Fault("malformed")]
    raised, _ = await timed(core.invoke("m", ASK, timeout=5))
    assert isinstance(raised, Unavailable) and "malformed JSON from the backend (HTTP 200)" in raised.message
    assert server.requests["m"] == 2


async def test_truncated_stream_fails_and_accounts_what_was_streamed(
        core: AdapterCore, server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    server.script["m"] = [Fault("truncate", chunks=2)]
    got: list[Any] = []
    with pytest.raises(Unavailable, match="stream truncated after 2 chunk"):
        async for item in core.invoke_stream("m", ASK, timeout=5):
            got.append(item)
    assert got == ["echo:", " hello"] and server.requests["m"] == 1  # text was sent: no retry
    assert calls[-1].status == "ERROR" and calls[-1].output_tokens > 0 and calls[-1].cost_micro_usd > 0


async def test_connection_refused_is_retried_then_unavailable_within_the_deadline(calls: list[Invocation]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    core = make_core(f"http://127.0.0.1:{port}/v1", calls)
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=3))
    assert isinstance(raised, Unavailable) and "cannot reach" in raised.message and "after 3 attempts" in raised.message
    assert elapsed < 2.0 and calls[-1].attempts == 3
    await core.aclose()


async def test_slow_trickle_is_cut_at_the_deadline_and_the_server_sees_the_cancel(
        core: AdapterCore, server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    server.script["m"] = [Fault("trickle", seconds=0.05)]
    got: list[Any] = []
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        async for item in core.invoke_stream("m", ASK, timeout=0.5):
            got.append(item)
    elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 1.5 and len(got) > 3
    assert calls[-1].status == "TIMEOUT" and calls[-1].output_tokens > 0  # what it streamed is accounted
    for _ in range(50):  # the backend notices the closed connection at its next write
        if server.disconnects:
            break
        await asyncio.sleep(0.02)
    assert server.disconnects and server.disconnects[0] - started < 2.0


async def test_a_slow_plain_reply_also_ends_at_the_deadline(core: AdapterCore, server: OpenAIProtocolServer) -> None:
    server.script["m"] = [Fault("sleep", seconds=3)]
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=0.3))
    assert isinstance(raised, DeadlineExceeded) and elapsed < 1.3


async def test_caller_cancellation_stops_the_backend_call(core: AdapterCore, server: OpenAIProtocolServer,
                                                          calls: list[Invocation]) -> None:
    server.script["m"] = [Fault("trickle", seconds=0.05)]

    async def consume() -> None:
        async for _ in core.invoke_stream("m", ASK, timeout=10):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if server.disconnects:
            break
        await asyncio.sleep(0.02)
    assert server.disconnects and calls[-1].status == "TIMEOUT"


async def test_circuit_opens_fails_fast_then_probes_and_closes(server: OpenAIProtocolServer,
                                                                calls: list[Invocation]) -> None:
    core = make_core(server.url, calls, max_attempts=1, breaker_failures=2, breaker_reset_s=0.3)
    breaker = core.guards["m"].breaker
    server.script["m"] = [Fault("status", 503), Fault("status", 503), Fault("status", 503), Fault()]
    for _ in range(2):
        assert isinstance((await timed(core.invoke("m", ASK, timeout=5)))[0], Unavailable)
    assert breaker.state is BreakerState.OPEN
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=5))
    assert isinstance(raised, Unavailable) and "circuit open" in raised.message and elapsed < 0.25
    assert server.requests["m"] == 2  # failed fast: the backend never saw it
    await asyncio.sleep(0.35)
    assert breaker.state is BreakerState.HALF_OPEN
    assert isinstance((await timed(core.invoke("m", ASK, timeout=5)))[0], Unavailable)  # the probe fails
    assert breaker.state is BreakerState.OPEN
    await asyncio.sleep(0.35)
    result = await core.invoke("m", ASK, timeout=5)  # this probe succeeds
    assert result.text and breaker.state is BreakerState.CLOSED and server.requests["m"] == 4
    await core.aclose()


async def test_client_errors_do_not_open_the_circuit(server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    core = make_core(server.url, calls, max_attempts=1, breaker_failures=2)
    server.script["m"] = [Fault("status", 400)]
    for _ in range(3):
        await timed(core.invoke("m", ASK, timeout=5))
    assert core.guards["m"].breaker.state is BreakerState.CLOSED
    await core.aclose()


async def test_concurrency_limit_queues_then_refuses(server: OpenAIProtocolServer, calls: list[Invocation]) -> None:
    core = make_core(server.url, calls, max_concurrency=1, max_queue=1)
    server.script["m"] = [Fault("sleep", seconds=0.3)]
    results = await asyncio.gather(*(timed(core.invoke("m", ASK, timeout=5)) for _ in range(3)))
    refused = [r for r, elapsed in results if isinstance(r, ResourceExhausted)]
    served = sorted(elapsed for r, elapsed in results if isinstance(r, Invocation))
    assert len(refused) == 1 and "1 calls in flight and 1 queued" in refused[0].message
    assert len(served) == 2 and served[1] >= 0.55  # the queued one waited for the first
    await core.aclose()


async def test_deadline_passing_in_the_queue_is_deadline_exceeded(server: OpenAIProtocolServer,
                                                                  calls: list[Invocation]) -> None:
    core = make_core(server.url, calls, max_concurrency=1, max_queue=4)
    server.script["m"] = [Fault("sleep", seconds=0.5)]
    first = asyncio.create_task(core.invoke("m", ASK, timeout=5))
    await asyncio.sleep(0.05)
    raised, elapsed = await timed(core.invoke("m", ASK, timeout=0.2))
    assert isinstance(raised, DeadlineExceeded) and "while queued" in raised.message and elapsed < 1.2
    assert isinstance(await first, Invocation)
    await core.aclose()
