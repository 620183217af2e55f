"""Cheap answer checks (xrouter.router.compact.answer_checks), on prompts in the formats of the
recorded data: RouterBench's ARC / Winogrande multiple choice and bare MBPP tasks, MBPP's own
"Your code should pass these tests" prompt, HumanEval signatures, GSM8K / MATH word problems."""

from __future__ import annotations

import asyncio
import os
import statistics
import time

import pytest

from xrouter.router.compact.answer_checks import (CHECK_NAMES, NEUTRAL, AnswerChecks, as_features,
                                                  check_answer, prompt_asserts, run_answer_code,
                                                  run_prompt_tests)

ARC = ("George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?\n"
       "A) dry palms\nB) wet palms\nC) palms covered with oil\nD) palms covered with lotion\n"
       'Print only a single choice  from "A" or "B" or "C" or "D" without explanation.\nAnswer:\nA\n\n'
       "A fold observed in layers of sedimentary rock most likely resulted from the\n"
       "A) cooling of flowing magma.\nB) converging of crustal plates.\nC) deposition of river sediments.\n"
       'Print only a single choice  from "A" or "B" or "C" without explanation.\nAnswer:\n')
WINOGRANDE = ("Please answer with the letter of the correct answer.\n\n"
              "Sarah was a much better surgeon than Maria so _ always got the harder cases.\n"
              'A) Maria\nB) Sarah\nPrint only a single choice  from "A" or "B" without explanation. Answer:')
MBPP_BARE = "Write a python function to identify non-prime numbers."
MBPP_TESTS = ("You are an expert Python programmer, and here is your task: Write a function to print n-times "
              "a list using map function. Your code should pass these tests:\n\n"
              "assert ntimes_list([1, 2, 3, 4, 5, 6, 7],3)==[3, 6, 9, 12, 15, 18, 21]\n"
              "assert ntimes_list([1, 2, 3, 4, 5, 6, 7],4)==[4, 8, 12, 16, 20, 24, 28]\n")
HUMANEVAL = ('\ndef count_upper(s):\n    """\n    Given a string s, count the number of uppercase vowels in '
             "even indices.\n    \n    For example:\n    count_upper('aBCdEf') returns 1\n    \"\"\"\n")
GSM8K = ("John is raising money for a school trip. He has applied for help from the school, which has decided "
         "to cover half the cost of the trip. How much money is John missing if he has $50 and the trip "
         "costs $300?")
OPEN = "Tell me about the history of the Roman Empire."

GOOD_NTIMES = "Here it is:\n\n```python\ndef ntimes_list(nums, n):\n    return list(map(lambda x: n * x, nums))\n```\n"
BAD_NTIMES = "```python\ndef ntimes_list(nums, n):\n    return nums * n\n```"


# --- multiple choice ---------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["B", " (C)\n", "The answer is B.", "B) converging of crustal plates."])
def test_choice_found(answer: str) -> None:
    checks = check_answer(ARC, answer)
    assert checks.choice_applies and checks.choice_found == 1.0
    assert not checks.code_applies and not checks.number_applies


@pytest.mark.parametrize("answer", ["I do", "converging of crustal plates", "Either B or C could be right."])
def test_choice_not_found(answer: str) -> None:
    checks = check_answer(ARC, answer)
    assert checks.choice_applies and checks.choice_found == 0.0


def test_choice_letters_come_from_the_last_question() -> None:
    # The last ARC block offers A-C; Winogrande offers A-B: a "D" / "C" is no option.
    assert check_answer(ARC, "D").choice_found == 0.0
    assert check_answer(WINOGRANDE, "B").choice_found == 1.0
    assert check_answer(WINOGRANDE, "C\n").choice_found == 0.0


def test_inline_options_are_multiple_choice() -> None:
    prompt = "Which is heavier, a kilogram of feathers or a kilogram of iron? (A) feathers (B) iron (C) the same"
    assert check_answer(prompt, "(C) the same").choice_found == 1.0


def test_choice_not_applicable() -> None:
    for prompt in (OPEN, MBPP_BARE, GSM8K):
        checks = check_answer(prompt, "B")
        assert not checks.choice_applies and checks.choice_found == NEUTRAL


# --- numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", ["He needs $100 more.\n#### 100", "The answer is \\boxed{100}.",
                                    "300 / 2 = 150, so he is missing 100."])
def test_number_found(answer: str) -> None:
    checks = check_answer(GSM8K, answer)
    assert checks.number_applies and checks.number_found == 1.0


