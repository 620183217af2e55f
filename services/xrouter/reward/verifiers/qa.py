"""Short-answer QA: SQuAD's normalised exact match and token F1, best over the accepted answers."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

from xrouter.reward.verifiers.base import Verdict, clip

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def _golds(gold: str, aliases: Sequence[str]) -> list[str]:
    return [g for g in (gold, *aliases) if g is not None]


def exact_match(response: str, gold: str, aliases: Sequence[str] = ()) -> Verdict:
    """1.0 when ``response`` equals ``gold`` or an alias after :func:`normalize_answer`, else 0.0."""
    got = normalize_answer(response or "")
    wants = [normalize_answer(g) for g in _golds(gold, aliases)]
    if got in wants:
        return Verdict(1.0, f"exact match on {got!r}")
    also = f" (or {len(wants) - 1} aliases)" if len(wants) > 1 else ""
    return Verdict(0.0, f"normalised answer {clip(got)!r} != gold {clip(wants[0])!r}{also}")


def f1_score(response: str, gold: str) -> float:
    """SQuAD token F1 of two texts after :func:`normalize_answer` (1.0 when both are empty)."""
    got, want = normalize_answer(response).split(), normalize_answer(gold).split()
    if not got or not want:
        return float(got == want)
    same = sum((collections.Counter(got) & collections.Counter(want)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(got), same / len(want)
    return 2 * precision * recall / (precision + recall)


def token_f1(response: str, gold: str, aliases: Sequence[str] = ()) -> Verdict:
    """The best token F1 of ``response`` against ``gold`` and its aliases, as the score."""
    best, against = max((f1_score(response or "", g), g) for g in _golds(gold, aliases))
    return Verdict(best, f"token F1 {best:.3f} against {clip(normalize_answer(against))!r}")
