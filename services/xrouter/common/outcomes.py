"""Recorded LLM outcome sets (one JSON object per (prompt, model), gzipped JSONL), the registry of
the bundled sets, and the deterministic train/validation split every component shares."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import pathlib
import zlib
from collections.abc import Iterator

DATA_DIR = pathlib.Path(__file__).resolve().parent.parent / "data"
ROUTERBENCH = DATA_DIR / "routerbench.jsonl.gz"

# Share of prompts held out for validation; by prompt id, so every model's row of a prompt
# lands on the same side.
VALIDATION_SHARE = 0.2
FOLDS = round(1 / VALIDATION_SHARE)  # disjoint validation splits that together cover every prompt


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
    cost_estimated: bool = False  # True when cost_usd was priced by us, not recorded by the publisher


@dataclasses.dataclass(frozen=True)
class Source:
    """One bundled outcome set and the catalog that prices its models."""

    name: str
    data: pathlib.Path
    catalog: pathlib.Path


SOURCES: dict[str, Source] = {
    name: Source(name, DATA_DIR / f"{name}.jsonl.gz", DATA_DIR / f"catalog.{name}.yaml")
    for name in ("routerbench", "llmrouter", "arena", "routerarena")
}


def source(name: str) -> Source:
    """The bundled outcome set called ``name``; ValueError lists the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown outcome source {name!r} (known: {', '.join(SOURCES)})") from None


def tasks_of(name: str) -> set[str]:
    """The task families of the bundled outcome set ``name`` (one pass over its rows)."""
    return {row.task for row in read_outcomes(source(name).data)}


# --- rows without recorded text -------------------------------------------------------------------

_PLACEHOLDER_PREFIX = "[xrouter replay: no recorded text; "


def placeholder_text(prompt_id: str, model: str) -> str:
    """The stand-in answer of a row that has a recorded score but no recorded text: marked, and
    unique per (prompt, model) so the recorded label of exactly that row can be looked up."""
    return f"{_PLACEHOLDER_PREFIX}{model} on {prompt_id}]"


def is_placeholder(text: str | None) -> bool:
    """Whether ``text`` is a :func:`placeholder_text`, not something a model wrote."""
    return bool(text) and text.startswith(_PLACEHOLDER_PREFIX) and text.endswith("]")  # type: ignore[union-attr]


# --- reading and validation -----------------------------------------------------------------------

_REQUIRED_TEXT = ("source", "task", "prompt_id", "prompt", "model")
_OPTIONAL_TEXT = ("gold", "response")
_OPTIONAL_COUNT = ("prompt_tokens", "completion_tokens")
_FIELDS = frozenset({*_REQUIRED_TEXT, *_OPTIONAL_TEXT, *_OPTIONAL_COUNT, "score", "cost_usd", "cost_estimated"})


def _check_row(row: object) -> tuple[str, str] | None:
    """(field, problem) for the first inconsistent field of one row, None when it is sound."""
    if not isinstance(row, dict):
        return "", f"expected a JSON object, got {type(row).__name__}"
    for name in _REQUIRED_TEXT:
        value = row.get(name)
        if not isinstance(value, str) or (name != "prompt" and not value):
            return name, "missing" if value is None else f"must be a non-empty string, got {value!r:.60}"
    for name in _OPTIONAL_TEXT:
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            return name, f"must be a string or null, got {type(value).__name__}"
    score = row.get("score")
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not (0.0 <= score <= 1.0):
        # NaN fails the range test too; json reads NaN/Infinity as floats.
        return "score", "missing" if score is None else f"must be a finite number in [0, 1], got {score!r}"
    cost = row.get("cost_usd")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                             or not math.isfinite(cost) or cost < 0):
        return "cost_usd", f"must be a finite number >= 0 or null, got {cost!r}"
    for name in _OPTIONAL_COUNT:
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return name, f"must be a non-negative integer or null, got {value!r}"
    estimated = row.get("cost_estimated", False)
    if not isinstance(estimated, bool):
        return "cost_estimated", f"must be true or false, got {estimated!r}"
    unknown = sorted(set(row) - _FIELDS)
    if unknown:  # a misspelt field ("scroe") was read as absent
        return unknown[0], f"is not an outcome field; known: {sorted(_FIELDS)}"
    return None


def read_outcomes(path: pathlib.Path | str) -> Iterator[Outcome]:
    """Yield every row of an outcome set, validated as it streams.

    An unreadable file (missing, not gzip, truncated) or an inconsistent row — a required field
    missing, a score outside [0, 1] or not finite, a negative or non-finite cost, the same
    (prompt_id, model) twice, one prompt_id with two different prompt texts — raises ValueError
    naming the file, the line number and the field.
    """
    prompts: dict[str, tuple[str, int]] = {}  # prompt_id -> (prompt text, first line)
    seen: set[tuple[str, str]] = set()
    first_source: str | None = None
    number = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON outcome row: {error}") from None
                problem = _check_row(row)
                if problem is not None:
                    field, why = problem
                    raise ValueError(f"{path}:{number}: field {field!r}: {why}" if field
                                     else f"{path}:{number}: {why}")
                if first_source is None:
                    first_source = row["source"]
                elif row["source"] != first_source:  # one file is one outcome source
                    raise ValueError(f"{path}:{number}: field 'source': {row['source']!r} in a file of source "
                                     f"{first_source!r} (line 1)")
                prompt_id, model, prompt = row["prompt_id"], row["model"], row["prompt"]
                known = prompts.setdefault(prompt_id, (prompt, number))
                if known[0] != prompt:
                    raise ValueError(f"{path}:{number}: field 'prompt': prompt_id {prompt_id!r} has a "
                                     f"different prompt text than on line {known[1]}")
                key = (prompt_id, model)
                if key in seen:
                    raise ValueError(f"{path}:{number}: field 'model': ({prompt_id!r}, {model!r}) is "
                                     "recorded twice")
                seen.add(key)
                yield Outcome(
                    source=row["source"], task=row["task"], prompt_id=prompt_id, prompt=prompt,
                    gold=row.get("gold"), model=model, score=float(row["score"]),
                    response=row.get("response"), prompt_tokens=row.get("prompt_tokens"),
                    completion_tokens=row.get("completion_tokens"),
                    cost_usd=None if row.get("cost_usd") is None else float(row["cost_usd"]),
                    cost_estimated=row.get("cost_estimated", False))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        where = f"{path}:{number + 1}" if number else str(path)
        raise ValueError(f"{where}: unreadable outcome file: {error}") from None


def split_of(prompt_id: str, fold: int = 0) -> str:
    """'train' or 'validation', stable across runs and machines. ``fold`` (0 … FOLDS − 1) picks which
    fifth of the prompt-id hashes is the validation split: fold 0 is the default split; the five
    folds together validate every prompt once (cross-validation, ``xrouter generalise --kfold``)."""
    if not 0 <= fold < FOLDS:
        raise ValueError(f"fold: {fold} is not in 0..{FOLDS - 1}")
    bucket = int.from_bytes(hashlib.sha256(prompt_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if fold * VALIDATION_SHARE <= bucket < (fold + 1) * VALIDATION_SHARE else "train"
