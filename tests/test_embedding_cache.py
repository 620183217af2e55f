"""The query-embedding cache behind ``embed_prompts``: keyed by (encoder fingerprint, text), append-only
shards written atomically, corrupt shards skipped; and bulk encoding giving serving's exact vectors."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from xrouter.router.compact.embedding_cache import EmbeddingCache
from xrouter.router.compact.encoder import DIM, QueryEncoder, embed_prompts

TEXTS = ["hi", "What is the capital of France?", "A fairly ordinary sentence about routing and cost. " * 8,
         "few-shot example line. " * 300]  # the last is far past the 256-token limit


@pytest.fixture(scope="module")
def real_encoder() -> QueryEncoder:
    return QueryEncoder.load()  # the int8 export in XROUTER_CACHE_DIR or ~/.cache/xrouter (made once)


class Counting:
    """Wraps an encoder and counts the texts it is asked to encode."""

    def __init__(self, encoder: QueryEncoder, fingerprint: str | None = None) -> None:
        self.encoder, self.fingerprint, self.encoded = encoder, fingerprint or encoder.fingerprint, []

    def encode_bulk(self, texts: Sequence[str], workers: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        self.encoded.extend(texts)
        return self.encoder.encode_bulk(texts, workers)


def shards(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(root.rglob("*.npz"))


def forget_loaded() -> None:
    """Drop the per-process cache registry, as a fresh process would start."""
    EmbeddingCache._open.clear()


def test_bulk_vectors_equal_serving_vectors_whatever_the_company(real_encoder: QueryEncoder,
                                                                 tmp_path: pathlib.Path) -> None:
    serving = np.stack([real_encoder.encode([text])[0] for text in TEXTS])  # what the router computes
    together = embed_prompts(real_encoder, [(str(i), t) for i, t in enumerate(TEXTS)], cache=tmp_path / "a",
                             progress=False)
    assert np.abs(np.stack([together[str(i)] for i in range(len(TEXTS))]) - serving).max() < 1e-5
    # Padding and neighbours change nothing: each text alone, in another cache, gives the same vector.
    for i, text in enumerate(TEXTS):
        alone = embed_prompts(real_encoder, [("x", text)], cache=tmp_path / f"alone{i}", progress=False)
        assert np.abs(alone["x"] - serving[i]).max() < 1e-5
    for workers in (1, 2):
        bulk = dict(real_encoder.encode_bulk(TEXTS, workers=workers))
        assert np.abs(np.stack([bulk[i] for i in range(len(TEXTS))]) - serving).max() < 1e-5
    assert np.allclose(np.linalg.norm(serving, axis=1), 1.0, atol=1e-4)


def test_second_call_encodes_nothing_and_new_text_is_appended(real_encoder: QueryEncoder,
                                                              tmp_path: pathlib.Path) -> None:
    encoder = Counting(real_encoder)
    first = embed_prompts(encoder, [("a", TEXTS[0]), ("b", TEXTS[1]), ("a2", TEXTS[0])], cache=tmp_path,
                          progress=False)
    assert encoder.encoded == TEXTS[:2]  # each distinct text once
    assert set(first) == {"a", "b", "a2"} and first["a"].shape == (DIM,)
    assert np.array_equal(first["a"], first["a2"])
    encoder.encoded.clear()
    again = embed_prompts(encoder, [("b", TEXTS[1]), ("other id, same text", TEXTS[0])], cache=tmp_path,
                          progress=False)
    assert encoder.encoded == []
    assert np.array_equal(again["other id, same text"], first["a"])
    assert len(shards(tmp_path)) == 1

    forget_loaded()  # a new process: reads the shards from disk
    more = embed_prompts(encoder, [("a", TEXTS[0]), ("c", TEXTS[2])], cache=tmp_path, progress=False)
    assert encoder.encoded == [TEXTS[2]]
    assert np.array_equal(more["a"], first["a"])
    assert len(shards(tmp_path)) == 2  # appended as a new shard, the first untouched
    encoder.encoded.clear()
    forget_loaded()
    embed_prompts(encoder, [("a", TEXTS[0]), ("b", TEXTS[1]), ("c", TEXTS[2])], cache=tmp_path, progress=False)
    assert encoder.encoded == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_dir_from_environment(real_encoder: QueryEncoder, tmp_path: pathlib.Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XROUTER_CACHE_DIR", str(tmp_path))
    embed_prompts(real_encoder, [("a", TEXTS[0])], progress=False)
    assert [p.parent.parent for p in shards(tmp_path)] == [tmp_path / "embeddings"]


def test_another_encoder_fingerprint_shares_nothing(real_encoder: QueryEncoder, tmp_path: pathlib.Path) -> None:
    first, second = Counting(real_encoder), Counting(real_encoder, fingerprint="another-encoder")
    embed_prompts(first, [("a", TEXTS[0]), ("b", TEXTS[1])], cache=tmp_path, progress=False)
    embed_prompts(second, [("a", TEXTS[0]), ("b", TEXTS[1])], cache=tmp_path, progress=False)
    assert sorted(second.encoded) == sorted(TEXTS[:2])
    assert {p.parent.name for p in shards(tmp_path)} == {real_encoder.fingerprint, "another-encoder"}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape"])
def test_corrupt_shard_is_skipped_with_a_warning_and_recovered(real_encoder: QueryEncoder, tmp_path: pathlib.Path,
                                                               damage: str) -> None:
    encoder = Counting(real_encoder)
    reference = embed_prompts(encoder, [("a", TEXTS[0]), ("b", TEXTS[1])], cache=tmp_path, progress=False)
    [shard] = shards(tmp_path)
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:200])
    elif damage == "garbage":
        shard.write_bytes(b"not a zip file at all")
    else:
        np.savez(shard, hashes=np.zeros((2, 32), np.uint8), vectors=np.zeros((2, 7), np.float32))
    forget_loaded()
    encoder.encoded.clear()
    with pytest.warns(RuntimeWarning, match=shard.name):
        recovered = embed_prompts(encoder, [("a", TEXTS[0]), ("b", TEXTS[1])], cache=tmp_path, progress=False)
    assert sorted(encoder.encoded) == sorted(TEXTS[:2])  # encoded again
    assert all(np.abs(recovered[k] - reference[k]).max() < 1e-5 for k in reference)
    assert shard.with_suffix(".corrupt").exists() and shard not in shards(tmp_path)
    forget_loaded()
    encoder.encoded.clear()
    embed_prompts(encoder, [("a", TEXTS[0]), ("b", TEXTS[1])], cache=tmp_path, progress=False)
    assert encoder.encoded == []  # the recovered shard serves them now


def test_two_writers_shards_coexist(real_encoder: QueryEncoder, tmp_path: pathlib.Path) -> None:
    """Two processes (torchrun ranks) filling the same cache: each writes its own shard, neither is lost."""
    rank0 = EmbeddingCache(tmp_path, "fp", DIM)  # separate instances: as separate processes hold
    rank1 = EmbeddingCache(tmp_path, "fp", DIM)
    vectors = real_encoder.encode(TEXTS[:2])
    keys = [bytes([i]) * 32 for i in range(2)]
    rank0.refresh()
    rank1.refresh()
    rank0.add(keys[:1], vectors[:1])
    rank1.add(keys[1:], vectors[1:])
    assert len(shards(tmp_path)) == 2
    reader = EmbeddingCache(tmp_path, "fp", DIM)
    reader.refresh()
    assert len(reader) == 2 and np.array_equal(reader[keys[1]], vectors[1])
    rank0.refresh()  # picks up the other rank's shard
    assert keys[1] in rank0


def test_many_shards_are_merged(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xrouter.router.compact.embedding_cache.MAX_SHARDS", 3)
    cache = EmbeddingCache(tmp_path, "fp", 4)
    for i in range(5):
        cache.add([bytes([i]) * 32], np.full((1, 4), i, np.float32))
    assert len(shards(tmp_path)) < 5
    fresh = EmbeddingCache(tmp_path, "fp", 4)
    fresh.refresh()
    assert len(fresh) == 5 and fresh[bytes([4]) * 32][0] == 4.0


def test_unwritable_cache_keeps_vectors_in_memory(tmp_path: pathlib.Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    cache = EmbeddingCache(blocker, "fp", 4)
    with pytest.warns(RuntimeWarning, match="cannot write"):
        assert cache.add([b"k" * 32], np.ones((1, 4), np.float32)) is None
    assert b"k" * 32 in cache
