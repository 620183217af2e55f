"""Router LM generation through an OpenAI-compatible ``/v1/completions`` server — vLLM's
``python -m vllm.entrypoints.openai.api_server --model CHECKPOINT_DIR`` on a GPU.

The prompt goes as token ids (the OpenAI protocol allows an array of integers; vLLM serves it), so
the server sees exactly the transcript's context. vLLM's ``return_tokens_as_token_ids`` extension
makes it answer with the generated ids ("token_id:123") and their log-probs; a server without it
answers with text only, which is tokenized here (fine for serving; log-probs are then not known).
``stop_token_ids`` (also a vLLM extension) makes it stop where the transformers backend stops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import aiohttp

from xrouter.common.errors import Unavailable
from xrouter.router.lm.generation import Generation
from xrouter.router.lm.transcript import stop_token_ids

TOKEN_ID_PREFIX = "token_id:"


class CompletionsBackend:
    """POSTs ``{base_url}/completions`` (``base_url`` ends in ``/v1``) for model ``model``."""

    def __init__(self, base_url: str, model: str, tokenizer: Any, api_key: str = "", timeout_s: float = 120.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r}: expected http(s)://host:port/v1")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/completions"
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Generation:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        body = {"model": self.model, "prompt": list(prompt_ids), "max_tokens": max_new_tokens,
                "temperature": temperature, "logprobs": 0, "return_tokens_as_token_ids": True,
                "stop_token_ids": list(self.stop_ids), "skip_special_tokens": True}
        try:
            async with self._session.post(self.url, json=body) as response:
                if response.status != 200:
                    detail = (await response.text())[:500]
                    raise Unavailable(f"router LM server {self.url}: HTTP {response.status}: {detail}")
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Unavailable(f"router LM server {self.url}: {type(error).__name__}: {error}") from None
        except ValueError as error:  # the body was not JSON
            raise Unavailable(f"router LM server {self.url}: malformed reply ({error})") from None
        return self._parse(reply)

    def _parse(self, reply: Any) -> Generation:
        try:
            choice = reply["choices"][0]
            text, finish = choice["text"], choice["finish_reason"]
        except (KeyError, IndexError, TypeError):
            raise Unavailable(f"router LM server {self.url}: malformed reply (no choices[0].text / "
                              f"finish_reason): {str(reply)[:300]}") from None
        if finish not in ("stop", "length"):
            raise Unavailable(f"router LM server {self.url}: unexpected finish_reason {finish!r}")
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        if tokens and all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            ids = tuple(int(t.removeprefix(TOKEN_ID_PREFIX)) for t in tokens)
            values = logprobs.get("token_logprobs")
            log_probs = (tuple(float(v) if v is not None else math.nan for v in values)
                         if isinstance(values, list) and len(values) == len(ids) else None)
        else:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if finish == "stop" and self.tokenizer.eos_token_id is not None:
                ids += (self.tokenizer.eos_token_id,)  # the stop token a text-only server does not show
            log_probs = None
        usage = reply.get("usage") if isinstance(reply, dict) else None
        return Generation(ids, log_probs, finish, *_usage_counts(usage))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _usage_counts(usage: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of the reply's ``usage``; None for a count not reported
    as a non-negative integer (the router then counts the tokens itself)."""
    if not isinstance(usage, dict):
        return None, None
    counts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return tuple(c if isinstance(c, int) and not isinstance(c, bool) and c >= 0 else None  # type: ignore[return-value]
                 for c in counts)
