"""Reading an `xrouter export-episodes` file for `xrouter learn`, strictly: every line an episode
of the export's schema whose fields have the export's types and ranges, each request once.

Why strict: the learner writes what it reads into a checkpoint's outcome memory. A verdict of 1.5,
NaN or a string was learned as it was (the CLI probe of 2026-12-07 found a candidate memory holding
a score of 1.5 and a row of NaN), a missing field was a KeyError traceback, and a request exported
twice was learned twice. Each problem is now a ValueError naming the file, the line and the field.
"""

from __future__ import annotations

import gzip
import json
import math
import pathlib
from typing import Any


def read_episodes(path: pathlib.Path) -> list[dict[str, Any]]:
    """The episodes of ``path`` (.jsonl, or .jsonl.gz), each checked (see the module docstring)."""
    from xrouter.metering.export import SCHEMA

    opener = gzip.open if path.suffix == ".gz" else open
    episodes: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {number}"
                try:
                    episode = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not JSON ({error.msg}, column {error.colno})") from None
                if not isinstance(episode, dict) or episode.get("schema") != SCHEMA:
                    schema = episode.get("schema") if isinstance(episode, dict) else None
                    raise ValueError(f"{where}: not an {SCHEMA} episode (schema {schema!r})")
                check_episode(episode, where)
                request_id = episode["request_id"]
                if request_id in first_line:
                    raise ValueError(f"{where}: request_id {request_id!r} is also on line {first_line[request_id]}; "
                                     "an export holds each request once")
                first_line[request_id] = number
                episodes.append(episode)
    except (OSError, EOFError, UnicodeDecodeError) as error:  # not gzip, truncated, not UTF-8
        raise ValueError(f"{path}: unreadable ({error})") from None
    return episodes


def check_episode(episode: dict[str, Any], where: str) -> None:
    """The fields the learner reads, with the export's types and ranges (absent optional ones: None)."""
    _text(episode, "request_id", where)
    _text(episode, "settled_at", where)
    if episode.get("outcome") is not None:
        _text(episode, "outcome", where)
    _number(episode, "cost_micro_usd", where, integer=True)
    for name in ("score", "cost_lambda"):
        if episode.get(name) is not None:
            _number(episode, name, where, top=1.0 if name == "score" else math.inf)
    feedback = _object(episode, "feedback", where)
    if feedback is not None:
        _number(feedback, "score", f"{where}: feedback", top=1.0)
    for name in ("returned_call", "prompt", "exploration"):
        _object(episode, name, where)
    returned = episode.get("returned_call")
    if returned is not None and returned.get("model") is not None:  # None: the call is not in the ledger
        _text(returned, "model", f"{where}: returned_call")
    if episode.get("prompt") is not None:
        for name in ("dataset", "prompt_id"):
            _text(episode["prompt"], name, f"{where}: prompt")
    exploration = episode.get("exploration")
    if exploration is not None:
        probability = exploration.get("first_call_probability")
        if not _is_number(probability) or not 0 < probability <= 1:
            raise ValueError(f"{where}: exploration.first_call_probability must be in (0, 1], got {probability!r}")
    for name in ("calls", "messages"):
        items = episode.get(name)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise ValueError(f"{where}: {name} must be a list of objects")
        for index, item in enumerate(items):
            _text(item, "model" if name == "calls" else "role", f"{where}: {name}[{index}]")
            if name == "messages" and not isinstance(item.get("content"), str):
                raise ValueError(f"{where}: {name}[{index}].content must be a string, got {item.get('content')!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(holder: dict[str, Any], name: str, where: str, top: float = math.inf, integer: bool = False) -> None:
    value = holder.get(name)
    if not _is_number(value) or (integer and not isinstance(value, int)) or not 0 <= value <= top:
        kind = "an integer" if integer else "a number"
        bounds = f"in [0, {top:g}]" if math.isfinite(top) else ">= 0"
        raise ValueError(f"{where}: {name} must be {kind} {bounds}, got {value!r}")


def _text(holder: dict[str, Any], name: str, where: str) -> None:
    if not isinstance(holder.get(name), str) or not holder[name]:
        raise ValueError(f"{where}: {name} must be a non-empty string, got {holder.get(name)!r}")


def _object(holder: dict[str, Any], name: str, where: str) -> dict[str, Any] | None:
    value = holder.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{where}: {name} must be an object or null, got {value!r}")
    return value
