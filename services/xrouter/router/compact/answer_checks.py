"""Cheap checks of one model's answer, for a policy that looks at a cheap answer before it
returns it or escalates.

:func:`check_answer` is pure and fast (regexes compiled once, the prompt's analysis cached: in an
episode every model answers the same prompt). Each check applies only to some prompts; where it
does not, its value is neutral (0.5) and its ``*_applies`` flag is 0, so a policy can tell "not
applicable" from "failed". An answer that is empty, a refusal, or the replay backend's placeholder
is *unknown*: its content checks read neutral too, and the ``unknown`` flag says why.

The extractors are the reward verifiers' own (option letter, final answer, code block), so what
serving checks is what scoring reads.

:func:`run_prompt_tests` runs the prompt's own ``assert`` lines (MBPP style) against the answer in
the reward service's sandbox: a process per call (tens of milliseconds at best), so it is separate
and async.

Feature order (:data:`CHECK_NAMES`, :func:`as_features`), values in [0, 1]:

==================  ===========================================================================
unknown             1 when the answer is empty, a refusal or a replay placeholder
empty               1 when the answer is empty or whitespace
refusal             1 when the answer opens with a refusal ("I cannot", "As an AI", ...)
placeholder         1 when the answer is the replay backend's placeholder text
truncated           1 when the answer ends inside a code block (an unclosed fence)
choice_applies      1 when the prompt is multiple choice
choice_found        1/0: one option letter can / cannot be extracted; 0.5 n/a or unknown
number_applies      1 when the prompt asks for a number (math / word problem)
number_found        1/0: a final numeric answer can / cannot be extracted; 0.5 n/a or unknown
code_applies        1 when the prompt asks for Python code
code_parses         1/0: the answer's code block parses and defines a function; 0.5 n/a or unknown
name_applies        1 when the prompt names the function (its asserts or a signature call it)
defines_name        1/0: the answer's code defines that name; 0.5 n/a or unknown
==================  ===========================================================================
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import dataclasses
import functools
import re
import textwrap
import time
from typing import Literal

from xrouter.reward.verifiers.choice import extract_choice
from xrouter.reward.verifiers.code import CodeTests, build_program, extract_code
from xrouter.reward.verifiers.math import extract_final_answer

from xrouter.common.outcomes import is_placeholder

NEUTRAL = 0.5

CHECK_NAMES: tuple[str, ...] = (
    "unknown", "empty", "refusal", "placeholder", "truncated",
    "choice_applies", "choice_found",
    "number_applies", "number_found",
    "code_applies", "code_parses",
    "name_applies", "defines_name",
)


@dataclasses.dataclass(frozen=True)
class AnswerChecks:
    """What :func:`check_answer` found; the ``*_found``/``code_parses``/``defines_name`` values are
    1.0 (passes), 0.0 (fails) or 0.5 (not applicable, or the answer is unknown)."""

    empty: bool = False
    refusal: bool = False
    placeholder: bool = False
    truncated: bool = False
    choice_applies: bool = False
    choice_found: float = NEUTRAL
    number_applies: bool = False
    number_found: float = NEUTRAL
    code_applies: bool = False
    code_parses: float = NEUTRAL
    name_applies: bool = False
    defines_name: float = NEUTRAL

    @property
    def unknown(self) -> bool:
        """Nothing to judge: empty, a refusal, or a placeholder (not a wrong answer)."""
        return self.empty or self.refusal or self.placeholder


def as_features(checks: AnswerChecks) -> tuple[float, ...]:
    """The checks as floats in :data:`CHECK_NAMES` order (always ``len(CHECK_NAMES)`` long)."""
    return tuple(float(getattr(checks, name)) for name in CHECK_NAMES)


# --- the prompt ------------------------------------------------------------------------------

# An option line: "A) iron", "(B) iron", "C. iron", "D: iron" at the start of a line.
_OPTION_LINE = re.compile(r"^[ \t]*[(\[]?([A-J])(?:[)\].:]|\s*-)[ \t]+\S", re.MULTILINE)
# Inline options: "(A) iron (B) copper".
_OPTION_INLINE = re.compile(r"[(\[]([A-J])[)\]][ \t]+\S")
_LETTER_ASK = re.compile(r"answer with (?:the|a|only the|just the) (?:option |correct )?letter"
                         r"|single (?:choice|letter)|letter of the correct (?:answer|option)"
                         r"|choose (?:the )?(?:correct |best )?(?:option|answer|letter)", re.IGNORECASE)
_ASSERT = re.compile(r"^[ \t]*(?:>>>[ \t]*)?assert\b.*$", re.MULTILINE)
_SIGNATURE = re.compile(r"^[ \t]*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
_CODE_ASK = re.compile(
    r"\b(?:write|implement|create|complete|define|fix|give me|provide)\b[^.\n]{0,60}?"
    r"\b(?:function|program|script|class|method|code|snippet)\b"
    r"|\bpython\b[^.\n]{0,30}?\b(?:function|program|script|code|class)\b"
    r"|```python|\bdef\s+\w+\s*\(", re.IGNORECASE)
_OTHER_LANGUAGE = re.compile(r"\b(?:javascript|typescript|java|c\+\+|c#|rust|golang|go|ruby|php|"
                             r"sql|bash|shell|haskell|kotlin|swift|scala|perl|r|matlab)\b(?:\s+(?:code|"
                             r"function|program|script|query|class))", re.IGNORECASE)
_PYTHON = re.compile(r"\bpython\b", re.IGNORECASE)
_MATH_ASK = re.compile(
    r"\\frac|\$[^$\n]+\$|\b(?:how many|how much|how long|how far|how old|what is the (?:value|sum|"
    r"product|total|number|area|probability|remainder|smallest|largest)|calculate|compute|evaluate|"
    r"solve|find the (?:value|sum|number|area|remainder|smallest|largest|product)|what percent)\b",
    re.IGNORECASE)
_DIGIT = re.compile(r"\d")

# --- the answer ------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"^\W*(?:I(?:'m| am)? (?:sorry|afraid)\b|I (?:cannot|can't|can ?not|won't|will not|am unable|am not "
    r"able|'m unable|'m not able|do not feel comfortable|don't feel comfortable)\b|As an AI\b|"
    r"I apologi[sz]e\b|Sorry, (?:but )?I\b|Unfortunately,? I (?:cannot|can't|am unable)\b)",
    re.IGNORECASE)
_FENCE_MARK = re.compile(r"^[ \t]*```", re.MULTILINE)
_PY_TAG = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|\Z)", re.DOTALL)
_NUMERIC = re.compile(r"\d|\\(?:frac|sqrt|pi)\b")
# Called names that are never the function under test.
_NOT_SUBJECT = frozenset(dir(builtins)) | {"isclose", "approx"}


@dataclasses.dataclass(frozen=True)
class _Prompt:
    options: str  # option letters, "" when not multiple choice
    numeric: bool
    code: bool
    name: str  # the function the prompt's asserts or signature call, "" when none
    asserts: tuple[str, ...]


def _last_option_run(letters: list[str]) -> str:
    """The letters of the last run of options that starts at A (few-shot prompts repeat blocks)."""
    start = max((i for i, letter in enumerate(letters) if letter == "A"), default=-1)
    if start < 0:
        return ""
    run = []
    for letter in letters[start:]:
        if ord(letter) - ord("A") == len(run):
            run.append(letter)
    return "".join(run) if len(run) >= 2 else ""


def _subject_name(asserts: tuple[str, ...]) -> str:
    """The first non-builtin function the asserts call."""
    for line in asserts:
        try:
            tree = ast.parse(line.strip())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id not in _NOT_SUBJECT:
                return node.func.id
    return ""


@functools.lru_cache(maxsize=4096)
def _analyse(prompt: str) -> _Prompt:
    options = _last_option_run(_OPTION_LINE.findall(prompt)) or _last_option_run(_OPTION_INLINE.findall(prompt))
    if not options and _LETTER_ASK.search(prompt):
        options = "ABCD"
    asserts = tuple(line.strip().removeprefix(">>>").strip() for line in _ASSERT.findall(prompt))
    signature = _SIGNATURE.search(prompt)
    name = _subject_name(asserts) or (signature.group(1) if signature else "")
    code = not options and (bool(asserts) or bool(name) or bool(_CODE_ASK.search(prompt))) \
        and not (_OTHER_LANGUAGE.search(prompt) and not _PYTHON.search(prompt))
    numeric = not options and not code and bool(_MATH_ASK.search(prompt)) and bool(_DIGIT.search(prompt))
    return _Prompt(options, numeric, code, name if code else "", asserts if code else ())


def answer_code(answer: str, name: str = "") -> str:
    """The code of an answer: the verifier's fenced block (the one defining ``name`` first), else
    Code Llama's ``[PYTHON]`` block, else the whole answer; dedented."""
    if "```" not in answer:
        tagged = _PY_TAG.search(answer)
        if tagged:
            return textwrap.dedent(tagged.group(1))
    return textwrap.dedent(extract_code(answer, name))


