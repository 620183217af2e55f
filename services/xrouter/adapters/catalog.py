"""The declarative model catalog (YAML): who the router may call, through which backend, at what
price. Validated at start-up; every problem names the model entry and the field."""

from __future__ import annotations

import dataclasses
import pathlib
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import yaml

# Backends this build can call; the catalog refuses any other kind instead of failing per call.
BACKENDS = frozenset({"replay"})
MICRO = Decimal(1_000_000)


class CatalogError(ValueError):
    """The catalog file is unusable; the message names the entry and field to fix."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One callable model. Prices are exact decimals in USD per one million tokens."""

    id: str
    backend: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    context_tokens: int
    max_output_tokens: int
    description: str
    tags: tuple[str, ...] = ()
    dataset: str = ""  # replay backend: which recorded outcome set answers
    endpoint: str = ""
    credentials_env: str = ""  # name of the variable holding the key, never the key itself

    def cost_micro_usd(self, input_tokens: int, output_tokens: int) -> int:
        """Exact cost in micro-dollars (USD per 1M tokens is numerically micro-dollars per token)."""
        exact = input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def usd_to_micro(usd: float | str | Decimal) -> int:
    """Dollars to integer micro-dollars, rounding half to even (via the decimal string, not binary)."""
    return int((Decimal(str(usd)) * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def micro_to_usd(micro: int) -> float:
    return float(Decimal(micro) / MICRO)


def _field(entry: dict[str, Any], where: str, name: str, kind: type, default: Any = None) -> Any:
    if name not in entry:
        if default is not None:
            return default
        raise CatalogError(f"{where}: missing field {name!r}")
    value = entry[name]
    if kind is Decimal:
        try:
            price = Decimal(str(value))
        except InvalidOperation:
            raise CatalogError(f"{where}.{name}: not a number: {value!r}") from None
        if not price.is_finite() or price < 0:
            raise CatalogError(f"{where}.{name}: must be a finite price >= 0, got {value!r}")
        return price
    if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise CatalogError(f"{where}.{name}: must be a positive integer, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise CatalogError(f"{where}.{name}: must be a string, got {value!r}")
    return value


def parse_catalog(document: Any, source: str = "catalog") -> dict[str, ModelSpec]:
    """Validate a parsed catalog document; returns models by id in file order."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise CatalogError(f"{source}: expected a mapping with a 'models' list")
    models: dict[str, ModelSpec] = {}
    for number, entry in enumerate(document["models"]):
        where = f"{source}: models[{number}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: expected a mapping, got {entry!r}")
        model_id = _field(entry, where, "id", str)
        where = f"{source}: model {model_id!r}"
        if not model_id or model_id in models:
            raise CatalogError(f"{where}: id must be non-empty and unique")
        backend = _field(entry, where, "backend", str)
        if backend not in BACKENDS:
            raise CatalogError(f"{where}.backend: {backend!r} is not supported (supported: {sorted(BACKENDS)})")
        tags = entry.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise CatalogError(f"{where}.tags: must be a list of strings")
        spec = ModelSpec(
            id=model_id, backend=backend,
            input_usd_per_mtok=_field(entry, where, "input_usd_per_mtok", Decimal),
            output_usd_per_mtok=_field(entry, where, "output_usd_per_mtok", Decimal),
            context_tokens=_field(entry, where, "context_tokens", int),
            max_output_tokens=_field(entry, where, "max_output_tokens", int),
            description=_field(entry, where, "description", str),
            tags=tuple(tags), dataset=_field(entry, where, "dataset", str, ""),
            endpoint=_field(entry, where, "endpoint", str, ""),
            credentials_env=_field(entry, where, "credentials_env", str, ""))
        if backend == "replay" and not spec.dataset:
            raise CatalogError(f"{where}.dataset: a replay model needs the outcome set it replays")
        models[model_id] = spec
    if not models:
        raise CatalogError(f"{source}: the catalog lists no models")
    return models


def load_catalog(path: pathlib.Path | str) -> dict[str, ModelSpec]:
    """Read and validate a catalog file."""
    try:
        document = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error}") from None
    return parse_catalog(document, str(path))
