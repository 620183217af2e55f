"""GRPO rollouts through vLLM (``lm_rollout_engine: vllm``): a vLLM OpenAI-compatible server
samples the episodes, and the trainer's weights reach it after every update, as verl and TRL drive
vLLM from their trainers.

How the weights travel: the trainer writes them (safetensors and the tokenizer) to a fresh folder
and asks the server to reload from it — ``POST /collective_rpc {"method": "reload_weights",
"kwargs": {"weights_path": ...}}``, vLLM's dev-mode endpoint (``VLLM_SERVER_DEV_MODE=1``) — then
drops the server's prefix cache (``POST /reset_prefix_cache``), whose keys and values belong to the
old weights. On one machine a folder write is cheap next to a step; across GPUs verl and TRL
broadcast over NCCL instead, which a CPU server has no use for.

A reload that did not take would make the run silently off-policy, so after every sync the
server's greedy next token on a probe prompt, and its log-prob, must match the trainer's own
forward pass (both float32)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pathlib
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import torch

from xrouter.router.lm.http_generation import TOKEN_ID_PREFIX, CompletionsBackend
from xrouter_training.vllm_server import INSTALL_HINT, default_vllm_pythons, find_vllm_python, vllm_server

SERVED_NAME = "router-lm"
PROBE = "Which model should answer: what is 2 + 2?"
# |log p(server) − log p(trainer)| allowed for the probe's token: both run float32, but vLLM's CPU
# kernels sum in another order than torch's eager attention.
LOG_PROB_TOLERANCE = 0.02


class WeightSyncError(RuntimeError):
    """The server's weights are not the trainer's."""


class VLLMRollouts:
    """The server and the sync; ``backend`` generates through it once the block has started."""

    def __init__(self, model: Any, tokenizer: Any, folder: pathlib.Path, max_model_len: int = 8192,
                 eager: bool = False, gpu_memory: float = 0.3) -> None:
        """``eager``: skip vLLM's graph compilation (a faster start, slower decoding: tests).
        ``gpu_memory``: the share of the GPU the server may take (weights and KV cache) when the
        trainer is on one: the trainer shares it, and vLLM's own default (0.9) would starve it."""
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.max_model_len, self.eager, self.gpu_memory = max_model_len, eager, gpu_memory
        self.version = 0
        self.base_url = ""
        self.backend: CompletionsBackend | None = None

    @contextlib.contextmanager
    def serving(self) -> Iterator[CompletionsBackend]:
        python, why = find_vllm_python(os.environ.get("XROUTER_VLLM_PYTHON", ""), default_vllm_pythons())
        if not python:
            raise RuntimeError(f"lm_rollout_engine: vllm needs vLLM: {why}. {INSTALL_HINT}, or set "
                               "XROUTER_VLLM_PYTHON to an interpreter that imports vllm")
        self.folder.mkdir(parents=True, exist_ok=True)
        first = self._write_weights()
        args = self.server_args()
        try:
            with vllm_server(python, first, self.folder / "vllm.log", args=args,
                             env={"VLLM_SERVER_DEV_MODE": "1"}) as url:
                self.base_url = url.removesuffix("/v1")
                self.backend = CompletionsBackend(url, SERVED_NAME, self.tokenizer, timeout_s=600)
                self.check()
                yield self.backend
        finally:
            self.backend = None
            shutil.rmtree(self.folder / f"weights-{self.version}", ignore_errors=True)

    def server_args(self) -> list[str]:
        """The server runs the trainer's dtype on the trainer's kind of device, so that the probe's
        log-probs compare like with like; on a GPU it takes only ``gpu_memory`` of it."""
        parameter = next(self.model.parameters())
        dtype = str(parameter.dtype).removeprefix("torch.")
        args = ["--dtype", dtype, "--enable-prefix-caching", "--max-model-len", str(self.max_model_len),
                "--served-model-name", SERVED_NAME, "--generation-config", "vllm", "--seed", "0"]
        if parameter.device.type == "cuda":
            args += ["--gpu-memory-utilization", str(self.gpu_memory)]
        return args + (["--enforce-eager"] if self.eager else [])

    def sync(self) -> float:
        """Send the trainer's current weights to the server; seconds taken."""
        started = time.perf_counter()
        previous = self.folder / f"weights-{self.version}"
        self.version += 1
        path = self._write_weights()
        self._post("/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(path)}})
        self._post("/reset_prefix_cache", None)
        shutil.rmtree(previous, ignore_errors=True)
        self.check()
        return time.perf_counter() - started

    def check(self) -> None:
        """The server's greedy token on the probe, and its log-prob, are the trainer's."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": PROBE}], tokenize=False,
                                                  add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        reply = self._post("/v1/completions", {
            "model": SERVED_NAME, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0, "logprobs": 0,
            "return_tokens_as_token_ids": True})
        try:
            choice = reply["choices"][0]["logprobs"]
            served_token = int(choice["tokens"][0].removeprefix(TOKEN_ID_PREFIX))
            served_log_prob = float(choice["token_logprobs"][0])
        except (KeyError, IndexError, TypeError, ValueError):
            raise WeightSyncError(f"vLLM at {self.base_url}: no token log-prob in its reply: {str(reply)[:300]}") from None
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            logits = self.model(torch.tensor([list(ids)], device=device)).logits[0, -1].float()
        self.model.train(was_training)
        log_probs = torch.log_softmax(logits, -1)
        own = float(log_probs[served_token])
        if not (math.isfinite(served_log_prob) and abs(own - served_log_prob) <= LOG_PROB_TOLERANCE
                and own >= float(log_probs.max()) - LOG_PROB_TOLERANCE):
            raise WeightSyncError(
                f"vLLM at {self.base_url} does not serve the trainer's weights (sync {self.version}): its greedy "
                f"token {served_token} has log-prob {served_log_prob:.4f} there and {own:.4f} here (the trainer's "
                f"greedy token: {int(log_probs.argmax())}); see {self.folder / 'vllm.log'}")

    def _write_weights(self) -> pathlib.Path:
        """The served folder, always with an untied ``lm_head``: vLLM's in-place reload loads layer by
        layer and does not keep a tied head tied (it kept the old head, seen with SmolLM2's tied
        embeddings), so the server is started untied and every sync writes the head out."""
        from safetensors.torch import save_file

        path = self.folder / f"weights-{self.version}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        state = {name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in self.model.state_dict().items()}
        head = self.model.get_output_embeddings()
        state["lm_head.weight"] = head.weight.detach().to("cpu").clone().contiguous()
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(self.model.config)
        config.tie_word_embeddings = False
        config.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def _post(self, path: str, body: dict[str, Any] | None) -> Any:
        request = urllib.request.Request(self.base_url + path, method="POST",  # noqa: S310 - the local server
                                         data=json.dumps(body).encode() if body is not None else b"",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
                text = response.read().decode()
        except urllib.error.HTTPError as error:
            raise WeightSyncError(f"vLLM {path}: HTTP {error.code}: {error.read().decode(errors='replace')[:300]}") from None
        except OSError as error:
            raise WeightSyncError(f"vLLM {path}: {type(error).__name__}: {error}") from None
        return json.loads(text) if text.strip() else None
