"""Real checkpoints for the publishing and hot-swap tests: randomly initialised compact routers over
the bundled RouterBench catalog, written by the trainer's own ``save`` (with the real int8 encoder)."""

from __future__ import annotations

import json
import pathlib

import torch

from xrouter.adapters.catalog import load_catalog
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.router.compact.checkpoint import MANIFEST, catalog_hash, save
from xrouter.router.compact.encoder import ONNX_NAME, QueryEncoder, cache_dir
from xrouter.router.compact.features import Vocabulary
from xrouter.router.compact.network import CompactRouter
from xrouter.router.policy import ModelOption


def catalog_options() -> list[ModelOption]:
    return [ModelOption(spec.id, float(spec.input_usd_per_mtok), float(spec.output_usd_per_mtok), spec.description,
                        spec.tags) for spec in load_catalog(DEFAULT_CATALOG).values()]


def encoder_file() -> pathlib.Path:
    """The int8 query encoder (exported once into XROUTER_CACHE_DIR or ~/.cache/xrouter, ~10 s)."""
    path = cache_dir() / ONNX_NAME
    if not path.exists():
        QueryEncoder.load()
    return path


def make_checkpoint(directory: pathlib.Path, version: str, seed: int, models: list[str] | None = None) -> pathlib.Path:
    """A valid checkpoint: an untrained network (seeded) over ``models`` (default: the catalog's)."""
    options = catalog_options()
    models = models or [o.id for o in options]
    vocabulary = Vocabulary(tuple(models), tuple(sorted({t for o in options for t in o.tags})))
    torch.manual_seed(seed)
    network = CompactRouter(len(vocabulary.models), len(vocabulary.tags), hidden=16)
    return save(directory, network, vocabulary, encoder_file(), {
        "version": version, "catalog_hash": catalog_hash(options), "data": {"file": "none: untrained test network"},
        "lambda_range": [0.0, 1000.0], "eval": {}})


def edit_manifest(directory: pathlib.Path, **changes: object) -> None:
    """Change manifest fields in place (without re-hashing, as a hand edit would)."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest, indent=2))
