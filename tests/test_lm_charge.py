"""The router LM's own tokens are a priced call (role "router"): end to end through the four services
on real gRPC servers with the ledger on real PostgreSQL, an LM checkpoint whose tokens come from a
local server speaking vLLM's OpenAI protocol (tests/lm_completions_server.py, the tiny model behind
it, replies scripted so the episode is known); its ``usage`` counts are what is billed. Also the
price settings, and checkpoints the router must refuse at load (tool-call support)."""

from __future__ import annotations

import pathlib
import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
import sqlalchemy

from lm_completions_server import CompletionsServer
from xrouter.api.common.v1 import common_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common.errors import InvalidArgument
from xrouter.common.settings import SettingsError, load
from xrouter.local_stack import InProcessStack
from xrouter.metering.export import episodes
from xrouter.metering.schema import LedgerCall
from xrouter.router.auth import bearer_interceptors
from xrouter.router.lm import checkpoint
from xrouter.router.lm.generation import TransformersBackend
from xrouter.router.lm.http_generation import CompletionsBackend, _usage_counts
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.policy import EpisodeState
from xrouter.router.settings import RouterSettings
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_models import tiny_llama

IN_STACK_LOOP = pytest.mark.asyncio(loop_scope="module")  # the loop the module's stack runs on

CALL = '<tool_call>{"name": "call_gpt-4-1106-preview", "arguments": {"system_prompt": "Answer."}}</tool_call>'
SELECT = '<tool_call>{"name": "select_response", "arguments": {"call_index": 0}}</tool_call>'
INPUT_USD, OUTPUT_USD = "0.7", "2.9"  # per million tokens; odd figures, so a wrong factor shows
ROUTER_MODEL = "router-lm-7b"
POOL = ["gpt-4-1106-preview", "claude-v2"]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def prompt() -> str:
    env = ReplayEnvironment()
    return next(p.text for p in env.split("validation") if env.scores[p.prompt_id].get("gpt-4-1106-preview") == 1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory, tiny, postgres_server_url):  # type: ignore[no-untyped-def]
    directory = checkpoint.save(tmp_path_factory.mktemp("lm") / "lm", *tiny,
                                {"version": "lm-charge-1", "generation": {"max_new_tokens": 64}})
    server = await CompletionsServer(*tiny).start()
    server.served_models = {str(directory): str(directory)}
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(postgres_server_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'create schema "{schema}"'))
    separator = "&" if "?" in postgres_server_url else "?"
    stack = await InProcessStack(f"{postgres_server_url}{separator}options=-csearch_path%3D{schema}",
                                 policy=str(directory), router_env={
                                     "XROUTER_ROUTER_LM_GENERATION_URL": server.url,
                                     "XROUTER_ROUTER_LM_MODEL_ID": ROUTER_MODEL,
                                     "XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK": INPUT_USD,
                                     "XROUTER_ROUTER_LM_OUTPUT_USD_PER_MTOK": OUTPUT_USD}).start()
    yield stack, server
    await stack.stop()
    await server.stop()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f'drop schema "{schema}" cascade'))
    engine.dispose()


def priced(prompt_tokens: int, completion_tokens: int) -> int:
    return int(prompt_tokens * Decimal(INPUT_USD) + completion_tokens * Decimal(OUTPUT_USD))


def expected_router_calls(server: CompletionsServer, replies: int) -> list[tuple[int, int, int]]:
    """(prompt tokens, completion tokens, micro-USD) of the last ``replies`` generations, as the
    server itself counted them in its ``usage``."""
    counted = [(len(body["prompt"]), len(server.tokenizer(text, add_special_tokens=False)["input_ids"]) + 1)
               for body, text in zip(server.bodies[-replies:], [CALL, SELECT][-replies:], strict=True)]
    return [(p, c, priced(p, c)) for p, c in counted]


def ledger_rows(stack: InProcessStack, request_id: str) -> list[LedgerCall]:
    with sqlalchemy.orm.Session(stack.ledger.engine) as session:
        return list(session.scalars(sqlalchemy.select(LedgerCall).where(LedgerCall.request_id == request_id)
                                    .order_by(LedgerCall.call_index)))


