"""Recorded labels: grade replayed answers exactly as the data set's publisher did."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Iterable

from xrouter.common.errors import NotFound
from xrouter.common.outcomes import Outcome, placeholder_text, read_outcomes
from xrouter.reward.verifiers.base import Verdict


def _response_key(text: str) -> str:
    # Only whitespace and case: heavier normalisation would merge answers the recording graded
    # differently (SQuAD's article stripping would even turn the answer "A" into "").
    return " ".join(text.split()).casefold()


class RecordedLabels:
    """The correctness labels recorded for known (prompt, answer) pairs of one outcome set.

    Indexes prompt_id -> {normalised answer text -> recorded scores}; answering with a recorded
    text returns its recorded label, so replayed answers are graded exactly as the publisher did.
    A row with a score but no recorded text is indexed under its
    :func:`~xrouter.common.outcomes.placeholder_text`, the answer the replay backend gives for it.
    """

    def __init__(self, rows: Iterable[Outcome], name: str = "") -> None:
        self.name = name
        self._labels: dict[str, dict[str, list[float]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        for row in rows:
            text = row.response if row.response is not None else placeholder_text(row.prompt_id, row.model)
            self._labels[row.prompt_id][_response_key(text)].append(float(row.score))
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
