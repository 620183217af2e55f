"""Domain verifiers: plain functions that judge one answer, usable without gRPC.

Each returns a :class:`Verdict`, a score in [0, 1] and a short human-readable reason.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
import string
from collections.abc import Iterable

from xrouter.common.errors import InvalidArgument, NotFound
from xrouter.common.outcomes import Outcome, read_outcomes


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verifier's judgement: ``score`` in [0, 1] and why (``detail``)."""

    score: float
    detail: str


# --- multiple choice -----------------------------------------------------------------------------

# Phrases that announce the chosen letter ("The answer is B", "Answer: (c)", "option D").
_EXPLICIT = (r"\b(?:answer|option|choice)\b(?:\s+(?:is|would\s+be|should\s+be|=))?"
             r"\s*[:=\-]?\s*(?:option\s+|choice\s+)?[(\[*]*({L})(?![A-Za-z0-9'])")
# A letter that opens the answer as a list marker: "B) iron", "(B) iron", "b. iron", "D (because".
_LEADING = r"^[(\[*]*({L})(?:[)\].:]|\s*\(|\s*$)"
# A letter in brackets anywhere: "... so I pick (C) here".
_BRACKETED = r"[(\[]({L})[)\]]"
# Any standalone letter; the weakest evidence, used last.
_STANDALONE = r"(?<![A-Za-z0-9'])({L})(?![A-Za-z0-9'])"
# "A" followed by a lowercase word is an article ("A chart shows ..."), except in "A is ..." etc.
_ARTICLE_AFTER = re.compile(r"\s+(?!(?:is|and|or|was|seems)\b)[a-z]")


def _letters(options: str) -> str:
    return re.escape("".join(sorted(set(options.upper()))))


def extract_choice(text: str | None, options: str = "ABCDE") -> str | None:
    """The option letter a free-text answer picks, upper-cased, or None when there is none or it
    is ambiguous. Explicit patterns win over loose ones, so the article "A" in a sentence does not
    beat "the answer is D"."""
    if not text or not options:
        return None
    s = text.strip()
    letters = f"[{_letters(options)}]"
    # 1. The whole answer is one letter, perhaps wrapped: "B", "(b)", "**C**", "D.".
    bare = re.fullmatch(rf"[\W_]*({letters})[\W_]*", s, re.IGNORECASE)
    if bare:
        return bare.group(1).upper()
    # 2. An announced answer; the last one wins because models often revise ("..., so the answer
    # is C"). A lowercase letter followed by a word is prose ("the answer is a tree"), not a pick.
    explicit = [m for m in re.finditer(_EXPLICIT.format(L=letters), s, re.IGNORECASE)
                if not (m.group(1).islower() and re.match(r"\s+[A-Za-z]", s[m.end():]))]
    if explicit:
        return explicit[-1].group(1).upper()
    # 3. A list-marker letter at the start.
    leading = re.match(_LEADING.format(L=letters), s, re.IGNORECASE)
    if leading:
        return leading.group(1).upper()
    # 4./5. Bracketed, then standalone capital letters; only an unambiguous single letter counts.
    for pattern, flags in ((_BRACKETED, re.IGNORECASE), (_STANDALONE, 0)):
        found = {m.group(1).upper() for m in re.finditer(pattern.format(L=letters), s, flags)
                 if not (m.group(1) == "A" and _ARTICLE_AFTER.match(s, m.end()))}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return None


def multiple_choice(response: str, gold: str, options: str = "ABCDE") -> Verdict:
    """1.0 when the letter picked in ``response`` is ``gold`` (one of ``options``), else 0.0."""
    letter = (gold or "").strip().upper()
    if len(letter) != 1 or letter not in options.upper():
        raise InvalidArgument("reference.gold",
                              f"must be one option letter of {options!r} for multiple_choice, "
                              f"got {gold!r}")
    picked = extract_choice(response, options)
    if picked is None:
        return Verdict(0.0, f"no option letter found in the answer, gold {letter}")
    return Verdict(1.0 if picked == letter else 0.0, f"extracted {picked}, gold {letter}")


# --- exact match ---------------------------------------------------------------------------------

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def exact_match(response: str, gold: str) -> Verdict:
    """1.0 when ``response`` equals ``gold`` after :func:`normalize_answer`, else 0.0."""
    got, want = normalize_answer(response or ""), normalize_answer(gold or "")
    if got == want:
        return Verdict(1.0, f"exact match on {want!r}")
    return Verdict(0.0, f"normalised answer {_clip(got)!r} != gold {_clip(want)!r}")


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- recorded labels -----------------------------------------------------------------------------

def _response_key(text: str) -> str:
    # Only whitespace and case: heavier normalisation would merge answers the recording graded
    # differently (SQuAD's article stripping would even turn the answer "A" into "").
    return " ".join(text.split()).casefold()


class RecordedLabels:
    """The correctness labels recorded for known (prompt, answer) pairs of one outcome set.

    Indexes prompt_id -> {normalised answer text -> recorded scores}; answering with a recorded
    text returns its recorded label, so replayed answers are graded exactly as the publisher did.
    """

    def __init__(self, rows: Iterable[Outcome], name: str = "") -> None:
        self.name = name
        self._labels: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        for row in rows:
            if row.response is not None:
                self._labels[row.prompt_id][_response_key(row.response)].append(float(row.score))
        self._labels = {pid: dict(answers) for pid, answers in self._labels.items()}

    @classmethod
    def from_file(cls, path: pathlib.Path | str, name: str = "") -> RecordedLabels:
        """Index an outcome set file (gzipped JSONL, see :func:`read_outcomes`)."""
        return cls(read_outcomes(path), name=name or pathlib.Path(path).name)

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._labels

    def verdict(self, prompt_id: str, response: str) -> Verdict:
        """The recorded label of ``response`` to ``prompt_id``; NotFound when either is unknown."""
        answers = self._labels.get(prompt_id)
        where = f" in dataset {self.name!r}" if self.name else ""
        if answers is None:
            raise NotFound(f"reference.prompt_id: {prompt_id!r} is not a recorded prompt{where}")
        scores = answers.get(_response_key(response or ""))
        if scores is None:
            raise NotFound(f"reference.prompt_id: the answer to {prompt_id!r} has no recorded "
                           f"label{where} ({len(answers)} distinct answers are recorded); "
                           "score it with another verifier")
        return _majority(scores)


def _majority(scores: list[float]) -> Verdict:
    counts = collections.Counter(scores).most_common()
    if len(counts) == 1:
        plural = "s" if len(scores) > 1 else ""
        return Verdict(counts[0][0], f"recorded label {counts[0][0]:g} ({len(scores)} recording{plural})")
    if counts[0][1] > counts[1][1]:
        return Verdict(counts[0][0], f"recorded labels disagree {sorted(scores)}: majority "
                                     f"{counts[0][0]:g}")
    mean = sum(scores) / len(scores)
    return Verdict(mean, f"recorded labels disagree {sorted(scores)} with no majority: mean {mean:g}")
