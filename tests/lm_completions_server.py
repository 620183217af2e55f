"""A local HTTP server that speaks the OpenAI ``/v1/completions`` protocol the way vLLM serves it
(a prompt of token ids; ``logprobs``; vLLM's ``return_tokens_as_token_ids`` and ``stop_token_ids``
extensions), backed by a real transformers model — for testing the router LM's HTTP generation
backend without vLLM, which cannot be installed beside our pins.

Replies are the model's own greedy or sampled generation, or — when ``script`` holds texts — those
texts, one per request, with the model's real log-probabilities for their tokens (teacher-forced).
``fail_with`` makes the next request fail with that HTTP status and an OpenAI-style error body;
``text_only`` answers without logprobs, as a server without vLLM's extensions would; with
``served_models`` set (served name → the directory it was loaded from: vLLM's
``--served-model-name`` → ``--model``), ``/v1/models`` lists them as vLLM does (``id``, ``root``)
and a request for any other model gets vLLM's 404 ("The model ... does not exist")."""

from __future__ import annotations

import time
from typing import Any

import torch
from aiohttp import web

from local_http import LocalHttpServer


class CompletionsServer(LocalHttpServer):
    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.script: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.text_only = False
        self.served_models: dict[str, str] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": root,
             "parent": None, "max_model_len": 8192} for name, root in (self.served_models or {}).items()]})

    async def _completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        if self.fail_with is not None:
            status, self.fail_with = self.fail_with, None
            return web.json_response({"error": {"message": f"scripted failure {status}", "type": "server_error",
                                                "code": status}}, status=status)
        if self.served_models is not None and body.get("model") not in self.served_models:
            return web.json_response({"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                                      "type": "NotFoundError", "param": None, "code": 404}, status=404)
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            return web.json_response({"error": {"message": "this test server takes prompts as token ids",
                                                "type": "invalid_request_error"}}, status=400)
        max_tokens = int(body.get("max_tokens", 16))
        stop_ids = set(body.get("stop_token_ids") or [self.tokenizer.eos_token_id])
        if self.script:
            ids = self.tokenizer(self.script.pop(0), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        else:
            ids = self._generate(prompt, max_tokens, float(body.get("temperature", 1.0)), stop_ids)
        ids = ids[:max_tokens]
        finish = "stop" if ids and ids[-1] in stop_ids else "length"
        choice: dict[str, Any] = {"index": 0, "text": self.tokenizer.decode(ids, skip_special_tokens=True),
                                  "finish_reason": finish, "logprobs": None}
        if body.get("logprobs") is not None and not self.text_only:
            tokens = ([f"token_id:{i}" for i in ids] if body.get("return_tokens_as_token_ids")
                      else self.tokenizer.convert_ids_to_tokens(ids))
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": self._log_probs(prompt, ids),
                                  "top_logprobs": None, "text_offset": None}
        return web.json_response({"id": f"cmpl-{len(self.bodies)}", "object": "text_completion",
                                  "created": int(time.time()), "model": body.get("model"), "choices": [choice],
                                  "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                                            "total_tokens": len(prompt) + len(ids)}})

    def _generate(self, prompt: list[int], max_tokens: int, temperature: float, stop_ids: set[int]) -> list[int]:
        ids = torch.tensor([prompt])
        options: dict[str, Any] = ({"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                                   if temperature > 0 else {"do_sample": False})
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      eos_token_id=sorted(stop_ids), pad_token_id=self.tokenizer.pad_token_id,
                                      **options)
        return [int(i) for i in out[0, len(prompt):]]

    def _log_probs(self, prompt: list[int], ids: list[int]) -> list[float]:
        with torch.inference_mode():
            logits = self.model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
        return [float(x) for x in torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).squeeze(1)]
