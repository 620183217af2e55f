"""The declarative model catalog (YAML): who the router may call, through which backend, at what
price. Validated at start-up; every problem names the model entry and the field."""

from __future__ import annotations

import pathlib
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any

import yaml
from pydantic import ConfigDict, Field, StrictInt, StrictStr, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from xrouter.adapters.resilience import CallPolicy
from xrouter.adapters.token_count import TokenizerError, load_tokenizer
from xrouter.common.validation import field_path, first_problem

# Backends this build can call; the catalog refuses any other kind instead of failing per call.
#   replay: recorded outcomes · openai: OpenAI-compatible chat completions over HTTP (OpenAI, vLLM,
#   KServe's OpenAI route) · kserve: Open Inference Protocol v2 (REST or gRPC) · local: a transformers
#   model whose weights a Python package ships. (Tests and embedders may hand AdapterCore other
#   backends with ModelSpecs built in code; only the catalog file is held to this list.)
BACKENDS = frozenset({"replay", "openai", "kserve", "local"})
KSERVE_PROTOCOLS = frozenset({"rest", "grpc"})
MICRO = Decimal(1_000_000)
# USD per one million tokens: a decimal written as a string ("0.4") or a YAML number, finite, >= 0.
Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Tokens = Annotated[StrictInt, Field(gt=0)]


class CatalogError(ValueError):
    """The catalog file is unusable; the message names the entry and field to fix."""


