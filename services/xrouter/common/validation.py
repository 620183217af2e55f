"""Pydantic's validation errors in this codebase's words: the field as a path a caller can find
(``messages[0].content``) and the problem as a short phrase (``must be an integer, got 0.5``).

The HTTP body, the model catalog and the settings are pydantic models; each face turns the first
:class:`Problem` into its own error (a 400 naming ``param``, a CatalogError naming the entry, a
SettingsError naming the variable), so every refusal names exactly one field.
"""

from __future__ import annotations

import dataclasses
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from xrouter.common.bounds import shown
from xrouter.common.errors import InvalidArgument

__all__ = ["Problem", "field_path", "first_problem", "invalid_argument"]

# Pydantic's phrase for a wrong type, said as the rest of the codebase says it.
_TYPE_PHRASES = {
    "missing": "is required", "extra_forbidden": "is not a known field",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "decimal_type": "must be a number", "decimal_parsing": "must be a number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list", "tuple_type": "must be a list",
    "unexpected_keyword_argument": "is not a known field",
    "dict_type": "must be an object", "model_type": "must be an object", "model_attributes_type": "must be an object",
    "dataclass_type": "must be an object", "dataclass_exact_type": "must be an object"}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}
_LENGTHS = {"string_too_short": "must have at least {min_length} character(s)",
            "too_short": "must have at least {min_length} items", "too_long": "must have at most {max_length} items"}
_NO_INPUT = frozenset({"missing", "extra_forbidden", "unexpected_keyword_argument"})  # the input is the key's absence or the key itself


@dataclasses.dataclass(frozen=True)
class Problem:
    """One refused value: where it is, what is wrong with it, and pydantic's error type."""

    loc: tuple[int | str, ...]
    field: str  # ``loc`` written as a path: messages[0].content
    message: str  # a phrase to follow the field: "must be an integer, got 0.5"
    kind: str  # pydantic's error type ("missing", "extra_forbidden", ...), or a custom one


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 0, "content")`` → ``messages[0].content``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind in _TYPE_PHRASES:
        phrase = _TYPE_PHRASES[kind]
    elif kind in _BOUNDS:
        key, operator = _BOUNDS[kind]
        bound = context[key]
        phrase = f"must be {operator} {bound:g}" if isinstance(bound, float) else f"must be {operator} {bound}"
    elif kind in _LENGTHS:
        phrase = _LENGTHS[kind].format(**context)
    elif kind == "value_error":  # a validator's ValueError: its own words
        return str(context.get("error", error["msg"]))
    elif kind == "literal_error":
        phrase = f"must be {context.get('expected', '')}"
    elif not error["msg"].startswith("Input should be"):  # a PydanticCustomError: written for the caller
        return error["msg"]
    else:
        phrase = "must be" + error["msg"].removeprefix("Input should be")
    return phrase if kind in _NO_INPUT else f"{phrase}, got {shown(error['input'])}"


def first_problem(error: ValidationError) -> Problem:
    """The first refused value (pydantic reports fields in declaration order)."""
    details = error.errors(include_url=False)[0]
    return Problem(tuple(details["loc"]), field_path(tuple(details["loc"])), _message(details), details["type"])


def invalid_argument(error: ValidationError) -> InvalidArgument:
    """The domain's INVALID_ARGUMENT for a body that failed validation, naming the field (the
    body itself when the whole of it is at fault)."""
    problem = first_problem(error)
    return InvalidArgument(problem.field or "body", problem.message)