def test_number_not_found() -> None:
    checks = check_answer(GSM8K, "He should ask his parents for the rest.")
    assert checks.number_applies and checks.number_found == 0.0
    math500 = ("If $f(1) = f(1986),$ compute\n\\[f(1) + f(2) + \\dots + f(1985).\\]\n"
               "Please reason step by step, and put your final answer within \\boxed{}.")
    assert check_answer(math500, "\\boxed{331}").number_found == 1.0
    assert check_answer(math500, "The answer is the sum.").number_found == 0.0
    assert check_answer(OPEN, "It fell in 476.").number_applies is False


# --- code --------------------------------------------------------------------------------------

def test_code_parses_and_is_not_applicable_elsewhere() -> None:
    good = check_answer(MBPP_BARE, "Here you go:\r\n\r\n```python\r\ndef non_prime(n):\r\n    return n < 2\r\n```\r\n")
    assert good.code_applies and good.code_parses == 1.0
    assert not good.name_applies and good.defines_name == NEUTRAL  # the bare task names no function
    # Code Llama's [PYTHON] tags, and an unfenced answer that is only code.
    assert check_answer(MBPP_BARE, "[PYTHON]\ndef f(n):\n    return n\n[/PYTHON]\n").code_parses == 1.0
    assert check_answer(MBPP_BARE, "def f(n):\n    return n\n").code_parses == 1.0
    assert check_answer(ARC, "def f(): pass").code_parses == NEUTRAL


@pytest.mark.parametrize("answer", [
    "```js\nfunction perimeter(side) {\n  return side * 4;\n}\n```",  # another language
    "```python\ndef sum\\_of\\_product(arr):\n    return 0\n```",  # Markdown-escaped
    "Here is a function:\ndef f(n):\n    return n\n\nIt returns n.",  # prose around unfenced code
    "An expression is balanced if its parentheses match.",  # no code at all
])
def test_code_does_not_parse(answer: str) -> None:
    checks = check_answer(MBPP_BARE, answer)
    assert checks.code_applies and checks.code_parses == 0.0


def test_function_name_from_asserts_and_signature() -> None:
    assert prompt_asserts(MBPP_TESTS)[0].startswith("assert ntimes_list(")
    good = check_answer(MBPP_TESTS, GOOD_NTIMES)
    assert good.name_applies and good.defines_name == 1.0 and good.code_parses == 1.0
    renamed = check_answer(MBPP_TESTS, GOOD_NTIMES.replace("ntimes_list", "repeat_list"))
    assert renamed.name_applies and renamed.defines_name == 0.0 and renamed.code_parses == 1.0
    # A name defined in code that does not parse still counts as defined.
    broken = check_answer(MBPP_TESTS, "```python\ndef ntimes_list(nums, n):\n    return [n*x for x in nums\n```")
    assert broken.code_parses == 0.0 and broken.defines_name == 1.0
    # HumanEval: the signature names it.
    body = "```python\ndef count_upper(s):\n    return sum(c in 'AEIOU' for c in s[::2])\n```"
    assert check_answer(HUMANEVAL, body).defines_name == 1.0
    assert check_answer(HUMANEVAL, body.replace("count_upper", "count")).defines_name == 0.0


def test_truncated_code_block() -> None:
    cut = "Here's a Python function:\n\n```python\ndef sum_amicable(n):\n    pairs = [(220, 284), (1184"
    assert check_answer(MBPP_BARE, cut).truncated
    assert not check_answer(MBPP_BARE, GOOD_NTIMES).truncated
    assert check_answer(MBPP_BARE, "[PYTHON]\ndef f(n):\n    return").truncated


# --- unknown answers ---------------------------------------------------------------------------

@pytest.mark.parametrize("answer, flag", [
    ("", "empty"), ("  \n\t", "empty"), (None, "empty"),
    ("I cannot help with that request.", "refusal"),
    ("As an AI language model, I don't have opinions.", "refusal"),
    ("I'm sorry, but I can't assist with that.", "refusal"),
    ("[xrouter replay: no recorded text; gpt-4 on mbpp.1/train]", "placeholder"),
])
@pytest.mark.parametrize("prompt", [ARC, GSM8K, MBPP_TESTS])
def test_unknown_is_neutral_not_failed(prompt: str, answer: str | None, flag: str) -> None:
    checks = check_answer(prompt, answer)
    assert checks.unknown and getattr(checks, flag)
    assert (checks.choice_found, checks.number_found, checks.code_parses, checks.defines_name) == (NEUTRAL,) * 4
    # The prompt's checks still say they apply: "applies and neutral" is unknown, never a fail.
    assert checks.choice_applies or checks.number_applies or checks.code_applies


def test_refusal_is_only_an_opening() -> None:
    assert not check_answer(MBPP_BARE, "```python\ndef f():\n    # I cannot see why not\n    return 1\n```").refusal
    assert not check_answer(ARC, "B").unknown


