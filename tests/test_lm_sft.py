"""The LM policy's supervised warm start (training/xrouter_training/lm_sft.py): teacher decisions
render as replies the serving parser reads back as the same decisions; teacher episodes become the
very transcripts GRPO trains on, with only the LM's replies in the loss; fitting them lowers the NLL
of the teacher's tokens and makes a tiny model that never wrote a tool call write them."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest
import torch

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.lm.generation import TransformersBackend
from xrouter.router.lm.parsing import parse_reply
from xrouter.router.policy import Answer, CallModels, SelectResponse, ToolCall
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_models import tiny_llama
from xrouter_training.lm_sft import (
    SupervisedWarmStart, build_teacher, decision, mean_reply_nll, render_reply, reply_log_probs)

# A teacher whose replies the tiny model can learn in seconds: one model, always the same tool call
# (pools without it are skipped), then select_response.
FIXED = "fixed:mistralai/mistral-7b-chat"


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


def config(**changes: Any) -> TrainConfig:
    base = TrainConfig(policy="lm", lm_model="tiny", sft_teacher="cascade", pool_min=2, pool_max=3, lambda_max=300,
                       max_new_tokens=128, lm_micro_batch=1, sft_lr=0.003)
    return dataclasses.replace(base, **changes)


def test_teacher_decisions_render_as_replies_the_parser_reads_back() -> None:
    tool_of = {"gpt-4-1106-preview": "call_gpt-4-1106-preview", "meta/llama-2-70b-chat": "call_meta_llama-2-70b-chat"}
    models = {name: model for model, name in tool_of.items()}
    for action in (CallModels((ToolCall("gpt-4-1106-preview", SYSTEM_PROMPT),
                               ToolCall("meta/llama-2-70b-chat", 'Reply with "A" or "B" only.', 0.7))),
                   SelectResponse(1), Answer("B) a brick")):
        text = render_reply(action, tool_of)
        assert parse_reply(text, models).action == action, text
    two = render_reply(CallModels((ToolCall("gpt-4-1106-preview", "x"), ToolCall("gpt-4-1106-preview", "y"))), tool_of)
    assert two.count("<tool_call>\n{") == 2 and '"temperature"' not in two  # the default 0 is not written


@pytest.mark.parametrize(("change", "message"), [
    ({"sft_teacher": "gpt-4"}, "name a baseline"),
    ({"sft_epochs": 0}, "sft_epochs=0: must be >= 1 with sft_teacher set"),
    ({"sft_lr": 0.0}, "need a learning rate > 0"),
    ({"sft_reward_above": 1.0}, "no episode earns more than reward_k"),
])
def test_bad_warm_start_settings_say_how_to_fix_them(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**change)
    with pytest.raises(ConfigError, match="only read with policy: lm"):
        TrainConfig(sft_teacher="cascade")
    assert config(steps=0).steps == 0  # a warm start alone


async def test_teacher_episodes_become_transcripts_with_only_the_replies_unmasked(env: ReplayEnvironment) -> None:
    model, tokenizer = tiny_llama(seed=0)
    warm = SupervisedWarmStart(config(), env, model, tokenizer, progress=False)
    teacher = await build_teacher("cascade", env, warm.config)
    rollouts = await warm.collect(teacher, env.split("train")[:6], 6, random.Random(0))
    assert len(rollouts) == 6 and all(r.failure == "" for r in rollouts)  # every cascade episode ends properly
    assert any(r.reward > 0 for r in rollouts) and len(warm.keep(rollouts)) == sum(r.reward > 0 for r in rollouts)
    for rollout in rollouts:
        t = rollout.transcript
        # The generated stretches are the replies, each closed by the template's end-of-turn token.
        stretches, current = [], []
        for token, generated in zip(t.token_ids, t.generated, strict=True):
            if generated:
                current.append(token)
            elif current:
                stretches, current = stretches + [current], []
        stretches += [current] if current else []
        assert [tokenizer.decode(s, skip_special_tokens=True) for s in stretches] == [r.text for r in t.replies]
        assert all(s[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") for s in stretches)
        assert t.replies[0].text.startswith("<tool_call>\n{\"name\": \"call_")
        assert len(t.replies) == rollout.episode.result.turns_used  # type: ignore[union-attr]
        context = tokenizer.decode([i for i, g in zip(t.token_ids, t.generated, strict=True) if not g])
        replies = tokenizer.decode([i for i, g in zip(t.token_ids, t.generated, strict=True) if g])
        assert '"response":' in context and '"response":' not in replies  # tool outputs are context only
    # The loss reads exactly the generated tokens: the same log-probs as a full forward, there only.
    t = rollouts[0].transcript
    picked = reply_log_probs(model, [t], warm.pad_id)
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=torch.tensor([t.token_ids])).logits[0, :-1].float(), -1)
    targets = torch.tensor(t.token_ids[1:])
    expected = full.gather(1, targets[:, None]).squeeze(1)[torch.tensor(t.generated[1:])]
    assert picked.shape == (sum(t.generated),) and torch.allclose(picked, expected, atol=1e-4)


def greedy_tool_call_rate(model: Any, tokenizer: Any, transcripts: list[Any]) -> float:
    """The share of the transcripts' reply positions where the model's own greedy reply is a
    well-formed tool call (parsed, not truncated) of that episode's tools."""
    backend, good, total = TransformersBackend(model, tokenizer, prefix_caches=0), 0, 0
    for t in transcripts:
        starts = [i for i, g in enumerate(t.generated) if g and not t.generated[i - 1]]
        for start in starts:
            out = backend.generate_blocking(t.token_ids[:start], 96, 0.0)
            parsed = parse_reply(tokenizer.decode(list(out.token_ids), skip_special_tokens=True), t.toolset.models)
            good += out.finish_reason == "stop" and parsed.action is not None and not isinstance(parsed.action, Answer)
            total += 1
    return good / total


