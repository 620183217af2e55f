"""Typed settings read once from the environment at start-up, failing fast with a clear message.

Each service declares a :class:`Settings` model whose fields name their environment variable with
:func:`env` (pydantic converts and bounds the values); :func:`load` fills it from a mapping and runs
its cross-field ``validate``. Nothing reads the environment at import time.

Plain pydantic over an explicit mapping, not pydantic-settings: ``load(cls, environ)`` is how the
embedded stack and the tests build settings from a mapping of their own (``{}``: every default,
whatever the process environment holds), which BaseSettings would merge with ``os.environ`` unless
its sources were overridden; every variable is named in full, so its prefix rules would not be used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from xrouter.common.validation import first_problem

__all__ = ["Flag", "Port", "Settings", "SettingsError", "env", "env_names", "load"]

T = TypeVar("T", bound="Settings")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to set."""


# A switch: 1/true/yes/on or 0/false/no/off (any case, pydantic's words); empty means off.
Flag = Annotated[bool, BeforeValidator(lambda raw: (raw.strip() or False) if isinstance(raw, str) else raw)]
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port, or none (metrics and health ports)


class Settings(BaseModel):
    """A service's settings: frozen, every field bound to one environment variable by :func:`env`."""

    # validate_by_name: code and tests may also build one by field name (RewardSettings(sandbox=False)).
    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    def validate(self) -> None:  # type: ignore[override]  # (BaseModel.validate: a deprecated classmethod)
        """Checks across fields; a service overrides it, raising SettingsError naming the variable."""


def env(name: str, default: Any = PydanticUndefined, *, help: str = "", **bounds: Any) -> Any:
    """Declare a settings field bound to environment variable ``name`` (``bounds``: pydantic's
    ``gt``, ``ge``, ``le``, ``allow_inf_nan``...); ``help`` says what to set a required one to."""
    return Field(default, validation_alias=name, description=help or None, **bounds)


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` from ``environ`` (default: the process environment)."""
    source = os.environ if environ is None else environ
    try:
        settings = cls.model_validate({name: source[name] for name in env_names(cls) if name in source})
    except ValidationError as error:
        problem = first_problem(error)
        name = str(problem.loc[0])  # the variable: fields are validated by their alias
        help_text = next(f.description for f in cls.model_fields.values() if f.validation_alias == name)
        if problem.kind == "missing":
            raise SettingsError(f"{name} is required: set it to {help_text or name}") from None
        raise SettingsError(f"{name} {problem.message}{f'; set it to {help_text}' if help_text else ''}") from None
    settings.validate()
    return settings


def env_names(cls: type[Settings]) -> list[str]:
    """Every environment variable ``cls`` reads (the chart checks its env against this)."""
    return [str(field.validation_alias) for field in cls.model_fields.values()]
