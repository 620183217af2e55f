"""Test cases built from the real benchmark sets: each pairs an answer with its reference and the
score the verifier must give. The answers are the sets' own gold solutions, rewritten (same value,
other notation) or broken (other value) by fixed rules, so the expected score is known by
construction and never read from the verifier."""

from __future__ import annotations

import ast
import collections
import dataclasses
import gzip
import json
import pathlib
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from xrouter.reward.verifiers import CodeTests

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[4].parent / "shared" / "data" / "benchmarks"


@dataclasses.dataclass(frozen=True)
class Case:
    """One check: ``response`` against ``gold`` (math) or ``tests`` (code) must score ``expected``."""

    source: str  # "gsm8k/test/17", "humaneval/HumanEval/3"
    kind: str  # the rewrite or breakage applied, e.g. "final number changed"
    response: str
    expected: float
    gold: str = ""
    tests: CodeTests | None = None


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    """Every row of a gzipped JSON-lines file."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --- GSM8K ---------------------------------------------------------------------------------------

_FINAL = re.compile(r"####\s*(.+?)\s*$")


def _changed(number: str) -> str:
    value = Decimal(number.replace(",", "")) + 1
    return str(value)


def gsm8k_cases(rows: list[dict[str, Any]], split: str) -> Iterator[Case]:
    """The reference solution (1) and with its final number changed (0), both as written
    (``#### n``) and rewritten to end in "The answer is n." (1, and 0 when changed)."""
    for number, row in enumerate(rows):
        solution = row["answer"]
        final = _FINAL.search(solution)
        if final is None:
            raise ValueError(f"gsm8k/{split}/{number}: no '#### n' line in the solution")
        source, value = f"gsm8k/{split}/{number}", final.group(1)
        head = solution[:final.start()].rstrip()
        wrong = _changed(value)
        yield Case(source, "reference solution", solution, 1.0, gold=solution)
        yield Case(source, "final number changed", solution[:final.start(1)] + wrong, 0.0, gold=solution)
        yield Case(source, "'The answer is n.'", f"{head}\nThe answer is {value}.", 1.0, gold=solution)
        yield Case(source, "'The answer is n.' changed", f"{head}\nThe answer is {wrong}.", 0.0,
                   gold=solution)


# --- MATH-500 ------------------------------------------------------------------------------------

def _rewrites(gold: str, parsed: Any) -> Iterator[tuple[str, str]]:
    import sympy

    yield "boxed in a sentence", f"Putting it together, the answer is $\\boxed{{{gold}}}$."
    yield "'The final answer is $x$.'", f"The final answer is ${gold}$."
    cosmetic = re.sub(r"\\[dt]frac", r"\\frac", gold)
    cosmetic = re.sub(r"\s+", "", re.sub(r"\\left|\\right|\\!|\\,", "", cosmetic))
    if cosmetic != gold:
        yield "cosmetic (\\dfrac, \\left, spaces)", f"\\boxed{{{cosmetic}}}"
    if not isinstance(parsed, sympy.Basic):
        return
    printed = sympy.latex(parsed)
    if printed.replace(" ", "") != gold.replace(" ", ""):
        yield "sympy's own LaTeX", f"\\boxed{{{printed}}}"
    if isinstance(parsed, sympy.Rational) and not isinstance(parsed, sympy.Integer):
        yield "fraction as p/q", f"The answer is {parsed.p}/{parsed.q}."
        denominator = int(parsed.q)
        for factor in (2, 5):
            while denominator % factor == 0:
                denominator //= factor
        if denominator == 1:  # a terminating decimal is exactly equal
            yield "fraction as a decimal", f"The answer is {Decimal(int(parsed.p)) / Decimal(int(parsed.q))}."
    if isinstance(parsed, sympy.Integer) and abs(parsed) >= 1000:
        yield "thousands separators", f"The answer is {int(parsed):,}."


def _broken(parsed: Any) -> str | None:
    """The gold with its value changed (plus one, element-wise for tuples, sets and intervals)."""
    import sympy

    if isinstance(parsed, sympy.Expr):
        return sympy.latex(parsed + 1)
    if isinstance(parsed, (sympy.Tuple, tuple)) and len(parsed) and isinstance(parsed[0], sympy.Expr):
        return sympy.latex(sympy.Tuple(parsed[0] + 1, *parsed[1:]))
    if isinstance(parsed, sympy.FiniteSet):
        return sympy.latex(sympy.FiniteSet(*(e + 1 for e in parsed)))
    if isinstance(parsed, sympy.Interval):
        return sympy.latex(sympy.Interval(parsed.start + 1, parsed.end + 1, parsed.left_open,
                                          parsed.right_open))
    if isinstance(parsed, sympy.MatrixBase):
        return sympy.latex(parsed + sympy.ones(*parsed.shape))
    if isinstance(parsed, sympy.Eq) and isinstance(parsed.rhs, sympy.Expr):
        return sympy.latex(sympy.Eq(parsed.lhs, parsed.rhs + 1))
    return None  # e.g. "x \in [1, 2]" or a word: only "another problem's answer" breaks it


def math500_cases(rows: list[dict[str, Any]]) -> Iterator[Case]:
    """Each gold answer rewritten (1), with its value changed (0), and another problem's different
    answer (0)."""
    from math_verify import parse

    golds = [row["answer"] for row in rows]
    for number, gold in enumerate(golds):
        source = f"math500/{number}"
        parsed_all = parse(f"${gold}$")
        parsed = parsed_all[0] if parsed_all else None
        for kind, response in _rewrites(gold, parsed):
            yield Case(source, kind, response, 1.0, gold=gold)
        broken = _broken(parsed)
        if broken is not None:
            yield Case(source, "value changed (+1)", f"\\boxed{{{broken}}}", 0.0, gold=gold)
        other = next(g for g in golds[number + 1:] + golds[:number] if g.replace(" ", "") != gold.replace(" ", ""))
        yield Case(source, "another problem's answer", f"\\boxed{{{other}}}", 0.0, gold=gold)


# --- MBPP and HumanEval --------------------------------------------------------------------------

def _as_markdown(code: str) -> str:
    return f"Here is a solution.\n\n```python\n{code}\n```\n\nIt handles the cases in the tests."


def _stubbed(code: str) -> str | None:
    """``code`` with every top-level function redefined to return None (a wrong solution that
    still defines the names the tests call)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not names:
        return None
    return code + "\n" + "".join(f"\n\ndef {name}(*args, **kwargs):\n    return None\n" for name in names)


def mbpp_entry_point(row: dict[str, Any]) -> str:
    """The function the first test calls, outermost first, among those the solution defines
    (MBPP has no entry-point field; ``sum`` in task 126 must be the solution's, not the built-in)."""
    try:
        defined = {node.name for node in ast.parse(row["code"]).body if isinstance(node, ast.FunctionDef)}
        test = ast.parse(row["test_list"][0])
    except (SyntaxError, IndexError):
        return ""
    for node in ast.walk(test):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined:
            return node.func.id
    return ""


def mbpp_cases(rows: list[dict[str, Any]]) -> Iterator[Case]:
    """The canonical solution (1), the same as a Markdown answer (1), and a wrong one (0)."""
    for row in rows:
        tests = CodeTests(asserts=tuple(row["test_list"]), setup=row.get("test_setup_code") or "",
                          entry_point=mbpp_entry_point(row))
        source = f"mbpp/{row['task_id']}"
        yield Case(source, "canonical solution", row["code"], 1.0, tests=tests)
        yield Case(source, "canonical as Markdown", _as_markdown(row["code"]), 1.0, tests=tests)
        wrong = _stubbed(row["code"])
        if wrong is not None:
            yield Case(source, "functions return None", wrong, 0.0, tests=tests)


def humaneval_cases(rows: list[dict[str, Any]]) -> Iterator[Case]:
    """The canonical completion (1), the full function as a Markdown answer (1), and a body that
    returns None (0)."""
    for row in rows:
        tests = CodeTests(check=row["test"], entry_point=row["entry_point"], prefix=row["prompt"])
        source = f"humaneval/{row['task_id']}"
        yield Case(source, "canonical completion", row["canonical_solution"], 1.0, tests=tests)
        yield Case(source, "full function as Markdown",
                   _as_markdown(row["prompt"] + row["canonical_solution"]), 1.0, tests=tests)
        yield Case(source, "body returns None", "    return None\n", 0.0, tests=tests)


def tally(cases: list[Case], scores: list[float]) -> dict[str, dict[str, int]]:
    """Per kind: how many cases, and how many scored what they must."""
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case, score in zip(cases, scores, strict=True):
        table[case.kind]["cases"] += 1
        table[case.kind]["as expected"] += score == case.expected
    return {kind: dict(counts) for kind, counts in table.items()}