# extra="forbid": a misspelt key (``max_ouput_tokens``) is refused by name, not silently left at its default.
# validate_by_name: code builds one with ``policy=`` (and dataclasses.replace does) where the file says ``resilience``.
@dataclass(frozen=True, config=ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True))
class ModelSpec:
    """One callable model, and one entry of the catalog file (the YAML keys are these fields, but
    ``policy`` is written ``resilience``).
    Prices are exact decimals in USD per one million tokens."""

    id: Annotated[StrictStr, Field(min_length=1)]
    backend: StrictStr
    input_usd_per_mtok: Price
    output_usd_per_mtok: Price
    context_tokens: Tokens
    max_output_tokens: Tokens
    description: StrictStr
    tags: tuple[StrictStr, ...] = ()
    dataset: StrictStr = ""  # replay backend: which recorded outcome set answers
    endpoint: StrictStr = ""
    credentials_env: StrictStr = ""  # name of the variable holding the key, never the key itself
    backend_model: StrictStr = ""  # the name the backend knows the model by (default: id)
    protocol: StrictStr = ""  # kserve: "rest" (the default) or "grpc"
    weights_package: StrictStr = ""  # local: the Python package that ships the weights
    weights_file: StrictStr = ""  # local: the GGUF file inside that package
    tokenizer: StrictStr = ""  # counts tokens a backend does not report (see token_count); "": estimated
    # deadline, retries, breaker, concurrency: the entry's ``resilience`` mapping
    policy: CallPolicy = Field(CallPolicy(), validation_alias="resilience")

    @property
    def served_name(self) -> str:
        """The model name to send to the backend."""
        return self.backend_model or self.id

    def cost_micro_usd(self, input_tokens: int, output_tokens: int) -> int:
        """Exact cost in micro-dollars (USD per 1M tokens is numerically micro-dollars per token)."""
        exact = input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def usd_to_micro(usd: float | str | Decimal) -> int:
    """Dollars to integer micro-dollars, rounding half to even (via the decimal string, not binary)."""
    return int((Decimal(str(usd)) * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def micro_to_usd(micro: int) -> float:
    return float(Decimal(micro) / MICRO)


_ENTRIES = TypeAdapter(list[ModelSpec])


def _where(entries: list[Any], source: str, loc: tuple[int | str, ...]) -> str:
    """``(2, "resilience", "timeout_s")`` → ``<source>: model 'gpt-4'.resilience.timeout_s``."""
    entry = entries[int(loc[0])]
    model_id = entry.get("id") if isinstance(entry, dict) else None
    where = f"{source}: " + (f"model {model_id!r}" if isinstance(model_id, str) and model_id else f"models[{loc[0]}]")
    return f"{where}.{field_path(loc[1:])}" if loc[1:] else where


def parse_catalog(document: Any, source: str = "catalog") -> dict[str, ModelSpec]:
    """Validate a parsed catalog document; returns models by id in file order."""
    if not isinstance(document, dict) or not isinstance(document.get("models"), list):
        raise CatalogError(f"{source}: expected a mapping with a 'models' list")
    if set(document) != {"models"}:  # per-model keys are checked too: nothing is read that is not used
        raise CatalogError(f"{source}: unknown top-level keys {sorted(set(document) - {'models'})}; a catalog holds "
                           "only 'models'")
    # A KServe model speaks REST unless its entry says otherwise.
    entries = [{"protocol": "rest", **entry} if isinstance(entry, dict) and entry.get("backend") == "kserve"
               else entry for entry in document["models"]]
    try:
        specs = _ENTRIES.validate_python(entries)
    except ValidationError as error:
        problem = first_problem(error)
        raise CatalogError(f"{_where(entries, source, problem.loc)}: {problem.message}") from None
    models: dict[str, ModelSpec] = {}
    for spec in specs:
        where = f"{source}: model {spec.id!r}"
        if spec.id in models:
            raise CatalogError(f"{where}: id must be unique")
        _check_backend_fields(spec, where)
        models[spec.id] = spec
    if not models:
        raise CatalogError(f"{source}: the catalog lists no models")
    return models


def _check_backend_fields(spec: ModelSpec, where: str) -> None:
    """What one field's type cannot say: which fields each backend needs."""
    if spec.backend not in BACKENDS:
        raise CatalogError(f"{where}.backend: {spec.backend!r} is not supported (supported: {sorted(BACKENDS)})")
    if spec.backend == "replay" and not spec.dataset:
        raise CatalogError(f"{where}.dataset: a replay model needs the outcome set it replays")
    if spec.backend == "kserve" and spec.protocol not in KSERVE_PROTOCOLS:
        raise CatalogError(f"{where}.protocol: {spec.protocol!r} is not one of {sorted(KSERVE_PROTOCOLS)}")
    if spec.backend in {"openai", "kserve"}:
        grpc = spec.backend == "kserve" and spec.protocol == "grpc"
        wanted = "grpc://host:port" if grpc else "http(s)://host:port/..."
        if not spec.endpoint.startswith(("grpc://",) if grpc else ("http://", "https://")):
            raise CatalogError(f"{where}.endpoint: {spec.backend} model{' (gRPC)' if grpc else ''} needs its URL "
                               f"as {wanted}, got {spec.endpoint!r}")
    if spec.backend == "local" and not (spec.weights_package and spec.weights_file):
        raise CatalogError(f"{where}.weights_package: a local model needs weights_package and weights_file "
                           "(the Python package that ships its GGUF weights, and the file in it)")
    if spec.tokenizer:
        try:
            load_tokenizer(spec.tokenizer)  # loaded (and cached) now: a bad one fails the start, not a call
        except TokenizerError as error:
            raise CatalogError(f"{where}.tokenizer: {error}") from None
    if spec.credentials_env and not spec.credentials_env.replace("_", "").isalnum():
        raise CatalogError(f"{where}.credentials_env: must be an environment variable name, "
                           f"not the credential itself")


def model_ids(path: pathlib.Path | str) -> frozenset[str]:
    """The model ids a catalog file lists, for a service that only names models (metering's
    budgets): the entries are not validated further, and no tokenizer is loaded; the adapters,
    which serve the file, refuse a bad one at their start."""
    try:
        document = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error}") from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str) for e in entries):
        raise CatalogError(f"{path}: expected a mapping with a 'models' list of entries with a string 'id'")
    if not entries:
        raise CatalogError(f"{path}: the catalog lists no models")
    return frozenset(entry["id"] for entry in entries)


def load_catalog(path: pathlib.Path | str) -> dict[str, ModelSpec]:
    """Read and validate a catalog file."""
    try:
        document = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error}") from None
    return parse_catalog(document, str(path))
