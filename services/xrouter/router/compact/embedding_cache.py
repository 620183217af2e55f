"""Persistent query-embedding cache: (encoder fingerprint, sha256 of the text) → vector.

Layout: ``<root>/<fingerprint>/<shard>.npz``, each shard holding ``hashes`` [N, 32] uint8 (sha256 of
the UTF-8 text) beside ``vectors`` [N, dim] float32. Shards are append-only and immutable: a writer
saves a new shard under a name unique to it (time, pid, random suffix) into a temporary file and
renames it into place, so a killed run leaves no partial shard and concurrent writers (torchrun
ranks) never touch each other's files. Readers load every shard once per process into a dict and
pick up shards other processes add later. An unreadable shard is skipped with a warning naming it
and renamed to ``*.corrupt`` (its texts are simply encoded again); failing to write warns too and
keeps the vectors in memory: the cache never stops training.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import time
import uuid
import warnings
from collections.abc import Sequence

import numpy as np

MAX_SHARDS = 64  # more shards than this are merged into one on the next write


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """The vectors of one encoder (fingerprint) under ``root``; use :meth:`open` to share one per process."""

    _open: dict[tuple[pathlib.Path, str], EmbeddingCache] = {}
    _lock = threading.Lock()

    def __init__(self, root: pathlib.Path, fingerprint: str, dim: int) -> None:
        self.directory = pathlib.Path(root) / fingerprint
        self.dim = dim
        self._vectors: dict[bytes, np.ndarray] = {}
        self._shards: set[str] = set()  # shard file names already read (or skipped)

    @classmethod
    def open(cls, root: pathlib.Path, fingerprint: str, dim: int) -> EmbeddingCache:
        """The process-wide cache of ``fingerprint`` under ``root``, refreshed with new shards."""
        with cls._lock:
            key = (pathlib.Path(root).resolve(), fingerprint)
            cache = cls._open.get(key) or cls._open.setdefault(key, cls(root, fingerprint, dim))
        cache.refresh()
        return cache

    def __contains__(self, key: bytes) -> bool:
        return key in self._vectors

    def __getitem__(self, key: bytes) -> np.ndarray:
        return self._vectors[key]

    def __len__(self) -> int:
        return len(self._vectors)

    def shard_paths(self) -> list[pathlib.Path]:
        return sorted(self.directory.glob("*.npz")) if self.directory.is_dir() else []

    def refresh(self) -> None:
        """Read the shards not read yet (written by an earlier run or another process)."""
        for path in self.shard_paths():
            if path.name not in self._shards:
                self._shards.add(path.name)
                self._read(path)

    def _read(self, path: pathlib.Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                hashes, vectors = data["hashes"], data["vectors"]
            if (hashes.dtype != np.uint8 or hashes.ndim != 2 or hashes.shape[1] != 32
                    or vectors.dtype != np.float32 or vectors.shape != (len(hashes), self.dim)
                    or not np.isfinite(vectors).all()):
                raise ValueError(f"unexpected arrays hashes{hashes.shape}:{hashes.dtype} "
                                 f"vectors{vectors.shape}:{vectors.dtype}")
        except FileNotFoundError:
            return  # merged into a newer shard by another process meanwhile
        except Exception as error:  # noqa: BLE001 - any unreadable shard is skipped, never fatal
            warnings.warn(f"embedding cache: skipping unreadable shard {path} ({type(error).__name__}: "
                          f"{error}); its prompts will be encoded again", RuntimeWarning, stacklevel=2)
            try:
                path.rename(path.with_suffix(".corrupt"))
            except OSError:
                pass
            return
        for digest, vector in zip(hashes, vectors, strict=True):
            self._vectors[digest.tobytes()] = vector

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> pathlib.Path | None:
        """Remember ``vectors`` (rows, for ``keys``) and append them to disk as one new shard."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(keys), self.dim)
        for key, vector in zip(keys, vectors, strict=True):
            self._vectors[key] = vector
        hashes = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        try:
            path = self._write(hashes, vectors)
            if len(self._shards) > MAX_SHARDS:
                self._merge()
            return path
        except OSError as error:
            warnings.warn(f"embedding cache: cannot write to {self.directory} ({error}); "
                          "the vectors stay in memory only", RuntimeWarning, stacklevel=2)
            return None

    def _write(self, hashes: np.ndarray, vectors: np.ndarray) -> pathlib.Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        final, temporary = self.directory / name, self.directory / f".{name}.tmp"
        try:
            with open(temporary, "wb") as handle:
                np.savez(handle, hashes=hashes, vectors=vectors)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        self._shards.add(name)
        return final

    def _merge(self) -> None:
        """Fold every shard read so far into one (written first, then the old ones removed)."""
        old = [path for path in self.shard_paths() if path.name in self._shards]
        keys = list(self._vectors)
        self._write(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32),
                    np.stack([self._vectors[key] for key in keys]))
        for path in old:
            path.unlink(missing_ok=True)
            self._shards.discard(path.name)
