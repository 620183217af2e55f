"""The OpenAI-compatible HTTP face, driven by the official ``openai`` client (unchanged) and by raw
aiohttp: answers, usage and the ``xrouter`` block agree with the ledger; streaming matches the
plain answer; bad input maps to OpenAI-style errors and bills nothing; a W3C trace is continued."""

from __future__ import annotations

import json
import re
import uuid

import aiohttp
import openai
import pytest
import pytest_asyncio

from xrouter.local_stack import InProcessStack, sqlite_url

pytestmark = pytest.mark.asyncio(loop_scope="module")

ARC = "arc-challenge.test.1/test"
GPT4 = "gpt-4-1106-preview"
UNRECORDED = "a prompt nobody ever recorded, so every replayed call fails"


@pytest.fixture(scope="module")
def prompt(recorded) -> str:  # type: ignore[no-untyped-def]
    return recorded[ARC][""]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    running = await InProcessStack(sqlite_url(tmp_path_factory.mktemp("http"))).start()
    yield running
    await running.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(stack):  # type: ignore[no-untyped-def]
    # No retries: a retried 5xx would route (and bill) the request again and hide the first answer.
    # The admin key acts for the tenant each test names (tests/security covers tenant keys).
    async with openai.AsyncOpenAI(base_url=stack.http_url + "/v1", api_key=stack.admin_key, max_retries=0,
                                  timeout=30.0) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def http(stack):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     headers={"Authorization": f"Bearer {stack.admin_key}"}) as session:
        yield session


def new_tenant() -> str:
    return f"http-{uuid.uuid4().hex[:10]}"


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def assert_ledger_matches(stack, tenant: str, block: dict) -> None:  # type: ignore[no-untyped-def]
    """The tenant's ledger holds exactly the calls of ``block`` (by model, tokens and cost)."""
    usage = stack.ledger.usage(tenant)
    calls = block["calls"]
    assert usage.requests == 1
    assert sum(m.calls for m in usage.models) == len(calls)
    by_model: dict[str, list[int]] = {}
    for call in calls:
        entry = by_model.setdefault(call["model"], [0, 0, 0])
        entry[0] += 1
        entry[1] += call["input_tokens"]
        entry[2] += call["output_tokens"]
    assert {m.model: [m.calls, m.input_tokens, m.output_tokens] for m in usage.models} == by_model
    assert usage.total_cost_micro_usd == round(block["total_cost_usd"] * 1_000_000)
    assert usage.total_cost_micro_usd == sum(round(c["cost_usd"] * 1_000_000) for c in calls)


async def test_a_plain_completion_answers_from_the_recording_and_bills_exactly_its_calls(  # type: ignore[no-untyped-def]
        stack, client, recorded, prompt) -> None:
    tenant = new_tenant()
    raw = await client.chat.completions.with_raw_response.create(
        model="xrouter", messages=user(prompt), extra_body={"xrouter": {"tenant": tenant}})
    assert raw.http_request.url.path == "/v1/chat/completions" and raw.status_code == 200
    completion = raw.parse()
    body = json.loads(raw.content)

    assert completion.object == "chat.completion" and completion.model == "xrouter"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    answers = {model: text for model, text in recorded[ARC].items() if model}
    assert choice.message.content in answers.values()

    block = body["xrouter"]
    assert completion.model_extra["xrouter"] == block  # the openai client keeps the extension
    calls = block["calls"]
    assert calls and all(c["status"] == "ok" for c in calls if c["index"] == block["selected_call"])
    selected = next(c for c in calls if c["index"] == block["selected_call"])
    assert choice.message.content == recorded[ARC][selected["model"]]
    assert block["total_cost_usd"] > 0 and block["strategy"] in {"select", "synthesize"}
    assert block["policy"]["kind"] == "cascade" and isinstance(block["policy"]["version"], str)
    assert re.fullmatch(r"[0-9a-f]{32}", block["trace_id"]) and int(block["trace_id"], 16) != 0
    assert completion.id == f"chatcmpl-{block['request_id']}"

    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.prompt_tokens == sum(c["input_tokens"] for c in calls)
    assert usage.completion_tokens == sum(c["output_tokens"] for c in calls)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    assert_ledger_matches(stack, tenant, block)


