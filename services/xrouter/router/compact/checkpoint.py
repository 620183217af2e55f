"""Checkpoints of the compact policy: a directory with safetensors weights, the int8 query encoder,
and a manifest (kind, version, vocabulary, catalog snapshot hash, data, λ range, eval metrics and
the sha256 of every file). Loading verifies all of it before a policy is handed out."""

from __future__ import annotations

import hashlib
import os
import json
import pathlib
import shutil
from collections.abc import Iterable
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.router.compact.encoder import QueryEncoder
from xrouter.router.compact.features import Vocabulary
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.policy import CompactPolicy
from xrouter.router.policy import EpisodeState, ModelOption

MANIFEST = "manifest.json"
WEIGHTS = "policy.safetensors"
ENCODER = "encoder.int8.onnx"


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The sha256 of a manifest's own content, so that an edited manifest fails verification."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def catalog_hash(options: Iterable[ModelOption]) -> str:
    """What a policy depends on in a catalog: ids, prices and tags."""
    rows = sorted((o.id, o.input_usd_per_mtok, o.output_usd_per_mtok, sorted(o.tags)) for o in options)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def save(directory: pathlib.Path, network: CompactRouter, vocabulary: Vocabulary, encoder_path: pathlib.Path,
         manifest: dict[str, Any]) -> pathlib.Path:
    """Write a checkpoint (the manifest last, so a half-written directory never verifies)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(directory / WEIGHTS))
    shutil.copyfile(encoder_path, directory / ENCODER)
    full = {**manifest, "kind": "compact", "network": network.config,
            "vocabulary": {"models": list(vocabulary.models), "tags": list(vocabulary.tags)},
            "sha256": {WEIGHTS: sha256(directory / WEIGHTS), ENCODER: sha256(directory / ENCODER)}}
    full = json.loads(json.dumps(full))  # the digest covers exactly what a reader will parse
    full["manifest_sha256"] = manifest_digest(full)
    (directory / MANIFEST).write_text(json.dumps(full, indent=2))
    return directory


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidArgument("source", f"{directory} is not a checkpoint: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgument("source", f"{path}: unreadable manifest ({error})") from None
    if manifest.get("kind") != "compact":
        raise InvalidArgument("source", f"{path}: kind {manifest.get('kind')!r} is not a compact policy")
    # Checkpoints written before the manifest hashed itself have no manifest_sha256: still accepted.
    if "manifest_sha256" in manifest and manifest["manifest_sha256"] != manifest_digest(manifest):
        raise InvalidArgument("source", f"{path}: the manifest was edited after it was written "
                              "(its manifest_sha256 does not match its content)")
    missing = sorted({"version", "network", "vocabulary", "sha256"} - set(manifest))
    if missing:
        raise InvalidArgument("source", f"{path}: the manifest lacks {missing}")
    for name, digest in manifest.get("sha256", {}).items():
        if not (directory / name).is_file() or sha256(directory / name) != digest:
            raise InvalidArgument("source", f"{directory / name}: missing or its sha256 does not match the manifest")
    if set(manifest.get("sha256", {})) != {WEIGHTS, ENCODER}:
        raise InvalidArgument("source", f"{path}: the manifest must hash {WEIGHTS} and {ENCODER}")
    return manifest


def load_policy(directory: pathlib.Path | str, catalog: list[ModelOption], greedy: bool = True) -> CompactPolicy:
    """Verify and load a checkpoint for a catalog; raises InvalidArgument naming what is wrong."""
    import torch
    from safetensors.torch import load_file

    # Decisions are tiny forwards: extra intra-op threads only contend with the server's own work.
    torch.set_num_threads(1)
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    vocabulary = Vocabulary(tuple(manifest["vocabulary"]["models"]), tuple(manifest["vocabulary"]["tags"]))
    known = [o.id for o in catalog if o.id in vocabulary.models]
    if not known:
        raise InvalidArgument("source", f"{directory}: trained on {list(vocabulary.models)}, none of which is in "
                              "the serving catalog")
    network = CompactRouter(**manifest["network"])
    try:
        network.load_state_dict(load_file(str(directory / WEIGHTS)))
    except (RuntimeError, OSError) as error:
        raise InvalidArgument("source", f"{directory / WEIGHTS}: weights do not fit the network ({error})") from None
    # Two intra-op threads: the encoder is most of a decision (~5 ms vs ~8 ms with one, measured here).
    encoder = QueryEncoder(directory / ENCODER, threads=min(2, os.cpu_count() or 1))
    policy = CompactPolicy(network, vocabulary, lambda text: encoder.encode([text])[0],
                           version=str(manifest.get("version", "0")), greedy=greedy)
    policy.manifest = manifest  # type: ignore[attr-defined]
    return policy


async def smoke_episode(policy: CompactPolicy, catalog: list[ModelOption]) -> None:
    """A decision on a synthetic first turn must be a call on a catalog model (refuses broken nets)."""
    from xrouter.router.policy import CallModels

    state = EpisodeState([("user", "Which is heavier? A) a feather B) a brick")], list(catalog), 1.0, None, 3, 0)
    action = await policy.decide(state)
    if not isinstance(action, CallModels) or not all(state.option(c.model) for c in action.calls):
        raise InvalidArgument("source", f"smoke episode failed: first action {action!r} is not a call on the pool")