@IN_STACK_LOOP
@pytest.mark.postgres
async def test_grpc_route_bills_each_router_turn_as_its_own_priced_call(served, prompt) -> None:  # type: ignore[no-untyped-def]
    stack, server = served
    server.script = [CALL, SELECT]
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(stack.router_target,
                                         interceptors=bearer_interceptors(stack.admin_key)) as channel:
        reply = await router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
            messages=[common_pb2.ChatMessage(role="user", content=prompt)], tenant=tenant, allowed_models=POOL))
    assert reply.policy_kind == "lm" and reply.strategy == router_pb2.STRATEGY_SELECT and reply.selected_call == 0
    tool, *router = reply.calls
    assert (tool.index, tool.role, tool.model) == (0, "tool", "gpt-4-1106-preview") and tool.cost_micro_usd > 0
    expected = expected_router_calls(server, 2)
    assert [(c.index, c.turn, c.role, c.model) for c in router] == [(1, 1, "router", ROUTER_MODEL),
                                                                   (2, 2, "router", ROUTER_MODEL)]
    assert [(c.input_tokens, c.output_tokens, c.cost_micro_usd) for c in router] == expected
    assert all(c.cost_micro_usd > 0 and c.status == common_pb2.CALL_STATUS_OK for c in router)
    assert reply.total_cost_micro_usd == tool.cost_micro_usd + sum(e[2] for e in expected)
    # The ledger has them as calls of their own, priced the same; they count against the tenant's spend.
    rows = ledger_rows(stack, reply.request_id)
    assert [(r.call_index, r.role, r.model, r.input_tokens, r.output_tokens, r.cost_micro_usd) for r in rows] == [
        (0, "tool", tool.model, tool.input_tokens, tool.output_tokens, tool.cost_micro_usd),
        *[(i + 1, "router", ROUTER_MODEL, *e) for i, e in enumerate(expected)]]
    spend = {m.model: m for m in stack.ledger.usage(tenant).models}
    assert spend[ROUTER_MODEL].calls == 2
    # The training export (metering/EXPORT.md) has them too, and they are in the episode's cost.
    (exported,) = [e for e in episodes(stack.ledger.engine, tenant=tenant) if e["request_id"] == reply.request_id]
    assert [(c["role"], c["model"]) for c in exported["calls"]] == [("tool", tool.model), ("router", ROUTER_MODEL),
                                                                    ("router", ROUTER_MODEL)]
    assert exported["cost_micro_usd"] == exported["reported_cost_micro_usd"] == reply.total_cost_micro_usd


@IN_STACK_LOOP
@pytest.mark.postgres
async def test_http_usage_and_xrouter_calls_include_the_router_tokens(served, prompt) -> None:  # type: ignore[no-untyped-def]
    stack, server = served
    server.script = [CALL, SELECT]
    async with aiohttp.ClientSession() as session, session.post(
            stack.http_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {stack.admin_key}"},
            json={"model": "xrouter", "messages": [{"role": "user", "content": prompt}],
                  "xrouter": {"allowed_models": POOL}}) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    calls = body["xrouter"]["calls"]
    expected = expected_router_calls(server, 2)
    assert [c["role"] for c in calls] == ["tool", "router", "router"]
    assert [(c["input_tokens"], c["output_tokens"]) for c in calls[1:]] == [e[:2] for e in expected]
    assert body["usage"]["prompt_tokens"] == sum(c["input_tokens"] for c in calls)
    assert body["usage"]["completion_tokens"] == sum(c["output_tokens"] for c in calls)
    assert body["usage"]["prompt_tokens"] == calls[0]["input_tokens"] + sum(e[0] for e in expected)
    rows = ledger_rows(stack, body["xrouter"]["request_id"])
    assert [r.role for r in rows] == ["tool", "router", "router"]


TARGETS = {"XROUTER_ROUTER_ADAPTERS_TARGET": "a:1", "XROUTER_ROUTER_METERING_TARGET": "m:1"}