async def test_the_lambda_rides_in_the_model_name(stack, client, recorded, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    completion = await client.chat.completions.create(
        model="xrouter:0.5", messages=user(prompt), extra_body={"xrouter": {"tenant": tenant}})
    assert completion.model == "xrouter:0.5"
    assert completion.choices[0].message.content in {t for m, t in recorded[ARC].items() if m}
    assert_ledger_matches(stack, tenant, completion.model_extra["xrouter"])


async def test_a_fixed_policy_makes_exactly_one_call_to_its_model(stack, client, recorded, prompt) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    completion = await client.chat.completions.create(
        model="xrouter", messages=user(prompt),
        extra_body={"xrouter": {"tenant": tenant, "policy": f"fixed:{GPT4}"}})
    block = completion.model_extra["xrouter"]
    assert [(c["model"], c["status"]) for c in block["calls"]] == [(GPT4, "ok")]
    assert block["policy"]["kind"] == f"fixed:{GPT4}"
    assert completion.choices[0].message.content == recorded[ARC][GPT4]
    assert_ledger_matches(stack, tenant, block)
    assert [m.model for m in stack.ledger.usage(tenant).models] == [GPT4]


async def test_streaming_concatenates_to_the_plain_answer_and_ends_with_usage(  # type: ignore[no-untyped-def]
        stack, client, recorded, prompt) -> None:
    controls = {"policy": "fixed:claude-v1"}
    plain = await client.chat.completions.create(
        model="xrouter", messages=user(prompt), extra_body={"xrouter": {**controls, "tenant": new_tenant()}})

    tenant = new_tenant()
    stream = await client.chat.completions.create(
        model="xrouter", messages=user(prompt), stream=True, stream_options={"include_usage": True},
        extra_body={"xrouter": {**controls, "tenant": tenant}})
    chunks = [chunk async for chunk in stream]

    assert len(chunks) >= 4 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content == recorded[ARC]["claude-v1"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    block = next(c.model_extra["xrouter"] for c in chunks if c.model_extra and "xrouter" in c.model_extra)
    assert last.usage.prompt_tokens == sum(c["input_tokens"] for c in block["calls"]) > 0
    assert last.usage.completion_tokens == sum(c["output_tokens"] for c in block["calls"]) > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == \
        plain.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert_ledger_matches(stack, tenant, block)


async def test_streaming_without_include_usage_sends_no_usage_chunk(client, prompt) -> None:  # type: ignore[no-untyped-def]
    stream = await client.chat.completions.create(
        model="xrouter", messages=user(prompt), stream=True, extra_body={"xrouter": {"policy": "fixed:claude-v1"}})
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.usage is None and c.choices for c in chunks)


async def test_the_models_list_offers_xrouter(client) -> None:  # type: ignore[no-untyped-def]
    models = [model async for model in client.models.list()]
    assert {"xrouter", "xrouter-cheap", GPT4, "mistralai/mistral-7b-chat"} <= {m.id for m in models}
    assert all(m.object == "model" for m in models)
    assert (await client.models.retrieve("mistralai/mistral-7b-chat")).id == "mistralai/mistral-7b-chat"


async def test_a_recorded_model_honours_stop_and_refuses_what_a_recording_cannot(  # type: ignore[no-untyped-def]
        stack, client, recorded, prompt) -> None:
    # A catalog model named as ``model`` is called directly; its replay backend cuts at a stop
    # sequence as a generating model would, and refuses options a recording cannot honour.
    mistral = "mistralai/mistral-7b-chat"
    assert recorded[ARC][mistral] == "A\n"
    tenant = new_tenant()
    completion = await client.chat.completions.create(model=mistral, messages=user(prompt), stop=["\n"],
                                                      extra_body={"xrouter": {"tenant": tenant}})
    assert (completion.model, completion.choices[0].message.content) == (mistral, "A")
    assert [m.model for m in stack.ledger.usage(tenant).models] == [mistral]
    for field, value in (("top_p", 0.5), ("response_format", {"type": "json_object"}),
                         ("tools", [{"type": "function", "function": {"name": "f"}}])):
        tenant = new_tenant()
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(model=mistral, messages=user(prompt), **{field: value},
                                                 extra_body={"xrouter": {"tenant": tenant}})
        assert raised.value.param == field and raised.value.code == "invalid_value"
        assert stack.ledger.usage(tenant).requests == 0


def _create(model: str = "xrouter", messages=None, **controls):  # type: ignore[no-untyped-def]
    return {"model": model, "messages": user("hi") if messages is None else messages,
            "extra_body": {"xrouter": controls}}


@pytest.mark.parametrize(("kwargs", "error", "status", "names"), [
    pytest.param(_create(messages=[]), openai.BadRequestError, 400, "messages", id="empty-messages"),
    pytest.param(_create(model="gpt-4o"), openai.NotFoundError, 404, "model", id="unknown-model-name"),
    pytest.param(_create(allowed_models=["gpt-9"]), openai.BadRequestError, 400, "xrouter.allowed_models[0]",
                 id="unknown-allowed-model"),
    pytest.param(_create(model="xrouter:-1"), openai.BadRequestError, 400, "model", id="negative-lambda"),
    pytest.param(_create(model="xrouter:cheap"), openai.BadRequestError, 400, "model", id="non-numeric-lambda"),
    pytest.param(_create(messages=user("x" * 200_001)), openai.BadRequestError, 400, "messages",
                 id="oversize-prompt"),
    pytest.param(_create(policy="smartest"), openai.BadRequestError, 400, "xrouter.policy", id="unknown-policy"),
    pytest.param(_create(messages=[{"role": "robot", "content": "hi"}]), openai.BadRequestError, 400,
                 "messages[0].role", id="bad-role"),
])
async def test_bad_requests_map_to_openai_errors_and_bill_nothing(  # type: ignore[no-untyped-def]
        stack, client, kwargs, error, status, names) -> None:
    tenant = new_tenant()
    kwargs["extra_body"]["xrouter"]["tenant"] = tenant
    with pytest.raises(error) as raised:
        await client.chat.completions.create(**kwargs)
    assert raised.value.status_code == status
    body = raised.value.body
    assert isinstance(body, dict) and body["message"].startswith(f"{names}: ")
    assert body["type"] == "invalid_request_error"
    assert not stack.ledger.usage(tenant).models
    assert stack.ledger.usage(tenant).requests == 0


async def test_bad_requests_are_refused_before_streaming_starts(stack, client) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="xrouter:-1", messages=user("hi"), stream=True,
                                             extra_body={"xrouter": {"tenant": tenant}})
    assert raised.value.body["message"].startswith("model: ")  # λ comes in the model name
    assert not stack.ledger.usage(tenant).models


