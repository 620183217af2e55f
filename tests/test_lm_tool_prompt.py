"""The router LM's compact tool prompt and its cut of long messages: what the model is shown, that
the standing part no longer depends on the pool, that it is shorter, and that a checkpoint carries
the rendering it was trained with (and an unknown one is refused)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import torch

from xrouter.common.errors import InvalidArgument
from xrouter.router.compact.checkpoint import catalog_hash
from xrouter.router.lm import checkpoint
from xrouter.router.lm.generation import TransformersBackend
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.lm.tools import about, build_toolset, request_prompt, tool_names
from xrouter.router.lm.transcript import ChatRenderer, Transcript
from xrouter.router.policy import EpisodeState
from xrouter.router.policy_store import build_policy
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_models import tiny_llama

QUERY = "Which is heavier? A) a feather B) a brick"


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_llama(seed=0)


def state_for(env: ReplayEnvironment, models: list[str], text: str = QUERY, turns: int = 3) -> EpisodeState:
    return EpisodeState([("user", text)], [env.options[m] for m in models], 30.0, None, turns, 0)


def start(renderer: ChatRenderer, state: EpisodeState, tool_prompt: str) -> Transcript:
    toolset = build_toolset(state, tool_prompt)
    return renderer.start(request_prompt(state, toolset), state.messages, toolset)


def test_compact_prompt_tables_every_model_with_prices_and_estimate(env: ReplayEnvironment, tiny: Any) -> None:
    _, tokenizer = tiny
    state = state_for(env, sorted(env.options))
    text = tokenizer.decode(start(ChatRenderer(tokenizer), state, "compact").token_ids)
    for name, model in tool_names(sorted(env.options)).items():
        option = env.options[model]
        row = (f"{name} | {option.input_usd_per_mtok:g} / {option.output_usd_per_mtok:g} | "
               f"{state.estimate_call_usd(option):.6f} | ")
        assert row in text, row
    assert '<tool_call>{"name": <tool>, "arguments": <json object>}</tool_call>' in text
    assert "select_response" in text and "lambda = 30" in text
    assert "<tools>" not in text and '"type": "function"' not in text  # no per-model JSON signatures
    # The call syntax comes before this request's λ and table, the conversation last.
    assert text.index("call_<model>") < text.index("lambda = 30") < text.index("call_gpt-4-1106-preview |")
    assert text.index("call_gpt-4-1106-preview |") < text.index(QUERY)


def test_compact_standing_part_is_the_same_for_every_pool(env: ReplayEnvironment, tiny: Any) -> None:
    _, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    a = start(renderer, state_for(env, ["gpt-4-1106-preview", "claude-v2"]), "compact").token_ids
    b = start(renderer, state_for(env, ["mistralai/mistral-7b-chat"]), "compact").token_ids
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert "| about):\ncall_" in tokenizer.decode(a[:shared + 1])  # they part in the table's first row
    full_a = start(renderer, state_for(env, ["gpt-4-1106-preview", "claude-v2"]), "full").token_ids
    full_b = start(renderer, state_for(env, ["mistralai/mistral-7b-chat"]), "full").token_ids
    assert next(i for i, (x, y) in enumerate(zip(full_a, full_b)) if x != y) < shared


def test_compact_prompt_is_shorter_and_keeps_the_tool_names(env: ReplayEnvironment, tiny: Any) -> None:
    _, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    state = state_for(env, sorted(env.options))
    full, compact = start(renderer, state, "full"), start(renderer, state, "compact")
    assert len(compact.token_ids) < 0.75 * len(full.token_ids)
    assert compact.toolset.models == full.toolset.models  # same actions, same parser
    assert [t["function"]["name"] for t in compact.toolset.tools] == [t["function"]["name"] for t in full.toolset.tools]


def test_a_final_turn_offers_only_select_response(env: ReplayEnvironment, tiny: Any) -> None:
    _, tokenizer = tiny
    text = tokenizer.decode(start(ChatRenderer(tokenizer), state_for(env, ["claude-v2"], turns=1), "compact").token_ids)
    assert "one per model in the table" not in text and "call_claude-v2 |" not in text
    assert "select_response, arguments" in text and "allows no model calls" in text


def test_about_is_the_first_sentence_cut_to_a_few_words() -> None:
    assert about("Cheap model. Good at code.") == "Cheap model."
    long = " ".join(f"w{i}" for i in range(30)) + "."
    assert about(long) == " ".join(f"w{i}" for i in range(16)) + " ..."
    assert "|" not in about("a | b")  # the table's separator cannot appear in a cell


def test_message_tokens_cut_long_messages_from_the_left(env: ReplayEnvironment, tiny: Any) -> None:
    _, tokenizer = tiny
    long_text = " ".join(f"example {i}." for i in range(400)) + " QUESTION: " + QUERY
    state = state_for(env, ["claude-v2"], text=long_text)
    whole = tokenizer.decode(start(ChatRenderer(tokenizer), state, "compact").token_ids)
    cut = tokenizer.decode(start(ChatRenderer(tokenizer, message_tokens=64), state, "compact").token_ids)
    assert "example 0." in whole and "example 0." not in cut
    assert "[...] " in cut and cut.rstrip().endswith("<|im_start|>assistant") and QUERY in cut
    assert len(tokenizer(cut)["input_ids"]) < len(tokenizer(whole)["input_ids"]) - 500
    assert state.messages == [("user", long_text)]  # the models called still get the whole conversation
    short = state_for(env, ["claude-v2"])
    assert (start(ChatRenderer(tokenizer, 64), short, "compact").token_ids
            == start(ChatRenderer(tokenizer), short, "compact").token_ids)
    with pytest.raises(ValueError, match="message_tokens=-1"):
        ChatRenderer(tokenizer, -1)


async def test_a_tiny_model_plays_an_episode_with_the_compact_prompt(env: ReplayEnvironment, tiny: Any) -> None:
    model, tokenizer = tiny
    torch.manual_seed(2)
    policy = LMPolicy(tokenizer, TransformersBackend(model, tokenizer), temperature=1.0, max_new_tokens=12,
                      tool_prompt="compact", message_tokens=128)
    policy.recorder = []
    episode = await env.play(policy, env.split("train")[0], ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"], 10.0)
    (transcript,) = policy.recorder
    assert transcript.toolset.compact and 1 <= len(transcript.replies) <= 3
    assert episode.result is not None or episode.score == 0


async def test_checkpoint_carries_its_tool_prompt(tmp_path: pathlib.Path, env: ReplayEnvironment, tiny: Any) -> None:
    model, tokenizer = tiny
    manifest = {"version": "lm-compact", "catalog_hash": catalog_hash(list(env.options.values())),
                "generation": {"max_new_tokens": 8, "tool_prompt": "compact", "message_tokens": 256}}
    policy = await build_policy(str(checkpoint.save(tmp_path / "lm", model, tokenizer, manifest)),
                                list(env.options.values()))
    assert isinstance(policy, LMPolicy)
    assert (policy.tool_prompt, policy.renderer.message_tokens) == ("compact", 256)
    old = await build_policy(str(checkpoint.save(tmp_path / "old", model, tokenizer, {"version": "old"})),
                             list(env.options.values()))
    assert (old.tool_prompt, old.renderer.message_tokens) == ("full", 0)  # checkpoints from before


@pytest.mark.parametrize(("generation", "message"), [
    ({"tool_prompt": "tiny"}, r"generation.tool_prompt='tiny' is not one of full, compact"),
    ({"message_tokens": -5}, r"generation.message_tokens=-5 must be an integer >= 0"),
    ({"message_tokens": "256"}, r"generation.message_tokens='256' must be an integer >= 0"),
])
async def test_a_checkpoint_with_an_unknown_rendering_is_refused(tmp_path: pathlib.Path, env: ReplayEnvironment,
                                                                 tiny: Any, generation: dict, message: str) -> None:
    model, tokenizer = tiny
    directory = checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "v1", "generation": generation})
    assert json.loads((directory / "manifest.json").read_text())["generation"] == generation
    with pytest.raises(InvalidArgument, match=message):
        await build_policy(str(directory), list(env.options.values()))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lm_tool_prompt", "short", r"lm_tool_prompt='short': expected one of full, compact"),
    ("lm_message_tokens", -1, r"lm_message_tokens=-1: need >= 0"),
])
def test_config_refuses_an_unknown_rendering(field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(policy="lm", lm_model="tiny", **{field: value})
