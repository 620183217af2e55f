"""Where the router LM's tokens come from: one interface, two implementations — transformers in this
process (CPU or GPU; what training samples with) and an OpenAI-compatible completions server such as
vLLM (http_generation.py). Both take the context as token ids and return the generated ids, so the
transcript never re-tokenizes text."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, Protocol

from xrouter.router.lm.transcript import stop_token_ids


@dataclasses.dataclass(frozen=True)
class Generation:
    """Generated token ids, the backend's log-probability of each under the model's own distribution
    (temperature 1; None when the backend reports none), and why generation ended."""

    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...] | None
    finish_reason: str  # "stop": a stop token ended it; "length": max_new_tokens ran out
    # What the backend billed itself for (an OpenAI-compatible server's ``usage``); None: not reported,
    # and the router counts the context and the generated ids it holds.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class GenerationBackend(Protocol):
    """Continues a token context; temperature 0 is greedy."""

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Generation: ...

    async def aclose(self) -> None: ...


class TransformersBackend:
    """``model.generate`` on the model's device, in one worker thread (generation is compute-bound;
    parallel generations on one CPU model only slow each other down, and the event loop stays free).

    Sampling is from the plain softmax(logits / temperature): no top-k, top-p or repetition penalty,
    whatever the model's generation_config says, so the trainer's log-probabilities describe the
    distribution the tokens really came from."""

    def __init__(self, model: Any, tokenizer: Any, prefix_caches: int = 4, batch_same_context: bool = False) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="router-lm")
        # Key/value caches of recent contexts, most recent first. Why: the G episodes of a GRPO group
        # share their whole first prompt (router prompt, tools, query: ~2.4k tokens with 11 models,
        # whose prefill is most of a turn on CPU), and each later turn extends the one before.
        self._caches: list[tuple[list[int], Any]] = []
        self._cache_capacity = prefix_caches
        self.reused_tokens = 0  # context tokens served from the caches (a measure of what they save)
        # transformers >= 5.2x names the argument ``cache``; older versions ``past_key_values``.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # Batched sampling of a GRPO group: the G episodes of a group, played concurrently, ask for
        # the same first-turn context at once; one batched decode samples all G replies (the context
        # prefilled once, its cache repeated G times). Contexts that differ still go one by one.
        self.batch_same_context = batch_same_context
        self._pending: dict[tuple[tuple[int, ...], int, float], list[asyncio.Future[Generation]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.batched_samples = 0  # generations that shared a batched decode with others of their context

    def clear_caches(self) -> None:
        """Forget cached contexts; call after the weights change (they were computed with the old ones)."""
        self._caches.clear()

    def _context_cache(self, context: list[int]) -> Any:
        """A key/value cache holding ``context``: the cached context sharing the longest prefix with
        it, cut to that prefix, then extended with the rest."""
        import copy

        import torch
        from transformers import DynamicCache

        shared, cache = max(((_common_prefix(ids, context), c) for ids, c in self._caches),
                            key=lambda entry: entry[0], default=(0, None))
        if cache is None or shared == 0:
            shared, cache = 0, DynamicCache()
        else:
            cache = copy.deepcopy(cache)
            if cache.get_seq_length() > shared:
                cache.crop(shared - cache.get_seq_length())  # a negative count: drop that many from the end
        self.reused_tokens += shared
        rest = context[shared:]
        if rest:
            with torch.inference_mode():
                self.model(input_ids=torch.tensor([rest], device=self.model.device), use_cache=True,
                           logits_to_keep=1, **{self._cache_arg: cache})
        if self._cache_capacity:
            self._caches = [(list(context), copy.deepcopy(cache))] + [e for e in self._caches if e[0] != context]
            del self._caches[self._cache_capacity:]
        return cache

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Generation:
        loop = asyncio.get_running_loop()
        if not self.batch_same_context:
            return await loop.run_in_executor(self._worker, self.generate_blocking, list(prompt_ids), max_new_tokens,
                                              temperature)
        future: asyncio.Future[Generation] = loop.create_future()
        self._pending.setdefault((tuple(prompt_ids), max_new_tokens, temperature), []).append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Serve the waiting requests, each distinct context as one batched decode of all who asked."""
        loop = asyncio.get_running_loop()
        while self._pending:
            for _ in range(4):  # a few loop turns: let the group's other episodes reach the same turn
                await asyncio.sleep(0)
            key = next(iter(self._pending))
            futures = self._pending.pop(key)
            try:
                generations = await loop.run_in_executor(self._worker, self.sample_blocking, list(key[0]), key[1],
                                                         key[2], len(futures))
            except BaseException as error:  # noqa: BLE001 — handed to every waiter, none swallowed
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                continue
            self.batched_samples += len(futures) if len(futures) > 1 else 0
            for future, generation in zip(futures, generations, strict=True):
                if not future.done():  # its episode may have been cancelled meanwhile
                    future.set_result(generation)

    def generate_blocking(self, prompt_ids: list[int], max_new_tokens: int, temperature: float) -> Generation:
        return self.sample_blocking(prompt_ids, max_new_tokens, temperature, 1)[0]

    def sample_blocking(self, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                        count: int) -> list[Generation]:
        """``count`` continuations of one context in one batched decode (independent samples when
        temperature > 0)."""
        import torch
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
            else {"do_sample": False}
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=list(self.stop_ids),
                                  pad_token_id=self.tokenizer.pad_token_id or self.stop_ids[0],
                                  return_dict_in_generate=True, output_logits=True, **sampling)
        inputs = torch.tensor([prompt_ids] * count, device=self.model.device)
        was_training = self.model.training
        self.model.eval()
        try:
            # generate() then computes only the last prompt token on top of the cached context.
            reuse = {}
            if self._cache_capacity:
                cache = self._context_cache(prompt_ids[:-1])
                if count > 1:
                    cache.batch_repeat_interleave(count)
                reuse = {self._cache_arg: cache}
            with torch.inference_mode():
                out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config,
                                          **reuse)
        finally:
            self.model.train(was_training)
        logits = torch.stack(out.logits, dim=1).float()  # raw logits, [count, new, vocab]
        generations = []
        for row in range(count):
            new = out.sequences[row, len(prompt_ids):].tolist()
            # A row that stopped early is padded while the others go on: it ends at its stop token.
            end = next((i + 1 for i, token in enumerate(new) if token in self.stop_ids), len(new))
            ids = tuple(new[:end])
            log_probs = torch.log_softmax(logits[row, :end], dim=-1).gather(
                1, torch.tensor(ids, device=logits.device)[:, None]).squeeze(1)
            finish = "stop" if ids and ids[-1] in self.stop_ids else "length"
            generations.append(Generation(ids, tuple(float(x) for x in log_probs), finish))
        return generations

    async def aclose(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)
