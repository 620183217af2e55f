"""The tests' process: runs the task's tests and decides pass or fail, with the answer in another
process that it reaches only through :mod:`wire`.

Why: when the answer and the tests share an interpreter, the answer can rewrite the tests' world
(walk up to the harness's frames, patch ``AssertionError`` or ``builtins``, return an object equal
to everything, exit 0 at the right moment). Here the tests' process never runs a line of the
answer's code: each name the tests use that the answer defines (``add``, ``Node``, HumanEval's
entry point) is a :class:`Remote` whose calls and attribute reads travel to the answer's process
and come back as plain values. Its exit status is the verdict; ``boot.py`` reads it.

Standard library only, loaded by ``boot.py`` from its file before the sandbox's root is built.
"""

from __future__ import annotations

import builtins
import importlib
import os
import sys
import symtable
import traceback
from typing import Any

TESTS_FILE = "<tests>"
PROMPT_FILE = "<prompt>"


class AnswerGone(Exception):
    """The answer's process closed the channel (it exited, crashed or was killed)."""


class Channel:
    """Requests to the answer's process; replies decoded into plain values or Remotes."""

    def __init__(self, wire: Any, requests: int, replies: int) -> None:
        self.wire, self._out, self._in = wire, requests, replies
        self._remotes: dict[int, Remote] = {}

    def remote(self, number: int) -> Remote:
        # One Remote per handle, so `is` and `==` (identity) hold between uses of one object.
        if number not in self._remotes:
            self._remotes[number] = Remote(self, number)
        return self._remotes[number]

    def hello(self) -> dict[str, Any]:
        return self._receive()

    def ask(self, *request: Any) -> Any:
        try:
            self.wire.send(self._out, list(request))
        except (BrokenPipeError, OSError) as error:
            raise AnswerGone(f"the answer's process is gone ({error})") from None
        reply = self._receive()
        if type(reply) is dict and "ok" in reply:
            return self.wire.decode(reply["ok"], self.remote)
        if type(reply) is dict and type(reply.get("raised")) is list and len(reply["raised"]) == 2:
            name, message = (str(part)[:1000] for part in reply["raised"])
            kind = getattr(builtins, name, None)
            # Only ordinary exceptions by their own type: a SystemExit sent by the answer must not
            # end this process, and the answer's own classes become a RuntimeError.
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                message, kind = f"{name}: {message}", RuntimeError
            raise kind(message)
        raise self.wire.WireError(f"an unexpected reply {str(reply)[:80]!r}")

    def send_value(self, value: Any) -> Any:
        def refuse(item: Any) -> int:
            if isinstance(item, Remote):
                return object.__getattribute__(item, "_number")
            raise TypeError(f"cannot pass a {type(item).__name__} to the answer's code")
        return self.wire.encode(value, refuse)

    def _receive(self) -> Any:
        try:
            return self.wire.receive(self._in)
        except (EOFError, OSError) as error:
            raise AnswerGone(f"the answer's channel closed before the tests finished ({error})") from None


class Remote:
    """An object of the answer's: calls, attribute reads and writes, indexing and iteration go to
    its process. Equal only to itself; it has no truth value (an answer must return a real bool)."""

    __slots__ = ("_channel", "_number")

    def __init__(self, channel: Channel, number: int) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_number", number)

    def _ask(self, op: str, *args: Any) -> Any:
        return object.__getattribute__(self, "_channel").ask(op, object.__getattribute__(self, "_number"), *args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = object.__getattribute__(self, "_channel")
        return self._ask("call", channel.send_value([list(args), kwargs]))

    def __getattr__(self, name: str) -> Any:
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._ask("setattr", name, object.__getattribute__(self, "_channel").send_value(value))

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", object.__getattribute__(self, "_channel").send_value(key))

    def __len__(self) -> int:
        length = self._ask("len")
        if type(length) is not int:
            raise TypeError("len() of the answer's object is not an int")
        return length

    def __iter__(self) -> Any:
        return self._ask("iter")

    def __next__(self) -> Any:
        return self._ask("next")

    def __bool__(self) -> bool:
        raise TypeError("an object of the answer's has no truth value here; return a bool")

    def __repr__(self) -> str:
        return f"<answer's object #{object.__getattribute__(self, '_number')}>"


def free_names(source: str) -> set[str]:
    """Names the tests read but never bind (at any level): the answer's, or modules they expect
    the answer to have imported."""
    top = symtable.symtable(source, TESTS_FILE, "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            if table is top and symbol.is_referenced():
                used.add(symbol.get_name())
            elif table is not top and symbol.is_global() and symbol.is_referenced():
                used.add(symbol.get_name())
    return used - bound


def _failure(error: BaseException, lines: list[str]) -> dict[str, Any]:
    """The exception and the test line it came from (the assert that failed, usually)."""
    line = None
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == TESTS_FILE and 0 < frame.lineno <= len(lines):
            line = {"number": frame.lineno, "source": lines[frame.lineno - 1][:300]}
            break
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    if isinstance(error, AnswerGone):
        return {"answer_gone": str(error), "line": line}
    return {"error": text[:1000], "line": line}


def run(wire: Any, spec: dict[str, str], requests: int, replies: int, report: int) -> None:
    """Run ``spec``'s tests against the answer; exit 0 only when every test ran to its end."""
    channel = Channel(wire, requests, replies)
    try:
        hello = channel.hello()
    except AnswerGone as error:
        wire.send(report, {"answer_gone": str(error)})
        os._exit(1)
    except wire.WireError as error:
        wire.send(report, {"error": f"the answer broke the channel: {error}"})
        os._exit(1)
    if type(hello) is not dict or hello.get("ready") is not True:
        error = hello.get("load_error") if type(hello) is dict else None
        wire.send(report, {"answer_error": error if type(error) is dict else {"error": "a garbled start"}})
        os._exit(1)
    source = spec["tests"]
    lines = source.splitlines()
    namespace: dict[str, Any] = {"__name__": "__tests__", "__builtins__": builtins}
    try:
        if spec.get("prompt"):  # HumanEval's prompt: helpers its check() uses (poly, encode_...)
            exec(compile(spec["prompt"], PROMPT_FILE, "exec"), namespace)  # noqa: S102
        remote = {spec["entry_point"]} if spec.get("entry_point") else set()
        for name in sorted(free_names(source) | remote):
            if name in remote or not (name in namespace or hasattr(builtins, name)):
                if name in sys.stdlib_module_names and name not in remote:
                    namespace[name] = importlib.import_module(name)  # our own, not the answer's
                    continue
                try:
                    namespace[name] = channel.ask("global", name)
                except NameError:
                    pass  # the test that uses it fails with NameError, as in one program
        exec(compile(source, TESTS_FILE, "exec"), namespace)  # noqa: S102
    except BaseException as error:  # noqa: BLE001 - any way the tests end early is a failure
        wire.send(report, _failure(error, lines))
        os._exit(1)
    wire.send(report, {"passed": True})
    os._exit(0)
