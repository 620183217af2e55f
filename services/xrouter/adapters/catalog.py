"""The declarative model catalog (YAML): who the router may call, through which backend, at what
price. Validated at start-up; every problem names the model entry and the field."""

from __future__ import annotations

import dataclasses
import pathlib
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import yaml

from xrouter.adapters.resilience import CallPolicy
from xrouter.adapters.token_count import TokenizerError, load_tokenizer

# Backends this build can call; the catalog refuses any other kind instead of failing per call.
#   replay: recorded outcomes · openai: OpenAI-compatible chat completions over HTTP (OpenAI, vLLM,
#   KServe's OpenAI route) · kserve: Open Inference Protocol v2 (REST or gRPC) · local: a transformers
#   model whose weights a Python package ships.
BACKENDS = frozenset({"replay", "openai", "kserve", "local"})
KSERVE_PROTOCOLS = frozenset({"rest", "grpc"})
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
    backend_model: str = ""  # the name the backend knows the model by (default: id)
    protocol: str = ""  # kserve: "rest" or "grpc"
    weights_package: str = ""  # local: the Python package that ships the weights
    weights_file: str = ""  # local: the GGUF file inside that package
    tokenizer: str = ""  # counts tokens a backend does not report (see token_count); "": estimated
    policy: CallPolicy = CallPolicy()  # deadline, retries, breaker, concurrency

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
        spec = dataclasses.replace(
            spec, backend_model=_field(entry, where, "backend_model", str, ""),
            protocol=_field(entry, where, "protocol", str, "rest" if backend == "kserve" else ""),
            weights_package=_field(entry, where, "weights_package", str, ""),
            weights_file=_field(entry, where, "weights_file", str, ""),
            tokenizer=_field(entry, where, "tokenizer", str, ""),
            policy=_policy(entry.get("resilience", {}), f"{where}.resilience"))
        _check_backend_fields(spec, where)
        models[model_id] = spec
    if not models:
        raise CatalogError(f"{source}: the catalog lists no models")
    return models


def _check_backend_fields(spec: ModelSpec, where: str) -> None:
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


def _policy(section: Any, where: str) -> CallPolicy:
    """The ``resilience`` mapping: any CallPolicy field; integers where the default is one."""
    if not isinstance(section, dict):
        raise CatalogError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(CallPolicy))}")
    defaults = CallPolicy()
    values: dict[str, Any] = {}
    for name, value in section.items():
        default = getattr(defaults, str(name), None)
        if default is None:
            raise CatalogError(f"{where}.{name}: unknown setting (known: "
                               f"{sorted(f.name for f in dataclasses.fields(CallPolicy))})")
        number_types = (int,) if isinstance(default, int) else (int, float)
        floor = 0 if name == "max_queue" else 1e-9  # a zero queue is allowed: refuse at once when busy
        if isinstance(value, bool) or not isinstance(value, number_types) or value < floor:
            kind = "integer" if isinstance(default, int) else "number"
            raise CatalogError(f"{where}.{name}: must be a {'non-negative' if floor == 0 else 'positive'} "
                               f"{kind}, got {value!r}")
        values[name] = float(value) if isinstance(default, float) else value
    return CallPolicy(**values)


def load_catalog(path: pathlib.Path | str) -> dict[str, ModelSpec]:
    """Read and validate a catalog file."""
    try:
        document = yaml.safe_load(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CatalogError(f"{path}: cannot read the catalog: {error}") from None
    return parse_catalog(document, str(path))