async def test_an_unrecorded_prompt_is_503_and_only_the_failed_calls_are_recorded(stack, client) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="xrouter", messages=user(UNRECORDED),
                                             extra_body={"xrouter": {"tenant": tenant, "policy": "cheapest"}})
    assert raised.value.status_code == 503
    assert raised.value.body["type"] == "server_error" and "no recording" in raised.value.body["message"]
    # Nothing is billed; the attempted (failed) calls are kept for audit, as over gRPC.
    usage = stack.ledger.usage(tenant)
    assert usage.total_cost_micro_usd == 0 and usage.requests == 1
    assert sum(m.calls for m in usage.models) == 2  # the cheapest policy tried twice (two turns)
    assert all(m.cost_micro_usd == 0 and m.output_tokens == 0 for m in usage.models)


async def test_malformed_json_is_a_400_with_a_json_error(stack, http) -> None:  # type: ignore[no-untyped-def]
    async with http.post(stack.http_url + "/v1/chat/completions", data=b"{not json",
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert "malformed JSON" in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == "body"


async def test_a_body_that_is_not_an_object_is_a_400(stack, http) -> None:  # type: ignore[no-untyped-def]
    async with http.post(stack.http_url + "/v1/chat/completions",
                         json=[{"model": "xrouter", "messages": user("hi")}]) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["message"].startswith("body: ") and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"max_tokens": 0.5}, "max_tokens", id="fractional-max-tokens"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
                 "messages[0].content", id="image-content-part"),
    pytest.param({"xrouter": {"max_turns": "abc"}}, "xrouter.max_turns", id="non-numeric-max-turns"),
    pytest.param({"xrouter": {"max_cost_usd": "abc"}}, "xrouter.max_cost_usd", id="non-numeric-max-cost"),
    pytest.param({"xrouter": {"colour": "blue"}}, "xrouter", id="unknown-control"),
    pytest.param({"stream": True, "stream_options": True}, "stream_options", id="stream-options-not-object"),
    pytest.param({"stream": "false"}, "stream", id="stream-not-a-bool"),
    pytest.param({"max_tokens": True}, "max_tokens", id="max-tokens-a-bool"),
    pytest.param({"xrouter": {"reference": {"dataset": "routerbench"}}}, "xrouter.reference",
                 id="reference-without-task-type"),
    pytest.param({"xrouter": {"allowed_models": GPT4}}, ("xrouter", "allowed_models"), id="allowed-models-a-string"),
    pytest.param({"xrouter": {"tenant": ["acme"]}}, ("xrouter", "tenant"), id="tenant-not-a-string"),
    # Read by the pydantic body model (openai_request.py): the path names the very item at fault.
    pytest.param({"messages": ["hi"]}, "messages[0]", id="message-not-an-object"),
    pytest.param({"messages": [{"role": "user"}]}, "messages[0].content", id="message-without-content"),
    pytest.param({"stop": ["\n", 7]}, "stop[1]", id="stop-item-not-a-string"),
    pytest.param({"seed": "42"}, "seed", id="seed-a-string"),
    pytest.param({"xrouter": {"reference": {"task_type": "math", "gold": 4}}}, "xrouter.reference.gold",
                 id="reference-gold-not-a-string"),
    # An explicit empty or zero control once meant "not given" and was dropped: a retry with
    # request_id "" got a new id and was billed again.
    pytest.param({"xrouter": {"request_id": ""}}, "xrouter.request_id", id="empty-request-id"),
    pytest.param({"xrouter": {"tenant": ""}}, "xrouter.tenant", id="empty-tenant"),
    pytest.param({"xrouter": {"policy": ""}}, "xrouter.policy", id="empty-policy"),
    pytest.param({"xrouter": {"max_turns": 0}}, "xrouter.max_turns", id="zero-max-turns"),
    # JSON may escape a lone UTF-16 surrogate; no text can hold one (it was a 500 after admission).
    pytest.param({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content",
                 id="lone-surrogate-in-content"),
    pytest.param({"stop": ["ok", "\udfff"]}, "stop[1]", id="lone-surrogate-in-stop"),
    pytest.param({"max_completion_tokens": 10**9}, "max_completion_tokens", id="max-completion-tokens-too-large"),
])
async def test_ill_typed_fields_get_an_openai_style_400(stack, http, body, param) -> None:  # type: ignore[no-untyped-def]
    tenant = new_tenant()
    payload = {"model": "xrouter", "messages": user("hi"), **body}
    payload["xrouter"] = {**payload.get("xrouter", {})}
    payload["xrouter"].setdefault("tenant", tenant)
    async with http.post(stack.http_url + "/v1/chat/completions", json=payload) as response:
        assert response.status == 400 and response.content_type == "application/json"
        error = (await response.json())["error"]
    # ``param`` is the field to name, or a tuple of acceptable prefixes (a fix may name a sub-field).
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param if isinstance(param, str) else error["param"].startswith(param)
    assert error["message"].startswith(f"{error['param']}: ")
    assert not stack.ledger.usage(tenant).models


