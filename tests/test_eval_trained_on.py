"""`xrouter eval` says which evaluated prompts the checkpoint under test trained on, and refuses to
call prompts of its own training split a validation result (training/xrouter_training/trained_on.py)."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from xrouter.common.outcomes import SOURCES, read_outcomes, split_of
from xrouter.router.policy_store import BUNDLED_POLICY
from xrouter_training.environment import Prompt
from xrouter_training.evaluate import EvalConfig, EvalError, run_evaluation
from xrouter_training.report import format_table
from xrouter_training.trained_on import trained_on

ARENA = SOURCES["arena"]


def arena_prompts() -> dict[str, Prompt]:
    prompts: dict[str, Prompt] = {}
    for row in read_outcomes(ARENA.data):
        prompts.setdefault(row.prompt_id, Prompt(row.prompt_id, row.task, row.prompt))
    return prompts


def config(out: pathlib.Path, **overrides: object) -> EvalConfig:
    settings = {"lambdas": (0.0,), "catalog": ARENA.catalog, "allow_partial": True, "knn": False,
                "progress": False, "limit": 6, **overrides}
    return EvalConfig(ARENA.data, str(BUNDLED_POLICY), out, **settings)  # type: ignore[arg-type]


def test_the_held_out_fifth_is_evaluated_and_the_report_says_nothing_was_seen(tmp_path: pathlib.Path) -> None:
    report = run_evaluation(config(tmp_path / "fold0"))
    seen = report["subject_trained_on"]
    assert seen["data_source"] == "arena" and seen["fold"] == 0 and "arena" in seen["sources"]
    assert seen["by_split"] == 0 and seen["in_memory"] == 0 and seen["evaluated"] == report["prompts"]
    assert "saw evaluated prompts" not in format_table(report)


def test_another_fold_of_the_checkpoints_own_training_prompts_is_refused_unless_asked(tmp_path: pathlib.Path) -> None:
    """The bundled checkpoint held out fold 0: fold 3's fifth is in its training split."""
    refused = tmp_path / "fold3"
    with pytest.raises(EvalError) as error:
        run_evaluation(config(refused, fold=3))
    message = str(error.value)
    assert "--fold 0" in message and "--allow-seen" in message and "in its training split" in message
    assert not refused.exists()  # refused before anything was written
    report = run_evaluation(config(tmp_path / "allowed", fold=3, allow_seen=True))
    seen = report["subject_trained_on"]
    assert seen["by_split"] == seen["evaluated"] == report["prompts"] > 0
    assert seen["in_memory"] == seen["evaluated"]  # the memory holds every training prompt's text
    assert f"{seen['by_split']} of {seen['evaluated']} are in its training split" in format_table(report)


def test_the_train_split_is_evaluated_as_asked_and_recorded(tmp_path: pathlib.Path) -> None:
    report = run_evaluation(config(tmp_path / "train", split="train"))
    assert report["subject_trained_on"]["by_split"] == report["prompts"]


def test_a_file_that_is_not_bundled_is_checked_by_text_against_the_memory(tmp_path: pathlib.Path) -> None:
    """An outcome file of other ids: the split says nothing about it, the memory knows the texts."""
    prompts = arena_prompts()
    trained = [p for p in prompts.values() if split_of(p.prompt_id, 0) == "train"][:4]
    held_out = [p for p in prompts.values() if split_of(p.prompt_id, 0) == "validation"][:3]
    copy = tmp_path / "renamed.jsonl.gz"
    wanted = {p.prompt_id for p in trained + held_out}
    with gzip.open(ARENA.data, "rt", encoding="utf-8") as source, gzip.open(copy, "wt", encoding="utf-8") as out:
        for line in source:
            row = json.loads(line)
            if row["prompt_id"] in wanted:
                out.write(json.dumps({**row, "prompt_id": "renamed-" + row["prompt_id"]}) + "\n")
    renamed = [Prompt("renamed-" + p.prompt_id, p.task, p.text) for p in trained + held_out]
    seen = trained_on(BUNDLED_POLICY, copy, renamed)
    assert seen.data_source is None and seen.by_split == 0
    assert seen.in_memory == len(trained)


def test_cli_flag_reaches_the_check(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xrouter import cli

    common = ["eval", "--source", "arena", "--policy", str(BUNDLED_POLICY), "--no-knn", "--fold", "2",
              "--allow-partial", "--limit", "3", "--lambdas", "0"]
    assert cli.main([*common, "--out", str(tmp_path / "a")]) == 2
    assert "--allow-seen" in capsys.readouterr().err
    assert cli.main([*common, "--allow-seen", "--out", str(tmp_path / "b")]) == 0
    report = json.loads((tmp_path / "b" / "arena" / "report.json").read_text())
    assert report["subject_trained_on"]["by_split"] == report["prompts"] and "--allow-seen" in report["command"]
    assert "saw evaluated prompts in training" in (tmp_path / "b" / "summary.md").read_text()
