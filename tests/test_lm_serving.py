"""Serving an LM checkpoint with its tokens from an OpenAI-compatible completions server (vLLM on a
GPU): the router settings that name the server, a checkpoint loaded through ``build_policy`` and the
policy store generating there (the smoke episode included), and a server that serves other weights
refused while the old policy keeps serving. The server is tests/lm_completions_server.py, which
speaks vLLM's protocol backed by the same tiny model (vLLM itself cannot be installed beside our pins)."""

from __future__ import annotations

import pathlib
import types
from typing import Any

import pytest

from lm_completions_server import CompletionsServer
from xrouter.common.errors import InvalidArgument
from xrouter.common.settings import SettingsError, load
from xrouter.router.baselines import make_baseline
from xrouter.router.lm import checkpoint
from xrouter.router.lm.http_generation import CompletionsBackend
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.policy import Strategy
from xrouter.router.policy_store import ROLLBACK, LMGeneration, PolicyStore, build_policy
from xrouter.router.settings import RouterSettings
from xrouter_training.environment import ReplayEnvironment
from xrouter_training.lm_models import tiny_llama

TARGETS = {"XROUTER_ROUTER_ADAPTERS_TARGET": "a:1", "XROUTER_ROUTER_METERING_TARGET": "m:1"}
CALL = '<tool_call>{"name": "call_gpt-4-1106-preview", "arguments": {"system_prompt": "Answer."}}</tool_call>'
SELECT = '<tool_call>{"name": "select_response", "arguments": {"call_index": 0}}</tool_call>'


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment()


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_llama(seed=0)


@pytest.fixture
def lm_checkpoint(tmp_path: pathlib.Path, tiny: tuple[Any, Any]) -> pathlib.Path:
    model, tokenizer = tiny
    return checkpoint.save(tmp_path / "lm", model, tokenizer, {"version": "lm-serve-1",
                                                                "generation": {"max_new_tokens": 64}})


def test_generation_server_settings_are_checked_at_start_up() -> None:
    config = load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_LM_GENERATION_URL": "http://vllm.gpu:8000/v1",
                                   "XROUTER_ROUTER_LM_SERVED_MODEL": "{version}"})
    assert config.lm_generation() == LMGeneration("http://vllm.gpu:8000/v1", "{version}")
    assert load(RouterSettings, TARGETS).lm_generation() == LMGeneration()  # default: transformers in process
    with pytest.raises(SettingsError, match="XROUTER_ROUTER_LM_GENERATION_URL must be the base URL"):
        load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_LM_GENERATION_URL": "vllm:8000"})
    with pytest.raises(SettingsError, match="set XROUTER_ROUTER_LM_GENERATION_URL too"):
        load(RouterSettings, {**TARGETS, "XROUTER_ROUTER_LM_SERVED_MODEL": "router"})


@pytest.mark.parametrize(("served_model", "expected"), [("", "path"), ("{version}", "lm-serve-1"),
                                                         ("router-lm", "router-lm")])
async def test_an_lm_checkpoint_generates_on_the_named_server(lm_checkpoint: pathlib.Path, env: ReplayEnvironment,
                                                              tiny: tuple[Any, Any], served_model: str,
                                                              expected: str) -> None:
    server = await CompletionsServer(*tiny).start()
    name = str(lm_checkpoint) if expected == "path" else expected
    server.served_models = {name: str(lm_checkpoint)}  # vLLM --model CHECKPOINT [--served-model-name NAME]
    try:
        policy = await build_policy(str(lm_checkpoint), list(env.options.values()),
                                    LMGeneration(server.url, served_model))
        assert isinstance(policy, LMPolicy) and isinstance(policy.backend, CompletionsBackend)
        assert server.bodies and all(b["model"] == name for b in server.bodies)  # the smoke episode ran there
        server.script = [CALL, SELECT]
        prompt = next(p for p in env.split("validation") if env.scores[p.prompt_id].get("gpt-4-1106-preview") == 1.0)
        episode = await env.play(policy, prompt, ["gpt-4-1106-preview", "claude-v2"], 10.0)
        assert episode.result is not None and episode.result.strategy is Strategy.SELECT and episode.score == 1.0
        assert [b["model"] for b in server.bodies[-2:]] == [name, name] and isinstance(server.bodies[-1]["prompt"][0], int)
        await policy.backend.aclose()
    finally:
        await server.stop()