@pytest.mark.parametrize(("variable", "value"), [
    ("XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK", "-0.1"), ("XROUTER_ROUTER_LM_OUTPUT_USD_PER_MTOK", "nan"),
    ("XROUTER_ROUTER_LM_OUTPUT_USD_PER_MTOK", "inf"), ("XROUTER_ROUTER_LM_MODEL_ID", ""),
    ("XROUTER_ROUTER_LM_MODEL_ID", " router ")])
def test_a_price_that_cannot_be_billed_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable} must be"):
        load(RouterSettings, {**TARGETS, variable: value})
    price = load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_LM_INPUT_USD_PER_MTOK": "0"}).lm_generation().price
    assert price.input_usd_per_mtok == 0 and price.cost_micro_usd(10**6, 0) == 0


NO_TOOL_MESSAGES = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('roles must alternate') }}"
                    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPS_TOOLS = ("{% if tools %}{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
               "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
DROPS_SYSTEM = ("{% for m in messages %}{% if m['role'] != 'system' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize(("template", "why"), [
    (NO_TOOL_MESSAGES, r"cannot render a tool call and its result \(TemplateError: roles must alternate\)"),
    (DROPS_TOOLS, r"never renders the tool list \(it mentions tools but drops them\)"),
    (DROPS_SYSTEM, r"never renders the tool list;"),
])
def test_a_chat_template_without_tool_call_support_is_refused_at_load(
        tmp_path: pathlib.Path, tiny: tuple[Any, Any], template: str, why: str) -> None:
    model, tokenizer = tiny
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = template
    directory = checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "no-tools"})
    with pytest.raises(InvalidArgument, match=why + r".*give the checkpoint a chat template that renders a `tools` "
                       "list and `tool` messages") as refused:
        checkpoint.load_policy(directory, list(ReplayEnvironment().options.values()))
    assert refused.value.field == "source"


def test_a_tokenizer_that_strips_tool_call_markup_is_refused_at_load(tmp_path: pathlib.Path) -> None:
    model, shared = tiny_llama(seed=1)  # a model of its own (its embeddings grow), a tokenizer too
    tokenizer = type(shared).from_pretrained(shared.name_or_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    model.resize_token_embeddings(len(tokenizer))
    directory = checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "special-markup"})
    with pytest.raises(InvalidArgument, match=r"the tokenizer does not carry tool-call markup through .*comes "
                       r"back as '\{\"name\".*use a tokenizer that spells <tool_call> as text"):
        checkpoint.load_policy(directory, list(ReplayEnvironment().options.values()))


def test_usage_counts_are_taken_only_when_they_are_counts() -> None:
    assert _usage_counts({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}) == (12, 3)
    assert _usage_counts({"prompt_tokens": True, "completion_tokens": -1}) == (None, None)
    assert _usage_counts({"prompt_tokens": "12"}) == (None, None) and _usage_counts(None) == (None, None)


async def test_each_turn_is_counted_where_its_tokens_were_made(tiny: tuple[Any, Any]) -> None:
    """In process (transformers): the context read and the ids generated. Through a server: its
    ``usage``, which the reply carries beside the ids."""
    model, tokenizer = tiny
    env = ReplayEnvironment()
    state = EpisodeState([("user", "Which is heavier? A) a feather B) a brick")], [env.options[m] for m in POOL],
                         1.0, None, 3, 0)
    local = LMPolicy(tokenizer, TransformersBackend(model, tokenizer), max_new_tokens=8)
    await local.decide(state)
    transcript = local.transcript_of(state)
    assert transcript is not None
    (reply,) = transcript.replies
    assert (reply.prompt_tokens, reply.completion_tokens, reply.turn) == (
        len(transcript.token_ids) - sum(transcript.generated), sum(transcript.generated), 1) and reply.latency_ms > 0
    server = await CompletionsServer(model, tokenizer).start()
    remote = CompletionsBackend(server.url, "m", tokenizer)
    try:
        server.script = [SELECT]
        generation = await remote.generate([1, 2, 3], 64, 0.0)
        assert (generation.prompt_tokens, generation.completion_tokens) == (3, len(generation.token_ids))
        assert server.bodies[-1]["prompt"] == [1, 2, 3]
    finally:
        await remote.aclose()
        await server.stop()
    await local.backend.aclose()
