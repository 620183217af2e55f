"""Which of the evaluated prompts a checkpoint under test was trained on.

A checkpoint's figures on prompts it trained on say how well it memorised them, not how it routes
a new request. Nothing stopped that silently: the bundled checkpoint (trained on fold 0's train
part) evaluated with ``--fold 3`` played four fifths of its own training prompts and printed them
as a validation result. Two signals, both from the checkpoint itself:

- **its training split**: the manifest records the sources it trained on and which fifth of each
  was held out (``validation_fold``). An evaluated prompt of such a source's bundled file whose id
  falls in that fold's train part was trained on (or, for a run with ``limit_prompts``, could have
  been: the count is an upper bound then).
- **its outcome memory**: a compact checkpoint's memory holds a row per text it learned from
  (recorded outcomes and, after ``xrouter learn``, served verdicts), keyed by the text's hash. This
  also covers an outcome file that is not a bundled one, and a text recorded under two ids (two of
  RouterBench's MBPP prompts), which the id split cannot see.

On the validation split, prompts the checkpoint trained on by its split are refused unless
``--allow-seen``; texts found in the memory are counted and reported (the policy never reads a
text's own rows, so they are its neighbours' evidence, not its answer). Every report records both.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from xrouter.common.errors import InvalidArgument
from xrouter.common.outcomes import FOLDS, split_of

from xrouter_training.environment import Prompt


@dataclasses.dataclass(frozen=True)
class TrainedOn:
    evaluated: int
    by_split: int  # evaluated prompts in the train part of the checkpoint's split of a source it trained on
    in_memory: int  # evaluated texts with rows in the checkpoint's outcome memory
    sources: tuple[str, ...]  # the bundled sources the checkpoint trained on (by its manifest)
    fold: int | None  # the fifth it held out of each (None: unknown)
    data_source: str | None  # which bundled source the evaluated file is (None: another file)

    def as_report(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        trained = ", ".join(self.sources) or "no bundled source"
        fold = "unknown" if self.fold is None else str(self.fold)
        return (f"trained on {trained} (validation fold {fold}); of the {self.evaluated} evaluated prompts, "
                f"{self.by_split} are in its training split and {self.in_memory} have their text in its outcome memory")


def bundled_source_of(data: pathlib.Path) -> str | None:
    """The name of the bundled outcome set stored at ``data`` (None: some other file)."""
    from xrouter.common.outcomes import SOURCES

    resolved = pathlib.Path(data).resolve()
    return next((name for name, source in SOURCES.items() if pathlib.Path(source.data).resolve() == resolved), None)


def trained_on(checkpoint: pathlib.Path, data: pathlib.Path, prompts: Sequence[Prompt]) -> TrainedOn:
    manifest = _manifest(checkpoint)
    config = manifest.get("config") or {}
    sources = tuple(config.get("sources") or ())
    if not sources and config.get("data"):  # a single-set run names its set (a bundled name or a file)
        sources = (str(config["data"]),)
    fold = config.get("validation_fold")
    fold = 0 if fold is None and config else fold  # manifests from before folds existed: fold 0
    data_source = bundled_source_of(data)
    by_split = 0
    if data_source is not None and data_source in sources and fold is not None and 0 <= int(fold) < FOLDS:
        left_out = left_out_tasks(config.get("exclude_tasks") or (), data_source)
        by_split = sum(split_of(p.prompt_id, int(fold)) == "train" and p.task not in left_out for p in prompts)
    return TrainedOn(len(prompts), by_split, _in_memory(checkpoint, prompts), sources,
                     None if fold is None else int(fold), data_source)


def left_out_tasks(exclude_tasks: Sequence[str], source: str | None) -> set[str]:
    """The task families of ``source`` (any source when None) that a training config's
    ``exclude_tasks`` ("<source>/<task>" entries) left out."""
    return {entry.partition("/")[2] for entry in exclude_tasks if source is None or entry.partition("/")[0] == source}


def _manifest(checkpoint: pathlib.Path) -> dict:
    path = pathlib.Path(checkpoint) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # loading the checkpoint itself names what is wrong with it
    return manifest if isinstance(manifest, dict) else {}


def _in_memory(checkpoint: pathlib.Path, prompts: Sequence[Prompt]) -> int:
    from xrouter.router.compact.memory import FILE, UNREADABLE, text_key

    path = pathlib.Path(checkpoint) / FILE
    if not path.is_file():
        return 0
    try:
        with np.load(path, allow_pickle=False) as saved:
            keys = set(saved["keys"].astype(np.int64).tolist())
    except UNREADABLE as error:
        raise InvalidArgument("policy", f"{path}: unreadable outcome memory ({error})") from None
    return sum(int.from_bytes(text_key(p.text), "little", signed=True) in keys for p in prompts)