async def test_a_server_serving_other_weights_is_refused_and_the_old_policy_keeps_serving(
        lm_checkpoint: pathlib.Path, env: ReplayEnvironment, tiny: tuple[Any, Any]) -> None:
    server = await CompletionsServer(*tiny).start()
    older = "/models/an-older-checkpoint"
    server.served_models = {older: older}  # vLLM started with another --model
    catalog = dict(env.options)
    cascade = make_baseline("cascade", set(catalog))
    core = types.SimpleNamespace(catalog=catalog, policy=cascade)
    store = PolicyStore(core, "cascade", LMGeneration(server.url))
    try:
        # Probed at load (/v1/models), before a single token is generated there.
        with pytest.raises(InvalidArgument, match=rf"XROUTER_ROUTER_LM_GENERATION_URL={server.url} serves "
                           rf"'{older}', not '{lm_checkpoint}', the checkpoint {lm_checkpoint} \(manifest version "
                           r"'lm-serve-1'\): start vLLM with --model"):
            await store.load(str(lm_checkpoint))
        assert core.policy is cascade and store.source == "cascade" and server.bodies == []
        # The same served name, other weights behind it (--served-model-name reused for an older --model).
        store.lm_generation = LMGeneration(server.url, "router-lm")
        server.served_models = {"router-lm": older}
        with pytest.raises(InvalidArgument, match=rf"serves 'router-lm' from {older}, other weights than the "
                           rf"checkpoint {lm_checkpoint}"):
            await store.load(str(lm_checkpoint))
        assert core.policy is cascade and server.bodies == []
        store.lm_generation = LMGeneration(server.url)
        server.served_models = {str(lm_checkpoint): str(lm_checkpoint)}  # now serves what the pointer names
        policy = await store.load(str(lm_checkpoint))
        assert core.policy is policy and (policy.kind, policy.version) == ("lm", "lm-serve-1")
        await policy.backend.aclose()  # type: ignore[attr-defined]
    finally:
        await server.stop()


async def test_a_rollback_is_refused_while_the_server_serves_the_newer_weights(
        tmp_path: pathlib.Path, env: ReplayEnvironment, tiny: tuple[Any, Any]) -> None:
    # A rollback swaps back the policy object it kept, loading nothing; under a fixed served name a
    # server restarted on the newer checkpoint would answer it with the newer weights.
    older, newer = (checkpoint.save(tmp_path / version, *tiny, {"version": version, "generation": {"max_new_tokens": 64}})
                    for version in ("lm-v1", "lm-v2"))
    server = await CompletionsServer(*tiny).start()
    server.served_models = {"router-lm": str(older)}
    catalog = dict(env.options)
    core = types.SimpleNamespace(catalog=catalog, policy=make_baseline("cascade", set(catalog)))
    store = PolicyStore(core, "cascade", LMGeneration(server.url, "router-lm"))
    loaded = []
    try:
        loaded.append(await store.load(str(older)))
        server.served_models = {"router-lm": str(newer)}  # vLLM restarted on v2, then v2 published
        loaded.append(await store.load(str(newer)))
        with pytest.raises(InvalidArgument, match=rf"serves 'router-lm' from {newer}, other weights than the "
                           rf"checkpoint {older} \(manifest version 'lm-v1'\)"):
            await store.load(ROLLBACK)
        assert core.policy is loaded[1] and store.source == str(newer)
        server.served_models = {"router-lm": str(older)}  # the server back on v1: the rollback goes through
        assert await store.load(ROLLBACK) is loaded[0] and core.policy is loaded[0] and store.source == str(older)
    finally:
        for policy in loaded:
            await policy.backend.aclose()  # type: ignore[attr-defined]
        await server.stop()
