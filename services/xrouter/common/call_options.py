"""The per-request generation options a caller may set beyond temperature and max_tokens (OpenAI's
``top_p``, ``stop``, ``seed``, ``user``, ``tools``, ``tool_choice``, ``response_format``), shared by
the router (which checks them and hands them to every call) and the adapters (which refuse any a
model's backend cannot honour, and pass the rest to it).

Tool definitions, tool choice and response format travel as JSON text: the router and the adapters
never interpret them, only the backend does, and JSON keeps them exactly as the caller wrote them.
"""

from __future__ import annotations

import dataclasses
import json
import math

from xrouter.common.errors import InvalidArgument

__all__ = ["CallOptions", "SAMPLING", "STRUCTURED", "check_options"]

MAX_STOP = 4  # OpenAI's own limit
MAX_STOP_CHARS = 256
MAX_USER_CHARS = 256
MAX_JSON_CHARS = 200_000  # tool definitions and schemas: the size of a large prompt, no more
INT64 = 2**63

# Options that change how a model samples; STRUCTURED ones ask for a form of answer (tool calls, a
# JSON schema) that only a policy returning one model's answer unchanged can deliver.
SAMPLING = ("top_p", "stop", "seed")
STRUCTURED = ("tools", "tool_choice", "response_format")


@dataclasses.dataclass(frozen=True)
class CallOptions:
    """What the caller asked every model call to honour; the defaults mean "not set"."""

    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    user: str = ""  # the caller's end-user id: recorded on the trace, passed to backends that take it
    tools: str = ""  # JSON array of OpenAI tool definitions
    tool_choice: str = ""  # JSON: "auto", "none", "required" or {"type": "function", ...}
    response_format: str = ""  # JSON object: {"type": "json_object"} or {"type": "json_schema", ...}

    def used(self) -> tuple[str, ...]:
        """The names of the options set, which a backend must be able to honour (``user`` is not
        among them: a backend whose protocol has no end-user id has nothing to be told)."""
        return tuple(name for name in (*SAMPLING, *STRUCTURED)
                     if getattr(self, name) not in (None, (), ""))

    def structured(self) -> tuple[str, ...]:
        return tuple(name for name in STRUCTURED if getattr(self, name))


def check_options(options: CallOptions) -> None:
    """Bounds and shapes; each error names its field (the OpenAI name)."""
    if options.top_p is not None and not (math.isfinite(options.top_p) and 0.0 <= options.top_p <= 1.0):
        raise InvalidArgument("top_p", f"must be within [0, 1], got {options.top_p}")
    if len(options.stop) > MAX_STOP:
        raise InvalidArgument("stop", f"{len(options.stop)} sequences; at most {MAX_STOP}")
    for number, text in enumerate(options.stop):
        if not text or len(text) > MAX_STOP_CHARS:
            raise InvalidArgument("stop", f"sequence {number} must be 1-{MAX_STOP_CHARS} characters, got {len(text)}")
    if options.seed is not None and not -INT64 <= options.seed < INT64:
        raise InvalidArgument("seed", "must fit a signed 64-bit integer")
    if len(options.user) > MAX_USER_CHARS or not options.user.isprintable():
        raise InvalidArgument("user", f"must be at most {MAX_USER_CHARS} printable characters")
    shapes = {"tools": list, "tool_choice": (str, dict), "response_format": dict}
    for name, shape in shapes.items():
        text = getattr(options, name)
        if not text:
            continue
        if len(text) > MAX_JSON_CHARS:
            raise InvalidArgument(name, f"is {len(text)} characters of JSON; at most {MAX_JSON_CHARS}")
        try:
            value = json.loads(text)
        except ValueError:
            raise InvalidArgument(name, "is not valid JSON") from None
        if not isinstance(value, shape) or (name == "tools" and not value):
            raise InvalidArgument(name, "has the wrong shape (tools: a non-empty array; tool_choice: a string or "
                                  "an object; response_format: an object)")
    if options.tool_choice and not options.tools:
        raise InvalidArgument("tool_choice", "is only allowed when tools are given")
