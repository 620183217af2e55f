"""Math: extract the final answer, then decide equivalence symbolically with ``math-verify``.

Extraction is ours (it says *what* it took and *why*: the last ``\\boxed{}``, a GSM8K ``#### n``, a
"the answer is ...", or the last number); equivalence is Hugging Face's ``math-verify`` (sympy
underneath): ``\\frac{1}{2}`` = ``0.5`` = ``1/2``, ``10\\%`` = ``10``, ``5 \\text{ cm}`` = ``5``, sets,
intervals, matrices. Hand-written parsing would be the thing most likely to be wrong.

math-verify bounds its own work with ``signal.alarm``, which only works on a main thread; elsewhere
it runs without a bound, so the service runs this in worker processes (:mod:`xrouter.reward.workers`)
that it can kill.
"""

from __future__ import annotations

import re
import threading

from xrouter.reward.verifiers.base import Verdict, clip

# Bound on each math-verify step, in seconds (enforced on a main thread only).
TIMEOUT_S = 5

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# Decoration around an announced answer: Markdown bold, trailing full stop, a dollar currency sign.
_TRIM = re.compile(r"^(?:\*\*|\s)+|(?:\*\*|\s|\.(?!\d))+$")


def _balanced(text: str, start: int) -> str | None:
    """The text inside the brace group whose "{" is at ``start``, or None when it never closes."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:index]
    return None


def _last_boxed(text: str) -> str | None:
    for match in reversed(list(_BOXED.finditer(text))):
        if match.group(1):
            inner = _balanced(text, match.start(1))
            if inner is not None:
                return inner
        else:  # "\boxed 5": one token
            token = re.match(r"\s*([^\s$]+)", text[match.end():])
            if token:
                return token.group(1)
    return None


def extract_final_answer(text: str | None) -> tuple[str, str] | None:
    """``(answer, how)``: the final answer of a solution and the rule that found it, or None.

    Order: the last ``\\boxed{...}``, the last ``#### ...`` line, the last "the answer is ..."
    (or "Answer: ..."), then the last number in the text.
    """
    if not text or not text.strip():
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip(), "boxed"
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1], "####"
    announced = _ANSWER_IS.findall(text)
    if announced:
        answer = _TRIM.sub("", announced[-1]).strip()
        if len(answer) > 1 and answer[0] == answer[-1] == "$":
            answer = answer[1:-1].strip()
        if answer:
            return answer, "answer is"
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1], "last number"
    return None


def _bound(timeout_s: int | None) -> int | None:
    # signal.alarm only works on the main thread; elsewhere the caller must bound the work.
    return timeout_s if threading.current_thread() is threading.main_thread() else None


# math-verify decides whether "i" is the imaginary unit from the text ("9i" yes, "9 i" no), so
# "6+9i" and "9 i + 6" would differ; the space means nothing in LaTeX, so it goes.
_SPACED_I = re.compile(r"(\d)\s+i\b")


def _parse(answer: str, timeout_s: int | None) -> list[object]:
    """math-verify's parse of one extracted answer (as LaTeX first, then as plain text)."""
    from math_verify import parse  # heavy (sympy): imported on first use

    answer = _SPACED_I.sub(r"\1i", answer)
    for form in (f"${answer}$", answer):
        parsed = parse(form, parsing_timeout=_bound(timeout_s))  # type: ignore[arg-type]
        if parsed:
            return list(parsed)
    return []


class _TimedOut(Exception):
    pass


def _equivalent(gold: list[object], answer: list[object], timeout_s: int | None) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    bound = _bound(timeout_s)
    try:
        # raise_on_error only to see timeouts: math-verify otherwise logs them and says "not equal".
        return bool(verify(gold, answer, timeout_seconds=bound, raise_on_error=True))  # type: ignore[arg-type]
    except TimeoutException:
        raise _TimedOut from None
    except Exception:  # noqa: BLE001 - a comparison sympy cannot make: retry the lenient way
        return bool(verify(gold, answer, timeout_seconds=bound))  # type: ignore[arg-type]


def _normalized(text: str) -> str:
    """A last-resort textual key for answers sympy cannot read (e.g. a word)."""
    text = re.sub(r"\\(?:left|right|!|,|;|\s)|\s+", "", text)
    return re.sub(r"\\[dt]frac", r"\\frac", text).strip("$").lower()


def gold_answer(gold: str) -> str:
    """The answer a reference holds: its final answer when it is a whole solution (``#### n`` or
    ``\\boxed{}``), else the reference as written."""
    if "####" in gold or "\\boxed" in gold or "\\fbox" in gold:
        found = extract_final_answer(gold)
        if found is not None:
            return found[0]
    return gold.strip()


