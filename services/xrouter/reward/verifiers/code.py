"""Code: run the answer against the task's tests in the sandbox (MBPP asserts, HumanEval ``check``).

The program is built the way the benchmarks' own harnesses build it: MBPP runs the solution, the
set-up code (fixtures built from the solution's classes), then each assert; HumanEval runs the
prompt (signature and docstring) followed by the completion, the test module, then
``check(entry_point)``. A model's answer is usually Markdown, so
the code is taken from its fenced block first.
"""

from __future__ import annotations

import dataclasses
import re

from xrouter.common.errors import InvalidArgument
from xrouter.reward.sandbox import Sandbox, TestSpec
from xrouter.reward.verifiers.base import Verdict

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class CodeTests:
    """The tests a program must pass: MBPP-style ``asserts`` (after ``setup``, which runs after
    the answer), or a HumanEval
    ``check`` module with its ``entry_point``; ``prefix`` is code the answer continues (HumanEval's
    prompt), used unless the answer defines the entry point itself. With ``asserts``, an
    ``entry_point`` is optional: the name the tests take from the answer even if it is a built-in."""

    asserts: tuple[str, ...] = ()
    setup: str = ""
    check: str = ""
    entry_point: str = ""
    prefix: str = ""

    def validate(self) -> None:
        """Raise InvalidArgument naming the field when these tests cannot be run."""
        if not self.asserts and not self.check:
            raise InvalidArgument("reference.code", "needs asserts (MBPP style) or check "
                                  "(HumanEval style): there is nothing to test the answer with")
        if self.asserts and self.check:
            raise InvalidArgument("reference.code", "has both asserts and check: use one style")
        if self.check and not self.entry_point.isidentifier():
            raise InvalidArgument("reference.code.entry_point",
                                  f"must name the function check() is called with, got {self.entry_point!r}")
        for number, line in enumerate(self.asserts):
            if not line.strip():
                raise InvalidArgument(f"reference.code.asserts[{number}]", "is empty")


def extract_code(response: str, entry_point: str = "") -> str:
    """The code in an answer: the fenced block that defines ``entry_point`` (else the first
    Python or unlabelled block), or the whole answer when it has no fence."""
    blocks = [(language.lower(), body) for language, body in _FENCE.findall(response or "")]
    if not blocks:
        return response or ""
    if entry_point:
        for _, body in blocks:
            if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", body, re.MULTILINE):
                return body
    for language, body in blocks:
        if language in ("", "python", "py", "python3"):
            return body
    return blocks[0][1]


def build_program(code: str, tests: CodeTests) -> str:
    """The program the sandbox runs for ``code`` under ``tests``."""
    if tests.check:
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(tests.entry_point)}\s*\(", code,
                            re.MULTILINE)
        body = code if defines or not tests.prefix else tests.prefix + code
        return f"{body}\n\n{tests.check}\n\ncheck({tests.entry_point})\n"
    # The set-up goes after the answer: MBPP's builds its fixtures with the answer's own classes.
    setup = f"{tests.setup}\n\n" if tests.setup.strip() else ""
    return f"{code}\n\n{setup}" + "\n".join(tests.asserts) + "\n"


def judged(code: str, tests: CodeTests) -> tuple[str, TestSpec]:
    """The answer's program and the tests' program for :meth:`Sandbox.judge`: the answer's side
    is what ``build_program`` puts before the tests; the tests' side never holds the answer's code
    (it reaches the answer's functions and classes through the sandbox's channel)."""
    if tests.check:
        defines = re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(tests.entry_point)}\s*\(", code,
                            re.MULTILINE)
        answer = code if defines or not tests.prefix else tests.prefix + code
        # The prompt runs on the tests' side too, for the helpers check() uses (HumanEval 32, 38).
        return answer, TestSpec(f"{tests.check}\n\ncheck({tests.entry_point})\n", prompt=tests.prefix,
                                entry_point=tests.entry_point)
    setup = f"{tests.setup}\n" if tests.setup.strip() else ""
    # An entry point named like a built-in (MBPP 126 tests its own `sum`) is the answer's only
    # when the tests say so: otherwise the tests' side keeps its built-ins.
    return code, TestSpec(setup + "\n".join(tests.asserts) + "\n", entry_point=tests.entry_point)


def verify_code(response: str, tests: CodeTests, sandbox: Sandbox) -> Verdict:
    """1.0 when the answer's code passes every test in the sandbox, else 0.0 with the reason.
    The verdict is the tests' process's, which the answer cannot reach (``Sandbox.judge``)."""
    tests.validate()
    code = extract_code(response, tests.entry_point)
    if not code.strip():
        return Verdict(0.0, "no code in the answer")
    result = sandbox.judge(*judged(code, tests))
    if result.passed:
        count = f"{len(tests.asserts)} asserts" if tests.asserts else f"check({tests.entry_point})"
        cpu = f", {result.cpu_s:.2f}s CPU" if result.cpu_s is not None else ""
        return Verdict(1.0, f"passed {count} in {result.wall_s:.2f}s{cpu}")
    return Verdict(0.0, f"{result.status}: {result.reason}")