async def test_sft_lowers_the_teachers_nll_and_teaches_the_tool_call_format(env: ReplayEnvironment) -> None:
    model, tokenizer = tiny_llama(seed=1)
    warm = SupervisedWarmStart(config(sft_teacher=FIXED, pool_max=2, sft_epochs=25), env, model, tokenizer,
                               progress=False)
    teacher = await build_teacher(FIXED, env, warm.config)
    kept = warm.keep(await warm.collect(teacher, env.split("train"), 40, random.Random(0)))[:4]
    transcripts = [r.transcript for r in kept]
    assert len(kept) == 4 and all(decision(parse_reply(r.transcript.replies[0].text, r.transcript.toolset.models)
                                           .action) == ("call", ("mistralai/mistral-7b-chat",)) for r in kept)
    nll_before, rate_before = mean_reply_nll(model, transcripts, warm.pad_id), greedy_tool_call_rate(
        model, tokenizer, transcripts)
    rows = warm.fit(transcripts, random.Random(0))
    nll_after, rate_after = mean_reply_nll(model, transcripts, warm.pad_id), greedy_tool_call_rate(
        model, tokenizer, transcripts)
    print(json.dumps({"nll": [nll_before, nll_after], "tool_call_rate": [rate_before, rate_after],
                      "epochs": [round(r["nll"], 3) for r in rows]}))
    assert len(rows) == 25 and rows[-1]["tokens"] == sum(sum(t.generated) for t in transcripts)
    # Measured (seed 1, 100 steps of one transcript): NLL 10.81 → 0.009; greedy well-formed tool calls
    # at the 8 reply positions 0 → 8. (80 steps at lr 0.004 left NLL 0.12 and 3 of 8 well formed.)
    assert rate_before == 0.0 and rate_after >= 0.75
    assert nll_after < 0.05 * nll_before
