"""Bounds on the values clients write, shared by the edge (the router's faces) and the ledger.

The router checks every field against these before anything is reserved or spent; metering
checks the same ones again, so a value that reaches the database always fits it (PostgreSQL
refuses an index row over ~2.7 KB: a 3 KB tenant must be a 400, not an "outage").
"""

from __future__ import annotations

import math
import re

from xrouter.common.errors import InvalidArgument

# Tenants and request ids: 1-128 characters of letters, digits and . _ : @ - (no spaces, no
# control characters, nothing that needs escaping in a log line, a label or a URL).
IDENTIFIER_ALPHABET = "letters, digits and . _ : @ -"
MAX_IDENTIFIER_CHARS = 128
_IDENTIFIER = re.compile(r"[A-Za-z0-9._:@-]{1,128}")

# Money is integer micro-dollars in a signed 64-bit column. One request may reserve at most a
# million dollars: far below int64 (9.2e12 dollars), so that the sums the ledger takes over many
# reservations and calls (SQLite's SUM overflows at int64) stay exact.
MICRO = 1_000_000
MAX_REQUEST_USD = 1_000_000.0
MAX_REQUEST_MICRO_USD = round(MAX_REQUEST_USD * MICRO)
MIN_REQUEST_USD = 1 / MICRO  # a cap below one micro-dollar would round to nothing

# Characters of a value echoed back in an error message: a refused 8 MB string is not returned.
SHOWN_CHARS = 48


def shown(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters for error messages."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def check_identifier(value: str, field: str, *, required: bool = True) -> None:
    """A tenant or request id: 1-128 characters of the identifier alphabet (empty allowed when not
    ``required``)."""
    if not value and not required:
        return
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_IDENTIFIER_CHARS:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {MAX_IDENTIFIER_CHARS} of "
                              f"{IDENTIFIER_ALPHABET}")
    if not _IDENTIFIER.fullmatch(value):
        raise InvalidArgument(field, f"{shown(value)} has characters outside {IDENTIFIER_ALPHABET}")


def check_micro_usd(value: int, field: str) -> None:
    """An amount of one request (an estimate, a call's cost): 0 to a million dollars in micro-USD."""
    if not 0 <= value <= MAX_REQUEST_MICRO_USD:
        raise InvalidArgument(field, f"must be within [0, {MAX_REQUEST_MICRO_USD}] micro-dollars, got {value}")


def check_usd(value: float, field: str) -> None:
    """A dollar cap of one request: finite, within [one micro-dollar, a million dollars]."""
    if not (math.isfinite(value) and MIN_REQUEST_USD <= value <= MAX_REQUEST_USD):
        raise InvalidArgument(field, f"must be a number of dollars within [{MIN_REQUEST_USD:.6f}, "
                              f"{MAX_REQUEST_USD:.0f}], got {value}")


# A feedback comment is free text for people reading the ledger, not a document.
MAX_COMMENT_CHARS = 2_000


def check_score(value: float, field: str) -> None:
    """A verdict on an answer: a finite number within [0, 1] (NaN compares false: refused too)."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise InvalidArgument(field, f"must be a number within [0, 1], got {value}")


def check_comment(value: str, field: str) -> None:
    """Free text of at most MAX_COMMENT_CHARS, without control characters other than newlines and
    tabs (PostgreSQL text cannot hold NUL; logs and exports should not carry terminal escapes)."""
    if len(value) > MAX_COMMENT_CHARS:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {MAX_COMMENT_CHARS}")
    if any(not (ch.isprintable() or ch in "\n\t") for ch in value):
        raise InvalidArgument(field, "must not contain control characters (other than newlines and tabs)")


# A name the ledger stores and echoes (a model id, a policy version, a trace id, a strategy, a
# dataset or prompt id, a budget's model, a key's label): short, printable, no control characters
# (PostgreSQL text cannot hold NUL; logs and exports should not carry terminal escapes).
MAX_NAME_CHARS = 256


def check_name(value: str, field: str, *, required: bool = False, max_chars: int = MAX_NAME_CHARS) -> None:
    if not value:
        if required:
            raise InvalidArgument(field, "must not be empty")
        return
    if len(value) > max_chars:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {max_chars}")
    if not value.isprintable():
        raise InvalidArgument(field, f"{shown(value)} must be printable characters")


# Tokens of one call: no model reads or writes a billion tokens in a call. Bounded so that the
# ledger's sums over a tenant's calls stay far below int64 (SQLite's SUM overflows there, and a
# usage query that fails marks the ledger down: one absurd token count from a broken backend
# took Authorize down for every tenant).
MAX_CALL_TOKENS = 1_000_000_000


def check_tokens(value: int, field: str) -> None:
    if not 0 <= value <= MAX_CALL_TOKENS:
        raise InvalidArgument(field, f"must be within [0, {MAX_CALL_TOKENS}], got {value}")


def check_finite(value: float, field: str, low: float, high: float) -> None:
    """A float within [low, high] (NaN and infinities refused)."""
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(field, f"must be a finite number within [{low:g}, {high:g}], got {value}")


def lambda_list(items: str | list[str] | tuple[str, ...], option: str = "--lambdas",
                high: float = math.inf) -> tuple[float, ...]:
    """Cost weights given on a command line, space or comma separated ("0,10,100" or "0 10 100"):
    at least one, each a finite number >= 0 (and <= ``high``). An empty item ("0,,100", a trailing comma) is refused
    rather than skipped: it is more likely a value lost in a shell variable than meant."""
    text = ",".join([items] if isinstance(items, str) else items)
    parts = [word for item in text.split(",") for word in (item.split() or [""])] if text.strip() else []
    if not parts:
        raise ValueError(f"{option}: give one or more cost weights, got none")
    values = []
    for part in parts:
        try:
            value = float(part) if part else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 <= value <= high):
            within = ">= 0" if high == math.inf else f"within [0, {high:g}]"
            raise ValueError(f"{option}: each cost weight must be a finite number {within}, got {part!r} in {text!r}")
        values.append(value)
    return tuple(values)