def test_placeholder_uses_the_outcomes_helper_when_present() -> None:
    from xrouter.common import outcomes

    if hasattr(outcomes, "placeholder_text"):
        assert check_answer(ARC, outcomes.placeholder_text("arc.1/train", "claude-v2")).placeholder


# --- features ----------------------------------------------------------------------------------

def test_feature_vector_is_stable() -> None:
    assert len(CHECK_NAMES) == len(set(CHECK_NAMES)) == 13
    for prompt, answer in ((ARC, "B"), (GSM8K, "#### 100"), (MBPP_TESTS, GOOD_NTIMES), (OPEN, ""),
                           (MBPP_BARE, "I cannot"), ("", "")):
        features = as_features(check_answer(prompt, answer))
        assert len(features) == len(CHECK_NAMES)
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in features)
    arc = dict(zip(CHECK_NAMES, as_features(check_answer(ARC, "B")), strict=True))
    assert arc["choice_applies"] == 1.0 and arc["choice_found"] == 1.0 and arc["unknown"] == 0.0
    assert arc["code_applies"] == 0.0 and arc["code_parses"] == NEUTRAL
    assert as_features(AnswerChecks()) == (0.0,) * 5 + (0.0, NEUTRAL) * 4


def test_check_answer_is_fast() -> None:
    answer = GOOD_NTIMES + "\nThis maps each element.\n" * 20
    cases = [(ARC, "B"), (WINOGRANDE, "The answer is A."), (MBPP_TESTS, answer), (GSM8K, "#### 100")] * 50
    timings = []
    for prompt, text in cases:
        started = time.perf_counter()
        check_answer(prompt, text)
        timings.append(time.perf_counter() - started)
    # Typically tens of microseconds; generous for a loaded CI machine.
    assert statistics.median(timings) < 0.002


# --- the prompt's own tests, in the real sandbox -------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():  # type: ignore[no-untyped-def]
    from xrouter.reward.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

    try:
        box = Sandbox(SandboxLimits(wall_s=4.0, cpu_s=1, memory_bytes=256 * 2**20), max_parallel=2)
        box.probe()
    except SandboxUnavailable as error:
        message = f"code sandbox unavailable on this host ({error}): prompt-test checks SKIPPED"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- in CI a host without namespaces is a failure")
        pytest.skip(message)
    return box


def test_prompt_tests_pass_and_fail(sandbox) -> None:  # type: ignore[no-untyped-def]
    passed = asyncio.run(run_prompt_tests(MBPP_TESTS, GOOD_NTIMES, 4.0, sandbox=sandbox))
    assert passed.outcome == "passed" and passed.applies and passed.latency_s > 0
    failed = asyncio.run(run_prompt_tests(MBPP_TESTS, BAD_NTIMES, 4.0, sandbox=sandbox))
    assert failed.outcome == "failed" and "AssertionError" in failed.detail
    renamed = asyncio.run(run_prompt_tests(MBPP_TESTS, GOOD_NTIMES.replace("ntimes_list", "f"), 4.0, sandbox=sandbox))
    assert renamed.outcome == "failed" and "NameError" in renamed.detail
    looping = asyncio.run(run_prompt_tests(MBPP_TESTS, "def ntimes_list(a, n):\n    while True: pass", 1.0,
                                           sandbox=sandbox))
    assert looping.outcome == "failed" and looping.latency_s < 3.0


def test_prompt_tests_not_applicable_or_unknown(sandbox) -> None:  # type: ignore[no-untyped-def]
    assert asyncio.run(run_prompt_tests(MBPP_BARE, GOOD_NTIMES, 4.0, sandbox=sandbox)).outcome == "not_applicable"
    assert asyncio.run(run_prompt_tests(ARC, "B", 4.0, sandbox=sandbox)).outcome == "not_applicable"
    unknown = asyncio.run(run_prompt_tests(MBPP_TESTS, "I cannot help with that.", 4.0, sandbox=sandbox))
    assert unknown.outcome == "unknown" and not unknown.applies


def test_answer_code_runs(sandbox) -> None:  # type: ignore[no-untyped-def]
    ok = "```python\ndef f(n):\n    return n\n\nprint(f(3))\n```"
    assert asyncio.run(run_answer_code(MBPP_BARE, ok, 4.0, sandbox=sandbox)).outcome == "passed"
    crash = "```python\ndef f(n):\n    return n[0]\n\nprint(f(3))\n```"
    assert asyncio.run(run_answer_code(MBPP_BARE, crash, 4.0, sandbox=sandbox)).outcome == "failed"
    assert asyncio.run(run_answer_code(ARC, "B", 4.0, sandbox=sandbox)).outcome == "not_applicable"
