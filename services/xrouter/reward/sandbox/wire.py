"""The only channel between the answer's process and the tests' process: length-prefixed JSON
frames carrying plain values, never code and never objects that run code when used.

Why it is built this way: the tests' process is the judge, so nothing the answer sends may make it
run the answer's code. Decoding yields only exact built-in types (``None``, ``bool``, ``int``,
``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set``,
``frozenset``, and built-in types and functions by name), so every ``==``, ``bool()`` or ``hash()`` the tests apply to an answer's value is
Python's own, not a method the answer wrote (the "object equal to everything" forgery). Anything
else stays in the answer's process and crosses as a numbered handle (``["h", n]``), which the tests'
side can pass back, call or read attributes of, but which compares equal only to itself.

Standard library only: the answer's side runs this under ``python -I -S`` inside the sandbox, and
the tests' side imports it from its file (``boot.py``).
"""

from __future__ import annotations

import builtins
import json
import os
import struct
from typing import Any, Callable

MAX_FRAME = 8 * 2**20  # a value larger than this is refused (a flood, not an answer)
MAX_DEPTH = 200
_HEADER = struct.Struct("!I")
_BUILTIN = type(len)


class WireError(Exception):
    """A frame that is not a well-formed message: treated as a failed test, never as a value."""


def send(fd: int, message: Any) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise WireError(f"a message of {len(data)} bytes is over the {MAX_FRAME}-byte limit")
    payload = _HEADER.pack(len(data)) + data
    while payload:
        payload = payload[os.write(fd, payload):]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other process closed the channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    if size > MAX_FRAME:
        raise WireError(f"a message of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        return json.loads(_read_exactly(fd, size))
    except (ValueError, RecursionError) as error:
        raise WireError(f"a malformed message: {error}") from None


def encode(value: Any, handle: Callable[[Any], int], depth: int = 0) -> Any:
    """``value`` as JSON, tagged by type; objects of any other type become ``handle(value)``.

    Subclasses of the container types (``OrderedDict``, ``Counter``, named tuples) are sent as
    their base type, which compares as they would; a subclass of ``str`` or ``int`` becomes a handle
    (it could carry a forged ``__eq__``)."""
    if depth > MAX_DEPTH:
        raise WireError("a value nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if -2**53 < value < 2**53 else ["i", str(value)]
    if kind is float:
        return ["f", value.hex()]
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is bytes:
        return ["b", value.hex()]
    for base, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "z")):
        if isinstance(value, base):
            return [tag, [encode(item, handle, depth + 1) for item in list(value)]]
    if isinstance(value, dict):
        return ["d", [[encode(k, handle, depth + 1), encode(v, handle, depth + 1)]
                      for k, v in list(value.items())]]
    name = getattr(value, "__name__", None)
    if kind in (type, _BUILTIN) and type(name) is str and getattr(builtins, name, None) is value:
        return ["n", name]  # a built-in type or function (MBPP 533 passes `int`): by name
    return ["h", handle(value)]


def decode(data: Any, handle: Callable[[int], Any], depth: int = 0) -> Any:
    """The value ``encode`` wrote, built from exact built-in types; ``handle(n)`` stands for an
    object left on the other side. Raises :class:`WireError` on anything else."""
    if depth > MAX_DEPTH:
        raise WireError("a value nested too deeply")
    if data is None or type(data) in (bool, str):
        return data
    if type(data) is int:
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise WireError(f"not a value: {str(data)[:80]!r}")
    tag, rest = data[0], data[1:]
    try:
        if tag == "i":
            return int(rest[0])
        if tag == "f":
            return float.fromhex(rest[0])
        if tag == "c":
            return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
        if tag == "b":
            return bytes.fromhex(rest[0])
        if tag in ("l", "t", "s", "z"):
            items = [decode(item, handle, depth + 1) for item in rest[0]]
            return {"l": list, "t": tuple, "s": set, "z": frozenset}[tag](items)
        if tag == "d":
            return {decode(k, handle, depth + 1): decode(v, handle, depth + 1) for k, v in rest[0]}
        if tag == "h" and type(rest[0]) is int:
            return handle(rest[0])
        if tag == "n" and type(rest[0]) is str and type(getattr(builtins, rest[0], None)) in (type, _BUILTIN):
            return getattr(builtins, rest[0])  # this side's own, whatever the other side's is
    except (TypeError, ValueError, IndexError, OverflowError) as error:
        raise WireError(f"a malformed {tag!r} value: {error}") from None
    raise WireError(f"unknown value tag {tag!r}")
