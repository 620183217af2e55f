"""Issue 17 item 1: feedback in, over both faces (POST /v1/feedback and RouterService.Feedback),
against a stack whose ledger is real PostgreSQL. Authenticated like every request (the key decides
the tenant; an admin key may act for one it names); every bad input is a 400 / INVALID_ARGUMENT
naming its field with no row written; one row per request, a repeat is a duplicate, a different
verdict is 409; another tenant's request is 403 (as Route answers for another tenant's request_id),
an unknown one 404. The settled request records which call's answer was returned, and the export
carries the verdict beside it."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
import sqlalchemy as sa

from security.conftest import ARC, bearer, chat, new_tenant, post_chat
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.local_stack import InProcessStack
from xrouter.metering import export
from xrouter.router.auth import bearer_metadata

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.postgres]

FACES = ["http", "grpc"]
# gRPC status → the HTTP status the OpenAI face answers for it, so that one table serves both faces.
HTTP_OF = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
           grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
           grpc.StatusCode.ALREADY_EXISTS: 409}
_THUMBS = {"up": router_pb2.THUMBS_UP, "down": router_pb2.THUMBS_DOWN, "sideways": 7}  # 7: no such enum value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def send(stack: InProcessStack):  # type: ignore[no-untyped-def]
    """send(face, key, body) → (status as HTTP number, reply JSON or {"message"}, field named or None)."""
    async with grpc.aio.insecure_channel(stack.router_target) as channel, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def post(face: str, key: str | None, body: Any) -> tuple[int, dict[str, Any], str | None]:
            if face == "http":
                headers = {"Content-Type": "application/json", **(bearer(key) if key else {})}
                data = body if isinstance(body, str) else json.dumps(body)  # NaN goes out as JSON's NaN literal
                async with http.post(stack.http_url + "/v1/feedback", data=data, headers=headers) as response:
                    reply = await response.json()
                error = reply.get("error")
                return response.status, error or reply, error and error["param"]
            message = router_pb2.FeedbackRequest(request_id=body.get("request_id", ""), comment=body.get("comment", ""),
                                                 tenant=body.get("tenant", ""))
            if "score" in body:
                message.score = body["score"]
            if "thumbs" in body:
                message.thumbs = _THUMBS[body["thumbs"]]
            try:
                reply = await stub.Feedback(message, metadata=bearer_metadata(key) if key else None, timeout=30)
            except grpc.aio.AioRpcError as error:
                field = error.details().partition(": ")[0] if error.code() == grpc.StatusCode.INVALID_ARGUMENT else None
                return HTTP_OF[error.code()], {"message": error.details()}, field
            return 200, {"request_id": reply.request_id, "score": reply.score, "duplicate": reply.duplicate}, None
        yield post


async def routed(stack: InProcessStack, prompt: str, key: str) -> dict[str, Any]:
    """A settled request of ``key``'s tenant: its ``xrouter`` block."""
    status, body, _ = await post_chat(stack, chat(prompt), bearer(key))
    assert status == 200, body
    return body["xrouter"]


def stored(stack: InProcessStack, request_id: str) -> list[tuple]:
    with stack.ledger.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(
            "SELECT tenant, score, source, comment FROM feedback WHERE request_id = :id"), {"id": request_id})]


@pytest.mark.parametrize("face", FACES)
async def test_a_verdict_is_stored_once_a_repeat_is_a_duplicate_and_a_change_is_refused(
        stack, send, prompt, face) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    key = stack.tenant_key(tenant)
    request_id = (await routed(stack, prompt, key))["request_id"]
    verdict = {"request_id": request_id, "thumbs": "up", "comment": "right answer"}
    assert await send(face, key, verdict) == (200, {**({"object": "xrouter.feedback"} if face == "http" else {}),
                                                    "request_id": request_id, "score": 1.0, "duplicate": False}, None)
    assert stored(stack, request_id) == [(tenant, 1.0, "user", "right answer")]
    status, reply, _ = await send(face, key, verdict)
    assert (status, reply["duplicate"], reply["score"]) == (200, True, 1.0)
    status, reply, _ = await send(face, key, {"request_id": request_id, "score": 0.0, "comment": "right answer"})
    assert status == 409 and "differs in score" in reply["message"]
    assert stored(stack, request_id) == [(tenant, 1.0, "user", "right answer")]


async def test_thumbs_down_is_the_score_zero_on_either_face(stack, send, prompt) -> None:  # type: ignore[no-untyped-def]
    key = stack.tenant_key(new_tenant())
    request_id = (await routed(stack, prompt, key))["request_id"]
    assert (await send("http", key, {"request_id": request_id, "thumbs": "down"}))[1]["duplicate"] is False
    assert (await send("grpc", key, {"request_id": request_id, "score": 0.0}))[1]["duplicate"] is True
    assert len(stored(stack, request_id)) == 1


