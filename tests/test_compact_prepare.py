"""The compact policy encodes a request's query on a worker thread while metering answers
Authorize: the router's event loop (which serves every other request) never runs the encoder, and a
preparation that fails after admission fails its request, which is still settled.

Real services on real gRPC channels (InProcessStack), the bundled checkpoint with its int8 encoder."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
import pytest_asyncio
import sqlalchemy as sa

from xrouter.local_stack import InProcessStack, sqlite_url
from xrouter.router.core import RouteRequest
from xrouter.router.policy import EpisodeState
from xrouter.router.policy_store import BUNDLED_POLICY

ON_THE_STACK = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("prepare")), policy=str(BUNDLED_POLICY)).start()
    yield running
    await running.stop()


@pytest.fixture
def embedded(stack):  # type: ignore[no-untyped-def]
    """Records (text, thread id) of every query the serving policy encodes."""
    policy = stack.router_core.policy
    original, calls = policy._embed, []

    def recording(text: str):  # type: ignore[no-untyped-def]
        calls.append((text, threading.get_ident()))
        return original(text)

    policy._embed = recording
    yield calls
    policy._embed = original


@ON_THE_STACK
async def test_a_routed_request_is_encoded_once_and_off_the_event_loop(stack, embedded, recorded) -> None:  # type: ignore[no-untyped-def]
    models = set(stack.router_core.catalog)
    # A recorded prompt (the catalog replays RouterBench) that this policy has not encoded yet.
    prompt = next(row[""] for row in recorded.values()
                  if models <= set(row) and row[""] not in stack.router_core.policy._queries)
    result = await stack.router_core.route(RouteRequest([("user", prompt)]))
    assert result.answer and result.calls
    mine = [thread for text, thread in embedded if text == prompt]
    assert len(mine) == 1  # prepared once; the decisions found it cached
    assert mine[0] != threading.get_ident()  # this test shares the router's event loop thread


@ON_THE_STACK
async def test_the_event_loop_runs_while_a_query_is_being_encoded(stack, embedded) -> None:  # type: ignore[no-untyped-def]
    policy = stack.router_core.policy
    release = threading.Event()
    encode = policy._embed

    def slow(text: str):  # type: ignore[no-untyped-def]
        assert release.wait(10), "the encoder ran on the event loop: nothing could release it"
        return encode(text)

    policy._embed = slow
    state = EpisodeState([("user", f"slow prompt {uuid.uuid4().hex}")], list(stack.router_core.catalog.values()),
                         1.0, None, 2, 0)
    preparing = asyncio.ensure_future(policy.prepare(state))
    await asyncio.sleep(0.05)  # the loop is free while the worker waits
    assert not preparing.done()
    release.set()
    await asyncio.wait_for(preparing, 10)
    assert state.prompt in policy._queries


@ON_THE_STACK
async def test_a_preparation_that_fails_after_admission_fails_the_request_and_settles_it(stack) -> None:  # type: ignore[no-untyped-def]
    policy = stack.router_core.policy
    encode = policy._embed

    def broken(text: str):  # type: ignore[no-untyped-def]
        raise RuntimeError("encoder unavailable")

    policy._embed = broken
    request_id = f"prepare-fails-{uuid.uuid4().hex}"
    try:
        with pytest.raises(RuntimeError, match="encoder unavailable"):
            await stack.router_core.route(RouteRequest([("user", f"never encoded {uuid.uuid4().hex}")],
                                                       request_id=request_id))
    finally:
        policy._embed = encode
    with stack.ledger.engine.connect() as connection:
        outcome = connection.execute(sa.text("SELECT outcome FROM request_summaries WHERE request_id = :r"),
                                     {"r": request_id}).scalar_one()
        released = connection.execute(sa.text("SELECT released FROM reservations WHERE request_id = :r"),
                                      {"r": request_id}).scalar_one()
    assert outcome == "error:INTERNAL" and released