def gold_problem(gold: str) -> str | None:
    """Why ``gold`` can never be matched as a math reference, or None. Checked before any model is
    called (``CheckReference``): a gold marking a final answer (``\\boxed``, ``####``) that holds
    none, or braces that do not balance, would score every answer 0, and that 0 would be learned
    from as a verdict. A gold sympy cannot read is not refused: a word is compared as text."""
    if ("\\boxed" in gold or "\\fbox" in gold or "####" in gold) and extract_final_answer(gold) is None:
        return "marks a final answer (\\boxed{...} or ####) but holds none"
    want = gold_answer(gold)
    if not want:
        return "holds no answer"
    depth = 0
    for char in want:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            break
    if depth:
        return f"{clip(want, 60)!r}: its braces do not balance"
    return None


def verify_math(response: str, gold: str, timeout_s: int | None = TIMEOUT_S) -> Verdict:
    """1.0 when the final answer of ``response`` is mathematically equal to ``gold`` (a LaTeX or
    plain answer, or a whole solution ending in ``#### n`` / ``\\boxed{}``), else 0.0.

    ``timeout_s`` bounds each parse and the comparison, on the main thread only (math-verify uses
    ``signal.alarm``); a comparison that runs out of time is *flagged*, not scored: under load a
    right answer could time out too. Off the main thread nothing is bounded: use
    :class:`MathVerifier`, whose workers are killed at a deadline.
    """
    found = extract_final_answer(response)
    if found is None:
        return Verdict(0.0, "no final answer found in the response")
    answer, how = found
    want = gold_answer(gold)
    parsed_gold, parsed_answer = _parse(want, timeout_s), _parse(answer, timeout_s)
    if parsed_gold and parsed_answer:
        try:
            same = _equivalent(parsed_gold, parsed_answer, timeout_s)
        except _TimedOut:
            return Verdict(0.0, f"comparing answer {clip(answer, 60)!r} with gold {clip(want, 60)!r} "
                                f"took over {timeout_s}s; not scored", flagged=True)
        method = "math-verify"
    else:
        same = _normalized(answer) == _normalized(want)
        method = "text (sympy could not read " + ("either" if not parsed_gold and not parsed_answer
                                                   else "the gold" if not parsed_gold else "the answer") + ")"
    verb = "equals" if same else "does not equal"
    return Verdict(1.0 if same else 0.0,
                   f"answer {clip(answer, 60)!r} (by {how}) {verb} gold {clip(want, 60)!r} [{method}]")


def verify_math_unbounded(response: str, gold: str) -> Verdict:
    """:func:`verify_math` with no inner bound: for workers, which the pool kills at its deadline."""
    return verify_math(response, gold, timeout_s=None)


def _quiet_math_verify() -> None:
    # Its warnings say "no timeout set": true by design in a worker, which is bounded from outside.
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)


def warm_up() -> None:
    """Import and exercise math-verify once (a worker's start-up, so no call pays for it)."""
    _quiet_math_verify()
    verify_math("\\boxed{\\frac{1}{2}}", "0.5")


class MathVerifier:
    """:func:`verify_math` in worker processes that are killed at ``deadline_s``: what the service
    uses, since an answer like ``9^{9^{9^{9}}}`` can keep sympy busy for minutes."""

    def __init__(self, workers: int = 2, deadline_s: float = 10.0,
                 memory_bytes: int = 2 * 2**30) -> None:
        from xrouter.reward.workers import WorkerPool

        self.deadline_s = deadline_s
        self._pool = WorkerPool(verify_math_unbounded, workers, deadline_s, prepare=warm_up,
                                memory_bytes=memory_bytes)

    def start(self) -> None:
        """Start the workers now rather than on the first answer."""
        self._pool.start()

    def verify(self, response: str, gold: str) -> Verdict:
        """Like :func:`verify_math`; an answer too costly to compare scores 0 with that reason."""
        from xrouter.common.errors import Unavailable
        from xrouter.reward.workers import WorkerFailed, WorkerStartFailed, WorkerTimeout

        try:
            verdict: Verdict = self._pool.call(response, gold)
        except WorkerStartFailed as error:
            raise Unavailable(f"math verifier: {error}") from None
        except WorkerTimeout:
            # Flagged, not 0: under load a right answer could run out of time too.
            return Verdict(0.0, f"math verification gave up after {self.deadline_s:g}s "
                                "(the answer is too costly to compare); not scored", flagged=True)
        except WorkerFailed as error:
            return Verdict(0.0, f"math verification failed on this answer: {clip(str(error), 200)}")
        return verdict

    def close(self) -> None:
        """Stop the workers."""
        self._pool.close()