async def test_streamed_chunks_echo_the_requested_model(client, prompt) -> None:  # type: ignore[no-untyped-def]
    stream = await client.chat.completions.create(
        model="xrouter:0.5", messages=user(prompt), stream=True, extra_body={"xrouter": {"policy": "cheapest"}})
    assert {chunk.model async for chunk in stream} == {"xrouter:0.5"}


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


# Header names are case-insensitive (Go's net/http sends "Traceparent"); all casings must continue the trace.
@pytest.mark.parametrize("header", ["traceparent", "Traceparent", "TRACEPARENT"])
async def test_a_w3c_traceparent_is_continued(stack, http, prompt, header) -> None:  # type: ignore[no-untyped-def]
    trace_id = uuid.uuid4().hex
    async with http.post(stack.http_url + "/v1/chat/completions",
                         json={"model": "xrouter", "messages": user(prompt),
                               "xrouter": {"policy": "fixed:claude-v1"}},
                         headers={header: f"00-{trace_id}-00f067aa0ba902b7-01"}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["xrouter"]["trace_id"] == trace_id


async def test_the_traceparent_also_reaches_a_stream(stack, http, prompt) -> None:  # type: ignore[no-untyped-def]
    async with http.post(stack.http_url + "/v1/chat/completions",
                         json={"model": "xrouter", "messages": user(prompt), "stream": True,
                               "xrouter": {"policy": "fixed:claude-v1"}},
                         headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        events = [line.removeprefix("data: ") for line in (await response.text()).split("\n\n") if line]
    assert events[-1] == "[DONE]"
    blocks = [json.loads(e)["xrouter"] for e in events[:-1] if "xrouter" in json.loads(e)]
    assert [b["trace_id"] for b in blocks] == [TRACE_ID]


async def test_without_a_traceparent_each_request_gets_its_own_trace(stack, http, prompt) -> None:  # type: ignore[no-untyped-def]
    trace_ids = set()
    for _ in range(2):
        async with http.post(stack.http_url + "/v1/chat/completions",
                             json={"model": "xrouter", "messages": user(prompt),
                                   "xrouter": {"policy": "fixed:claude-v1"}}) as response:
            assert response.status == 200
            trace_ids.add((await response.json())["xrouter"]["trace_id"])
    assert len(trace_ids) == 2 and TRACE_ID not in trace_ids


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
async def test_json_is_read_as_utf8_whatever_charset_is_named(stack, http, path) -> None:  # type: ignore[no-untyped-def]
    """An unknown charset was a 500 (LookupError); JSON is UTF-8 (RFC 8259), so the body is read as
    such and judged on its content: here it lacks a required field."""
    async with http.post(stack.http_url + path, data='{"model": "xrouter", "x": "é"}'.encode(),
                         headers={"Content-Type": "application/json; charset=bogus"}) as response:
        body = await response.json()
        assert response.status == 400, body
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/feedback"])
@pytest.mark.parametrize(("headers", "data"), [
    pytest.param({"Content-Type": "application/json", "Content-Encoding": "gzip"}, b'{"model": "xrouter"}',
                 id="not-gzip"),
    pytest.param({"Content-Type": "application/json", "Content-Encoding": "deflate"}, b"\x00\x01garbage",
                 id="not-deflate"),
])
async def test_a_body_that_cannot_be_read_is_a_400_in_openai_shape(stack, http, path, headers, data) -> None:  # type: ignore[no-untyped-def]
    """Each was a 500: a body its Content-Encoding cannot undo is the client's error."""
    async with http.post(stack.http_url + path, data=data, headers=headers, compress=False) as response:
        body = await response.json()
        assert response.status == 400, body
    assert body["error"]["param"] == "body" and body["error"]["code"] == "invalid_json"


async def test_a_key_that_is_not_text_is_unauthenticated_not_a_500(stack) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(stack.http_url)

    def send() -> tuple[int, dict]:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            connection.putrequest("POST", "/v1/chat/completions")
            connection.putheader("Authorization", b"Bearer \xff\xfe")
            connection.putheader("Content-Type", "application/json")
            body = json.dumps({"model": "xrouter", "messages": user("hi")}).encode()
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()
    status, body = await asyncio.to_thread(send)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cost_cap_below_every_call_is_a_400_naming_it_not_a_quota(stack, http, prompt, stream) -> None:  # type: ignore[no-untyped-def]
    """It was 429 insufficient_quota, which OpenAI's clients retry on their own, in vain."""
    tenant = new_tenant()
    payload = {"model": "xrouter", "messages": user(prompt), "stream": stream,
               "xrouter": {"tenant": tenant, "max_cost_usd": 1e-6}}
    async with http.post(stack.http_url + "/v1/chat/completions", json=payload) as response:
        assert response.status == 400 and response.content_type == "application/json"
        error = (await response.json())["error"]
    assert (error["param"], error["code"]) == ("xrouter.max_cost_usd", "invalid_value")
    assert error["message"].startswith("xrouter.max_cost_usd: ")
    assert stack.ledger.usage(tenant).total_cost_micro_usd == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_reference_the_reward_service_refuses_is_refused_before_any_call(stack, http, prompt, stream) -> None:  # type: ignore[no-untyped-def]
    """Gold "Z" is no option letter: refused (by the reward service, asked first) before a model is
    called; it used to come after the calls, billed, and mid-stream after the answer's text."""
    tenant = new_tenant()
    payload = {"model": "xrouter", "messages": user(prompt), "stream": stream,
               "xrouter": {"tenant": tenant, "policy": f"fixed:{GPT4}",
                           "reference": {"task_type": "multiple_choice", "gold": "Z"}}}
    async with http.post(stack.http_url + "/v1/chat/completions", json=payload) as response:
        assert response.status == 400 and response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error["param"] == "xrouter.reference.gold" and error["message"].startswith("xrouter.reference.gold: ")
    assert not stack.ledger.usage(tenant).models
