"""Recorded LLM outcome sets (one JSON object per (prompt, model), gzipped JSONL) and the
deterministic train/validation split every component shares."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pathlib
from collections.abc import Iterator

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"
ROUTERBENCH = DATA_DIR / "routerbench.jsonl.gz"

# Share of prompts held out for validation; by prompt id, so every model's row of a prompt
# lands on the same side.
VALIDATION_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one model answered to one prompt, and what it cost."""

    source: str
    task: str
    prompt_id: str
    prompt: str
    gold: str | None
    model: str
    score: float
    response: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None


def read_outcomes(path: pathlib.Path | str) -> Iterator[Outcome]:
    """Yield every row of an outcome set; a malformed line fails with its line number."""
    fields = {f.name for f in dataclasses.fields(Outcome)}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                yield Outcome(**{k: row.get(k) for k in fields})
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not an outcome row: {error}") from None


def split_of(prompt_id: str) -> str:
    """'train' or 'validation', stable across runs and machines."""
    bucket = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if bucket < VALIDATION_SHARE else "train"
