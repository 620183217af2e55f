"""What one ``xrouter eval`` plays, decided before any episode runs: its settings (``EvalConfig``),
the pool (models recorded on at least half the split; sparse ones named), and the prompts — every
prompt of the split either evaluated or skipped with its reason, which fails the run unless
``allow_partial``."""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Sequence

from xrouter.adapters.catalog import CatalogError, load_catalog
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.common.outcomes import FOLDS, read_outcomes, split_of

from xrouter_training.environment import Prompt
from xrouter_training.eval_baselines import placeholders_supported
from xrouter_training.trained_on import left_out_tasks, trained_on

# λ is in reward per dollar; a gpt-4-1106 call on RouterBench costs about $0.005, so λ from 0 to
# about 1000 spans "cost is irrelevant" to "one call costs as much as a correct answer is worth".
DEFAULT_LAMBDAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
BASELINES = ("cheapest", "cascade", "cascade:<cheap>,<cheap>[,<strong>]", "fixed:<model>", "random", "oracle", "knn")
LAMBDA_AWARE = ("knn", "oracle")
SPLITS = ("train", "validation", "all")


POOL_COVERAGE = 0.5  # default pool: models with a recorded outcome on at least half the split


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """One evaluation. ``policy`` is a baseline spec (see BASELINES) or a checkpoint directory."""

    data: pathlib.Path
    policy: str
    out: pathlib.Path
    split: str = "validation"
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    max_turns: int = 3
    catalog: pathlib.Path = DEFAULT_CATALOG
    models: tuple[str, ...] = ()  # the pool; empty: every catalog model the data recorded
    limit: int | None = None  # evaluate only the first N prompts of the split (smoke runs, tests)
    knn: bool = True
    knn_k: int | None = None  # None: chosen by leave-one-out on the train split
    seed: int = 0
    progress: bool = True
    allow_partial: bool = False  # evaluate the prompts every pool model can answer; list the rest as skipped
    source: str | None = None  # the bundled source's name (--source), for the report and the progress bar
    knn_train_limit: int | None = None  # fit kNN on the first N train prompts only (quick views); None: all
    fold: int = 0  # which fifth of the prompts is the validation split (outcomes.split_of; cross-validation)
    allow_seen: bool = False  # evaluate a checkpoint on validation prompts it trained on (trained_on.py)
    # Evaluate only these task families, with kNN fitted on the train split without them: how a
    # checkpoint trained with exclude_tasks routes a family that neither it nor kNN has seen.
    held_out_tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise EvalError(f"--split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if not self.lambdas or any(not 0 <= lam < float("inf") for lam in self.lambdas):
            raise EvalError(f"--lambdas: give one or more finite values >= 0, got {list(self.lambdas)}")
        if self.max_turns < 2:
            raise EvalError(f"--max-turns: every policy needs >= 2 turns (call, then select), got {self.max_turns}")
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit: must be >= 1, got {self.limit}")
        if self.knn_train_limit is not None and self.knn_train_limit < 1:
            raise EvalError(f"knn_train_limit: must be >= 1, got {self.knn_train_limit}")
        if not 0 <= self.fold < FOLDS:
            raise EvalError(f"--fold: {self.fold} is not in 0..{FOLDS - 1}")
        if self.knn_k is not None and self.knn_k < 1:
            raise EvalError(f"--knn-k: must be >= 1, got {self.knn_k}")
        for flag, path in (("--data", self.data), ("--catalog", self.catalog)):
            if not pathlib.Path(path).is_file():
                raise EvalError(f"{flag}: no file at {path}")
        if not self.is_checkpoint and not self.policy.startswith(("fixed:", "cascade:")) and self.policy not in BASELINES:
            raise EvalError(f"--policy: {self.policy!r} is neither a checkpoint directory nor a baseline "
                            f"({', '.join(BASELINES)})")
        if self.policy == "knn" and not self.knn:
            raise EvalError("--policy knn cannot run with --no-knn")
        # Flags that would have no effect are refused, not ignored.
        if not self.knn and self.knn_k is not None:
            raise EvalError("--knn-k: sets the kNN baseline's k, and --no-knn turns that baseline off")
        if self.split == "all" and self.fold != 0:
            raise EvalError(f"--fold {self.fold}: picks the validation fifth, and --split all evaluates every prompt")

    def in_split(self, prompt_id: str) -> bool:
        """Whether the prompt is in the evaluated split (of ``fold``)."""
        return self.split == "all" or split_of(prompt_id, self.fold) == self.split

    @property
    def is_checkpoint(self) -> bool:
        return pathlib.Path(self.policy).is_dir()


@dataclasses.dataclass
class DataScan:
    """One pass over an outcome set: its prompts and, per prompt, which models have a recorded
    outcome (a score) that the replay can answer."""

    prompts: dict[str, Prompt]  # prompt id → the first row's task and text (as the environment keeps)
    replayable: dict[str, set[str]]  # prompt id → models whose recorded outcome can be replayed
    textless: dict[str, set[str]]  # prompt id → models with a score but no response text
    models: set[str]  # models with at least one replayable outcome
    models_without_text: set[str]  # models with a score somewhere but no response text anywhere
    costless: int  # replayable rows without cost_usd (priced from the catalog)
    rows_without_text: int  # rows with a score but no response text
    graded: bool  # some score is strictly between 0 and 1


def scan_data(data: pathlib.Path) -> DataScan:
    """Read ``data`` once (EvalError naming the file when it is not an outcome set)."""
    placeholders = placeholders_supported()
    scan = DataScan({}, {}, {}, set(), set(), 0, 0, False)
    with_text: set[str] = set()
    textless_models: set[str] = set()
    try:
        for row in read_outcomes(data):
            scan.prompts.setdefault(row.prompt_id, Prompt(row.prompt_id, row.task, row.prompt))
            if row.score is None:
                continue
            scan.graded |= 0.0 < float(row.score) < 1.0
            (with_text if row.response is not None else textless_models).add(row.model)
            scan.rows_without_text += row.response is None
            if row.response is None and not placeholders:
                scan.textless.setdefault(row.prompt_id, set()).add(row.model)
                continue
            scan.replayable.setdefault(row.prompt_id, set()).add(row.model)
            scan.models.add(row.model)
            scan.costless += row.cost_usd is None
    except (OSError, ValueError, EOFError) as error:  # not gzip, or a line that is not an outcome row
        raise EvalError(f"--data: {error}") from None
    if not scan.prompts:
        raise EvalError(f"--data: {data} holds no outcome rows")
    scan.models_without_text = textless_models - with_text
    return scan


def choose_pool(config: EvalConfig, scan: DataScan | None = None) -> tuple[list[str], dict]:
    """The models every episode may call, and notes on what the data and catalog did not cover."""
    try:
        catalog = load_catalog(config.catalog)
    except CatalogError as error:
        raise EvalError(f"--catalog: {error}") from None
    scan = scan or scan_data(config.data)
    if not scan.models:
        raise EvalError(
            f"--data {config.data}: no row records a response (`response` is null on every row of "
            f"models {sorted(scan.models_without_text)}) and this xrouter cannot replay a placeholder for "
            "them (xrouter.common.outcomes has no placeholder_text); use an outcome set with responses")
    in_catalog = [m for m in catalog if m in scan.models]
    if not in_catalog:
        raise EvalError(
            f"--catalog {config.catalog}: none of the data's models {sorted(scan.models)} is in the catalog; "
            "pass --catalog FILE listing each as a replay model (backend: replay, dataset: <name>, "
            "input_usd_per_mtok, output_usd_per_mtok, ...)")
    # The default pool: models recorded on at least half the prompts of the split. A model recorded on a
    # handful (RouterArena's gpt-4o-mini: 3 of 809) would otherwise make nearly every prompt
    # unevaluable; it is named in the notes, and --models puts it back.
    split = [key for key in scan.prompts if config.in_split(key)]
    coverage = {m: sum(m in scan.replayable.get(key, ()) for key in split) / max(len(split), 1) for m in in_catalog}
    sparse = [m for m in in_catalog if coverage[m] < POOL_COVERAGE]
    pool = [m for m in in_catalog if m not in sparse] or in_catalog
    if config.models:
        unknown = [m for m in config.models if m not in in_catalog]
        if unknown:
            raise EvalError(f"--models: {unknown} are not catalog models the data recorded "
                            f"(choose from {in_catalog})")
        pool = [m for m in in_catalog if m in config.models]
    notes = {"data_models_not_in_catalog": sorted(scan.models - set(catalog)),
             "sparse_models_left_out_of_the_default_pool": {m: round(coverage[m], 4) for m in sparse}
             if not config.models else {},
             "data_models_without_responses": sorted(scan.models_without_text),
             "rows_replayed_as_placeholders": scan.rows_without_text if placeholders_supported() else 0,
             "scores": "graded (0..1)" if scan.graded else "binary (0/1)",
             "rows_priced_from_catalog": scan.costless}
    return pool, notes


def skip_reason(scan: DataScan, prompt_id: str, pool: Sequence[str]) -> str | None:
    """Why a prompt cannot be evaluated with ``pool`` (None: every pool model can be replayed on it)."""
    have = scan.replayable.get(prompt_id, set())
    missing = [m for m in pool if m not in have]
    if not missing:
        return None
    textless = [m for m in missing if m in scan.textless.get(prompt_id, set())]
    absent = [m for m in missing if m not in textless]
    reasons = []
    if absent:
        reasons.append(f"no recorded outcome for pool model{'s' if len(absent) > 1 else ''} {', '.join(absent)}")
    if textless:
        reasons.append(f"no response text (and no placeholder replay) for pool model"
                       f"{'s' if len(textless) > 1 else ''} {', '.join(textless)}")
    return "; ".join(reasons)


@dataclasses.dataclass(frozen=True)
class Selection:
    """The prompts to evaluate, and every other prompt of the split with why it is not evaluated."""

    prompts: list[Prompt]
    skipped: list[dict]  # {"prompt_id", "task", "reason"}
    split_prompts: int
    beyond_limit: int  # prompts of the split after the first --limit ones (not considered)

    def skipped_report(self) -> dict:
        by_reason = collections.Counter(s["reason"] for s in self.skipped)
        return {"count": len(self.skipped), "by_reason": dict(by_reason.most_common()), "prompts": self.skipped}


def choose_prompts(scan: DataScan, config: EvalConfig, pool: Sequence[str]) -> Selection:
    """The first ``limit`` prompts of the split; those some pool model cannot answer are skipped,
    which fails the evaluation (naming them) unless ``config.allow_partial``."""
    split = [p for key, p in sorted(scan.prompts.items())
             if config.in_split(key) and (not config.held_out_tasks or p.task in config.held_out_tasks)]
    considered = split[: config.limit]
    prompts, skipped = [], []
    for prompt in considered:
        reason = skip_reason(scan, prompt.prompt_id, pool)
        if reason is None:
            prompts.append(prompt)
        else:
            skipped.append({"prompt_id": prompt.prompt_id, "task": prompt.task, "reason": reason})
    selection = Selection(prompts, skipped, len(split), len(split) - len(considered))
    where = f"--split {config.split} of {config.data}"
    if not considered:
        raise EvalError(f"{where}: the split has no prompts")
    if skipped and (not config.allow_partial or not prompts):
        by_reason: dict[str, list[str]] = collections.defaultdict(list)
        for item in skipped:
            by_reason[item["reason"]].append(item["prompt_id"])
        ordered = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
        details = "; ".join(f"{len(ids)} with {reason} (e.g. {', '.join(ids[:3])})" for reason, ids in ordered[:5])
        more = f"; and {len(ordered) - 5} other reasons" if len(ordered) > 5 else ""
        if not prompts:
            raise EvalError(f"{where}: none of its {len(considered)} prompts can be evaluated with pool "
                            f"{list(pool)}: {details}{more}. Narrow the pool with --models")
        raise EvalError(f"{where}: {len(skipped)} of {len(considered)} prompts cannot be evaluated with pool "
                        f"{list(pool)}: {details}{more}. Pass --allow-partial to evaluate the other "
                        f"{len(prompts)} (the skipped ones are listed in report.json under `skipped`), "
                        "or narrow the pool with --models")
    return selection


def plan_evaluation(config: EvalConfig) -> tuple[list[str], dict, Selection]:
    """The pool, notes and prompts of one evaluation, checked before any episode is played."""
    scan = scan_data(config.data)
    pool, notes = choose_pool(config, scan)
    if config.held_out_tasks:
        notes["held_out_tasks"] = check_held_out_tasks(config, {p.task for p in scan.prompts.values()})
    selection = choose_prompts(scan, config, pool)
    if config.is_checkpoint:
        seen = trained_on(pathlib.Path(config.policy), config.data, selection.prompts)
        notes["subject_trained_on"] = seen.as_report()
        if config.split == "validation" and seen.by_split and not config.allow_seen:
            raise EvalError(
                f"--policy {config.policy}: {seen.describe()}. Its figures there would measure what it "
                f"memorised, not how it routes a new request: evaluate it with --fold {seen.fold} (the fifth "
                "it held out), or pass --allow-seen to run anyway (report.json records it under "
                "subject_trained_on)")
    return pool, notes, selection


def check_held_out_tasks(config: EvalConfig, tasks: set[str]) -> dict:
    """The held-out families must be the data's, and a checkpoint must not have trained on them (its
    manifest's exclude_tasks says which it left out); ``allow_seen`` evaluates it anyway, recorded."""
    unknown = sorted(set(config.held_out_tasks) - tasks)
    if unknown:
        raise EvalError(f"--held-out-tasks: {unknown} are not tasks of {config.data}; its tasks: {sorted(tasks)}")
    note: dict = {"tasks": list(config.held_out_tasks), "knn_fitted_without_them": config.knn}
    if config.is_checkpoint:
        from xrouter.common.errors import InvalidArgument
        from xrouter.router.compact.checkpoint import read_manifest

        try:
            excluded = read_manifest(pathlib.Path(config.policy)).get("config", {}).get("exclude_tasks", [])
        except InvalidArgument as error:
            raise EvalError(f"--policy {config.policy}: {error.message}") from None
        left_out = left_out_tasks(excluded, config.source)
        seen = [task for task in config.held_out_tasks if task not in left_out]
        note.update(checkpoint_excluded=list(excluded), checkpoint_trained_on=seen)
        if seen and not config.allow_seen:
            raise EvalError(f"--held-out-tasks: the checkpoint {config.policy} was trained on {seen} (its "
                            f"exclude_tasks: {list(excluded)}): its figures would not be for families it never "
                            "saw. Train it with exclude_tasks: [<source>/<task>], or pass --allow-seen")
    return note