def _defined(tree: ast.Module) -> set[str]:
    names = {node.name for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in tree.body:  # a top-level "f = lambda ..." defines f too
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _has_function(tree: ast.Module) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) for node in ast.walk(tree))


def check_answer(prompt: str, answer: str | None) -> AnswerChecks:
    """Every cheap check of ``answer`` to ``prompt`` (see the module's table)."""
    text = answer or ""
    empty = not text.strip()
    placeholder = not empty and is_placeholder(text)
    refusal = not empty and not placeholder and bool(_REFUSAL.match(text))
    truncated = len(_FENCE_MARK.findall(text)) % 2 == 1 or ("[PYTHON]" in text and "[/PYTHON]" not in text)
    spec = _analyse(prompt or "")
    unknown = empty or placeholder or refusal

    def judged(passes: bool) -> float:
        return NEUTRAL if unknown else float(passes)

    choice = number = parses = defines = NEUTRAL
    if spec.options:
        choice = judged(extract_choice(text, spec.options) is not None)
    if spec.numeric:
        found = extract_final_answer(text) if not unknown else None
        number = judged(found is not None and bool(_NUMERIC.search(found[0])))
    if spec.code and not unknown:
        code = answer_code(text, spec.name)
        try:
            tree = ast.parse(code)
        except (SyntaxError, ValueError):  # ValueError: a NUL byte
            tree = None
        parses = float(tree is not None and _has_function(tree))
        if spec.name:
            if tree is not None:
                defines = float(spec.name in _defined(tree))
            else:  # the code does not parse; the name may still be defined in it
                defines = float(re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(spec.name)}\s*\(",
                                          code, re.MULTILINE) is not None)
    return AnswerChecks(empty, refusal, placeholder, truncated,
                        bool(spec.options), choice, spec.numeric, number,
                        spec.code, parses, bool(spec.name), defines)


