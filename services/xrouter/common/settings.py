"""Typed settings read once from the environment at start-up, failing fast with a clear message.

Each service declares a frozen dataclass whose fields carry their environment variable name in
``metadata={"env": ...}``; :func:`load` fills it. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to set."""


def env(name: str, default: Any = dataclasses.MISSING, *, help: str = "") -> Any:
    """Declare a settings field bound to environment variable ``name``."""
    return dataclasses.field(default=default, metadata={"env": name, "help": help})


def _convert(name: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if kind is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    return raw


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``environ`` (default: the process environment)."""
    source = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.metadata["env"]
        if name in source:
            values[field.name] = _convert(name, source[name], hints[field.name])
        elif field.default is dataclasses.MISSING:
            help_text = field.metadata.get("help") or field.name
            raise SettingsError(f"{name} is required: set it to {help_text}")
    settings = cls(**values)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def env_names(cls: type) -> list[str]:
    """Every environment variable ``cls`` reads (the chart checks its env against this)."""
    return [f.metadata["env"] for f in dataclasses.fields(cls)]
