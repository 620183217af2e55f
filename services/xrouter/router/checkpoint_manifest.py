"""The manifest every policy checkpoint carries (compact and LM alike): the sha256 of each file it
lists and of its own content, written last so a half-written directory never verifies. Kept free of
torch and transformers so any loader, publisher or checker can read it."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.router.policy import ModelOption

MANIFEST = "manifest.json"


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


def write_manifest(directory: pathlib.Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` with its own digest (call it after every file it lists is in place)."""
    full = json.loads(json.dumps(manifest))  # the digest covers exactly what a reader will parse
    full["manifest_sha256"] = manifest_digest(full)
    (directory / MANIFEST).write_text(json.dumps(full, indent=2))


def read_verified(directory: pathlib.Path, kind: str, label: str, required: Iterable[str],
                  digest_required: bool = True) -> dict[str, Any]:
    """The manifest of a ``kind`` checkpoint (``label`` names it in errors: "a compact policy"), its own digest and every listed file's sha256 checked;
    InvalidArgument naming the file when anything does not match. ``digest_required=False`` accepts
    manifests written before manifests hashed themselves."""
    path = directory / MANIFEST
    if not path.is_file():
        raise InvalidArgument("source", f"{directory} is not a checkpoint: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgument("source", f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256", {}), dict):
        raise InvalidArgument("source", f"{path}: the manifest must be a JSON object whose sha256 maps file names "
                                        "to digests")
    if manifest.get("kind") != kind:
        raise InvalidArgument("source", f"{path}: kind {manifest.get('kind')!r} is not {label}")
    checked = digest_required or "manifest_sha256" in manifest
    if checked and manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise InvalidArgument("source", f"{path}: the manifest was edited after it was written "
                              "(its manifest_sha256 does not match its content)")
    missing = sorted({"version", "sha256", *required} - set(manifest))
    if missing:
        raise InvalidArgument("source", f"{path}: the manifest lacks {missing}")
    for name, digest in manifest["sha256"].items():
        if not (directory / name).is_file() or sha256(directory / name) != digest:
            raise InvalidArgument("source", f"{directory / name}: missing or its sha256 does not match the manifest")
    return manifest