# --- the prompt's own tests, in the sandbox ---------------------------------------------------

TestOutcome = Literal["passed", "failed", "not_applicable", "unknown"]


@dataclasses.dataclass(frozen=True)
class PromptTests:
    """How the answer did on the prompt's own asserts: ``outcome`` is ``passed`` / ``failed``,
    ``not_applicable`` (the prompt carries no asserts, or asks for no code) or ``unknown`` (the
    answer is empty, a refusal or a placeholder); ``latency_s`` is the wall time of the check,
    ``detail`` the sandbox's reason."""

    outcome: TestOutcome
    latency_s: float
    detail: str = ""

    @property
    def applies(self) -> bool:
        return self.outcome in ("passed", "failed")


def prompt_asserts(prompt: str) -> tuple[str, ...]:
    """The ``assert`` lines a code prompt carries (MBPP's "Your code should pass these tests")."""
    return _analyse(prompt or "").asserts


_default_sandbox = None


def _sandbox():  # type: ignore[no-untyped-def]
    global _default_sandbox
    if _default_sandbox is None:
        from xrouter.reward.sandbox import Sandbox

        _default_sandbox = Sandbox()
    return _default_sandbox


async def run_prompt_tests(prompt: str, answer: str | None, timeout_s: float = 10.0,
                           sandbox=None) -> PromptTests:  # type: ignore[no-untyped-def]
    """Run the prompt's asserts against the answer's code in the reward sandbox (a process, in a
    thread), the program built as the code verifier builds it. ``timeout_s`` is the run's wall
    limit. Raises :class:`xrouter.reward.sandbox.SandboxUnavailable` when the host cannot build
    the sandbox (nothing ran: not a failure of the answer)."""
    started = time.perf_counter()
    asserts = prompt_asserts(prompt)
    if not asserts:
        return PromptTests("not_applicable", time.perf_counter() - started, "the prompt carries no asserts")
    checks = check_answer(prompt, answer)
    if checks.unknown:
        return PromptTests("unknown", time.perf_counter() - started, "empty, refusal or placeholder answer")
    code = answer_code(answer or "", _analyse(prompt).name)
    if not code.strip():
        return PromptTests("failed", time.perf_counter() - started, "no code in the answer")
    box = sandbox or _sandbox()
    limits = dataclasses.replace(box.limits, wall_s=timeout_s, cpu_s=max(1, min(box.limits.cpu_s, int(timeout_s))))
    program = build_program(code, CodeTests(asserts=asserts))
    result = await asyncio.to_thread(box.run, program, limits)
    return PromptTests("passed" if result.passed else "failed", time.perf_counter() - started,
                       "passed" if result.passed else f"{result.status}: {result.reason}")


async def run_answer_code(prompt: str, answer: str | None, timeout_s: float = 10.0,
                          sandbox=None) -> PromptTests:  # type: ignore[no-untyped-def]
    """Run the answer's own code (its examples and asserts included) in the sandbox, for code
    prompts that carry no tests: ``passed`` when it runs to the end without an exception.
    A weaker signal than :func:`run_prompt_tests`, for the prompts that one cannot judge."""
    started = time.perf_counter()
    spec = _analyse(prompt or "")
    if not spec.code:
        return PromptTests("not_applicable", time.perf_counter() - started, "not a code prompt")
    if check_answer(prompt, answer).unknown:
        return PromptTests("unknown", time.perf_counter() - started, "empty, refusal or placeholder answer")
    code = answer_code(answer or "", spec.name)
    if not code.strip():
        return PromptTests("failed", time.perf_counter() - started, "no code in the answer")
    box = sandbox or _sandbox()
    limits = dataclasses.replace(box.limits, wall_s=timeout_s, cpu_s=max(1, min(box.limits.cpu_s, int(timeout_s))))
    result = await asyncio.to_thread(box.run, code + "\n", limits)
    return PromptTests("passed" if result.passed else "failed", time.perf_counter() - started,
                       "passed" if result.passed else f"{result.status}: {result.reason}")
