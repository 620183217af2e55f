"""The math verifier: answer extraction, symbolic equivalence (math-verify), the killable worker
pool, and a fixed sample of GSM8K and MATH-500 (the full sets run in ``python -m
xrouter.reward.proof``)."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from xrouter.reward.proof.cases import gsm8k_cases, math500_cases
from xrouter.reward.verifiers import MathVerifier, extract_final_answer, verify_batch, verify_math
from xrouter.reward.verifiers.math import gold_answer
from xrouter.reward.workers import WorkerFailed, WorkerPool, WorkerTimeout

SAMPLE = json.loads((pathlib.Path(__file__).parent / "data" / "reward_sample.json").read_text())


@pytest.mark.parametrize(("text", "expected"), [
    ("so the result is \\boxed{\\frac{1}{2}}.", ("\\frac{1}{2}", "boxed")),
    ("\\boxed{\\left\\{1, \\frac{2}{3}\\right\\}} and later \\boxed{7}", ("7", "boxed")),
    ("nested \\boxed{\\sqrt{\\frac{a}{b}}}", ("\\sqrt{\\frac{a}{b}}", "boxed")),
    ("it is \\boxed 5.", ("5.", "boxed")),
    ("\\fbox{12}", ("12", "boxed")),
    ("She sells 9 eggs.\n#### 18", ("18", "####")),
    ("Total: 1,200 dollars\n####  1,200 ", ("1,200", "####")),
    ("The answer is 42.", ("42", "answer is")),
    ("**Final Answer:** $\\frac{3}{4}$", ("\\frac{3}{4}", "answer is")),
    ("Answer: x = 3\nThat is all.", ("x = 3", "answer is")),
    ("First 3 apples, then 5 more, so 8", ("8", "last number")),
    ("no numbers here", None), ("", None), (None, None),
    ("an unclosed \\boxed{12 and then 7", ("7", "last number")),
])
def test_extract_final_answer(text: str | None, expected: tuple[str, str] | None) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(("response", "gold"), [
    ("\\boxed{\\frac{1}{2}}", "0.5"), ("The answer is 0.5", "\\frac12"), ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    ("The answer is $18.", "18"), ("#### 1,000", "1000"), ("\\boxed{10\\%}", "10"),
    ("\\boxed{5 \\text{ cm}}", "5"), ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{2(k+1)}", "2k+2"), ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{9 i + 6}", "6+9i"), ("\\boxed{[1, 2)}", "[1,2)"), ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    # A whole reference solution as the gold: its final answer counts.
    ("The answer is 18", "Janet sells 9 eggs for $2 each.\n#### 18"),
])
def test_equivalent_answers_score_1(response: str, gold: str) -> None:
    verdict = verify_math(response, gold)
    assert verdict.score == 1.0, verdict.detail


@pytest.mark.parametrize(("response", "gold"), [
    ("\\boxed{\\frac{1}{3}}", "0.33"), ("The answer is 17", "18"), ("\\boxed{(1, 2]}", "[1,2)"),
    ("\\boxed{2k+1}", "2k+2"), ("\\boxed{-6+9i}", "6+9i"), ("\\boxed{\\sqrt{3}}", "1.732"),
    ("\\boxed{\\text{Evelyn}}", "\\text{Bob}"),
])
def test_different_answers_score_0(response: str, gold: str) -> None:
    verdict = verify_math(response, gold)
    assert verdict.score == 0.0, verdict.detail


def test_details_say_what_was_compared() -> None:
    assert verify_math("so \\boxed{4}", "4").detail == "answer '4' (by boxed) equals gold '4' [math-verify]"
    assert verify_math("nothing", "4").detail == "no final answer found in the response"
    assert gold_answer("step\n#### 72") == "72" and gold_answer("\\frac{1}{2}") == "\\frac{1}{2}"


def test_gsm8k_sample() -> None:
    cases = [c for c in gsm8k_cases(SAMPLE["gsm8k"], "test")]
    verdicts = verify_batch(verify_math, [c.response for c in cases], [c.gold for c in cases])
    wrong = [(c.source, c.kind, v.detail) for c, v in zip(cases, verdicts) if v.score != c.expected]
    assert len(cases) == 4 * len(SAMPLE["gsm8k"]) and wrong == []


def test_math500_sample() -> None:
    cases = list(math500_cases(SAMPLE["math500"]))
    verdicts = verify_batch(verify_math, [c.response for c in cases], [c.gold for c in cases])
    wrong = [(c.source, c.kind, c.response, v.detail) for c, v in zip(cases, verdicts)
             if v.score != c.expected]
    kinds = {c.kind for c in cases}
    assert {"boxed in a sentence", "value changed (+1)", "another problem's answer"} <= kinds
    assert len(cases) > 3 * len(SAMPLE["math500"]) and wrong == []


# --- worker processes ----------------------------------------------------------------------------

def test_worker_pool_kills_a_call_that_overruns() -> None:
    pool = WorkerPool(time.sleep, workers=1, deadline_s=0.5)
    try:
        assert pool.call(0.01) is None
        started = time.monotonic()
        with pytest.raises(WorkerTimeout, match="no result within 0.5s"):
            pool.call(60)
        assert time.monotonic() - started < 5
        assert pool.call(0.01) is None  # a fresh worker took its place
        with pytest.raises(WorkerFailed, match="TypeError"):
            pool.call("not a number")
    finally:
        pool.close()
    with pytest.raises(WorkerFailed, match="closed"):
        pool.call(0.01)


def test_runaway_comparison_is_flagged_on_the_main_thread() -> None:
    started = time.monotonic()
    verdict = verify_math("\\boxed{9^{9^{9^{9}}}}", "3", timeout_s=1)
    assert (verdict.score, verdict.flagged) == (0.0, True)
    assert verdict.detail.endswith("took over 1s; not scored")
    assert time.monotonic() - started < 5


def test_math_verifier_gives_up_on_a_runaway_answer() -> None:
    """``9^{9^{9^{9}}}`` keeps sympy busy far past any deadline: the worker is killed at the
    deadline, the answer is flagged (reward 0, not a label), and the next one is scored normally."""
    verifier = MathVerifier(workers=1, deadline_s=3.0)
    try:
        verifier.start()
        started = time.monotonic()
        verdict = verifier.verify("\\boxed{9^{9^{9^{9}}}}", "3")
        assert (verdict.score, verdict.flagged) == (0.0, True)
        assert verdict.detail.startswith("math verification gave up after 3s")
        assert time.monotonic() - started < 3.0 + 3
        assert verifier.verify("The answer is 0.5", "\\frac{1}{2}").score == 1.0
    finally:
        verifier.close()
