"""Multiple choice: find the option letter a free-text answer picks, and compare it with gold."""

from __future__ import annotations

import re

from xrouter.common.bounds import shown
from xrouter.common.errors import InvalidArgument
from xrouter.reward.verifiers.base import Verdict

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
    if not options or not options.isascii() or not options.isalpha() or len(set(options.upper())) != len(options):
        raise InvalidArgument("reference.options", f"must be distinct option letters such as 'ABCD', got "
                              f"{shown(options)}")
    letter = (gold or "").strip().upper()
    if len(letter) != 1 or letter not in options.upper():
        raise InvalidArgument("reference.gold",
                              f"must be one option letter of {options!r} for multiple_choice, "
                              f"got {gold!r}")
    picked = extract_choice(response, options)
    if picked is None:
        return Verdict(0.0, f"no option letter found in the answer, gold {letter}")
    return Verdict(1.0 if picked == letter else 0.0, f"extracted {picked}, gold {letter}")