BAD = [  # (id, fields over a good verdict, the field the refusal names); None removes the field
    ("score-above-1", {"score": 1.5}, "score"),
    ("score-below-0", {"score": -0.01}, "score"),
    ("score-nan", {"score": math.nan}, "score"),
    ("score-infinite", {"score": math.inf}, "score"),
    ("score-and-thumbs", {"score": 1.0, "thumbs": "up"}, "score"),
    ("neither", {}, "score"),
    ("thumbs-unknown", {"thumbs": "sideways"}, "thumbs"),
    ("comment-too-long", {"score": 1.0, "comment": "x" * 2_001}, "comment"),
    ("comment-control", {"score": 1.0, "comment": "bell \x07"}, "comment"),
    ("request-id-missing", {"score": 1.0, "request_id": None}, "request_id"),
    ("request-id-bad", {"score": 1.0, "request_id": "a b/c"}, "request_id"),
]
HTTP_ONLY = [
    ("score-string", {"score": "1"}, "score"),
    ("score-bool", {"score": True}, "score"),
    ("thumbs-number", {"thumbs": 1}, "thumbs"),
    ("unknown-key", {"score": 1.0, "rating": 5}, "body"),
]


@pytest.mark.parametrize(("face", "fields", "field"),
                         [pytest.param(f, fields, field, id=f"{f}-{name}") for f in FACES for name, fields, field in BAD]
                         + [pytest.param("http", fields, field, id=f"http-{name}") for name, fields, field in HTTP_ONLY])
async def test_bad_feedback_is_a_400_naming_its_field_and_stores_nothing(stack, send, prompt, face, fields,  # type: ignore[no-untyped-def]
                                                                        field) -> None:
    key = stack.tenant_key(new_tenant())
    request_id = (await routed(stack, prompt, key))["request_id"]
    body = {k: v for k, v in {"request_id": request_id, **fields}.items() if v is not None}
    status, reply, named = await send(face, key, body)
    assert (status, named) == (400, field), reply
    assert stored(stack, request_id) == []


@pytest.mark.parametrize("body", ["{not json", "[1, 2]"])
async def test_a_body_that_is_not_a_json_object_is_a_400(stack, send, body) -> None:  # type: ignore[no-untyped-def]
    status, _, named = await send("http", stack.tenant_key(new_tenant()), body)
    assert (status, named) == (400, "body")


@pytest.mark.parametrize("face", FACES)
async def test_only_the_requests_tenant_may_rate_it(stack, send, prompt, face) -> None:  # type: ignore[no-untyped-def]
    owner, stranger = new_tenant("owner"), new_tenant("stranger")
    owner_key, stranger_key = stack.tenant_key(owner), stack.tenant_key(stranger)
    request_id = (await routed(stack, prompt, owner_key))["request_id"]
    verdict = {"request_id": request_id, "score": 0.5}
    assert (await send(face, None, verdict))[0] == 401  # no key
    assert (await send(face, "xrk_" + uuid.uuid4().hex, verdict))[0] == 401  # an unknown key
    assert (await send(face, stranger_key, verdict))[0] == 403  # another tenant's request
    assert (await send(face, stranger_key, {**verdict, "tenant": owner}))[0] == 403  # naming the owner: not its key
    assert (await send(face, stack.admin_key, {**verdict, "tenant": stranger}))[0] == 403  # admin, wrong tenant
    assert (await send(face, owner_key, {"request_id": f"never-{uuid.uuid4().hex}", "score": 0.5}))[0] == 404
    assert stored(stack, request_id) == []
    status, reply, _ = await send(face, stack.admin_key, {**verdict, "tenant": owner})  # admin acting for the owner
    assert (status, reply["duplicate"]) == (200, False)
    assert stored(stack, request_id) == [(owner, 0.5, "user", "")]


async def test_the_export_has_the_verdict_the_returned_call_and_no_exploration_by_default(
        stack, send, prompt) -> None:  # type: ignore[no-untyped-def]
    """A request carrying a reference is scored by the reward service as before; the user's verdict
    lands beside that score, so a learner reads both (and which call they are about)."""
    tenant = new_tenant()
    key = stack.tenant_key(tenant)
    reference = {"task_type": "recorded_label", "dataset": "routerbench", "prompt_id": ARC}
    status, body, _ = await post_chat(stack, chat(prompt, reference=reference), bearer(key))
    assert status == 200, body
    block = body["xrouter"]
    assert block["score"] is not None
    assert block["selected_call"] >= 0  # the cheapest model's answer, returned verbatim
    await send("http", key, {"request_id": block["request_id"], "thumbs": "down", "comment": "wrong letter"})
    (episode,) = list(export.episodes(stack.ledger.engine, tenant=tenant))
    returned = block["calls"][block["selected_call"]]
    assert episode["returned_call"] == {"index": block["selected_call"], "model": returned["model"]}
    assert episode["feedback"]["score"] == 0.0 and episode["feedback"]["comment"] == "wrong letter"
    assert episode["feedback"]["source"] == "user" and episode["exploration"] is None
    assert (episode["score"], episode["prompt"]) == (block["score"], {"dataset": "routerbench", "prompt_id": ARC})
    assert [e["request_id"] for e in export.episodes(stack.ledger.engine, tenant=tenant, scored_only=True)] == [
        block["request_id"]]  # a verdict counts as a learning signal
