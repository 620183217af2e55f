"""GRPO rollouts through vLLM (training/xrouter_training/lm_vllm_rollouts.py): a real vLLM server
(the CPU build, as in test_adapters_vllm.py) serves the trainer's tiny model; after the trainer's
weights change, the server keeps the old ones until a sync, and the probe check says so."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
import torch

from vllm_tiny_model import vllm_python
from xrouter_training.config import ConfigError, TrainConfig


def test_the_rollout_engine_is_a_known_one_and_only_for_the_lm_policy() -> None:
    assert TrainConfig(policy="lm", lm_model="tiny", lm_rollout_engine="vllm").lm_rollout_engine == "vllm"
    with pytest.raises(ConfigError, match="lm_rollout_engine='sglang'"):
        TrainConfig(policy="lm", lm_model="tiny", lm_rollout_engine="sglang")
    with pytest.raises(ConfigError, match="only read with policy: lm"):
        TrainConfig(lm_rollout_engine="vllm")


def test_the_servers_share_of_the_gpu_is_bounded_and_only_read_with_vllm() -> None:
    assert TrainConfig(policy="lm", lm_model="tiny", lm_rollout_engine="vllm", lm_vllm_gpu_memory=0.5).lm_vllm_gpu_memory == 0.5
    for share in (0.0, 1.0, -0.2):
        with pytest.raises(ConfigError, match=f"lm_vllm_gpu_memory={share}: a share of the GPU"):
            TrainConfig(policy="lm", lm_model="tiny", lm_rollout_engine="vllm", lm_vllm_gpu_memory=share)
    with pytest.raises(ConfigError, match="only read with lm_rollout_engine: vllm"):
        TrainConfig(policy="lm", lm_model="tiny", lm_vllm_gpu_memory=0.5)
    with pytest.raises(ConfigError, match="only read with policy: lm"):
        TrainConfig(lm_vllm_gpu_memory=0.5)


def test_the_server_runs_the_trainers_dtype_and_takes_its_share_only_of_a_gpu(tmp_path: pathlib.Path) -> None:
    from xrouter_training.lm_models import tiny_llama
    from xrouter_training.lm_vllm_rollouts import VLLMRollouts

    model, tokenizer = tiny_llama(seed=0)
    args = VLLMRollouts(model, tokenizer, tmp_path, gpu_memory=0.25).server_args()
    assert args[args.index("--dtype") + 1] == "float32" and "--gpu-memory-utilization" not in args  # CPU
    model.to(torch.bfloat16)
    args = VLLMRollouts(model, tokenizer, tmp_path, gpu_memory=0.25).server_args()
    assert args[args.index("--dtype") + 1] == "bfloat16"
    # On a GPU (faked by the device the parameters report): the trainer keeps the rest of it.
    on_gpu = VLLMRollouts(model, tokenizer, tmp_path, gpu_memory=0.25)
    on_gpu.model = _OnDevice(model, torch.device("cuda", 0))
    args = on_gpu.server_args()
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.25"


class _OnDevice:
    """A model whose parameters report another device (no GPU here)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self._model, self._device = model, device

    def parameters(self):  # type: ignore[no-untyped-def]
        for parameter in self._model.parameters():
            yield _Parameter(parameter.dtype, self._device)


class _Parameter:
    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_the_server_samples_the_trainers_weights_only_after_a_sync(tmp_path: pathlib.Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from xrouter_training.lm_models import tiny_llama
    from xrouter_training.lm_vllm_rollouts import VLLMRollouts, WeightSyncError

    monkeypatch.setenv("XROUTER_VLLM_PYTHON", vllm_python())
    model, tokenizer = tiny_llama(seed=0)
    engine = VLLMRollouts(model, tokenizer, tmp_path / "engine", max_model_len=512, eager=True)
    prompt = tokenizer("route this request", add_special_tokens=False)["input_ids"]

    def greedy(steps: int = 4) -> list[int]:
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(steps):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        return ids[len(prompt):]

    def served(backend) -> list[int]:  # type: ignore[no-untyped-def]
        async def generate() -> list[int]:
            try:
                return list((await backend.generate(prompt, 4, 0.0)).token_ids)
            finally:
                await backend.aclose()  # its HTTP session belongs to this event loop
        return asyncio.run(generate())

    with engine.serving() as backend:  # serving() has checked the first weights already
        first = served(backend)
        assert first and first == greedy()[:len(first)]  # a stop token may end it early
        with torch.no_grad():  # an "update": the trainer's weights move, the server's do not
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.5)
        with pytest.raises(WeightSyncError, match="does not serve the trainer's weights"):
            engine.check()
        seconds = engine.sync()
        assert seconds > 0 and engine.version == 1
        second = served(backend)
        assert second and second == greedy()[:len(second)] and second != first
        assert not (tmp_path / "engine" / "weights-0").exists()  # only the served weights are kept
    assert not any((tmp_path / "engine").glob("weights-*"))
