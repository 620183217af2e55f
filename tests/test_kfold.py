"""Cross-validation folds (outcomes.split_of) and the pooled evaluation (training/xrouter_training/kfold.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import pytest

from xrouter.common.outcomes import FOLDS, SOURCES, VALIDATION_SHARE, read_outcomes, split_of
from xrouter.router.policy_store import BUNDLED_POLICY
from xrouter_training import kfold
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.evaluate import EvalConfig, EvalError
from xrouter_training.evaluate_sources import run_sources

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_folds_partition_the_prompts_and_fold_0_is_the_default_split() -> None:
    ids = [f"prompt-{i}" for i in range(5000)]
    held_out = {fold: {p for p in ids if split_of(p, fold) == "validation"} for fold in range(FOLDS)}
    assert sum(len(part) for part in held_out.values()) == len(ids)  # every prompt in exactly one fold
    assert set().union(*held_out.values()) == set(ids)
    assert all(abs(len(part) / len(ids) - VALIDATION_SHARE) < 0.03 for part in held_out.values())
    # Fold 0 is the split every checkpoint before folds was trained and evaluated on.
    for p in ids:
        bucket = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") / 2**64
        assert (split_of(p) == "validation") == (bucket < VALIDATION_SHARE) == (split_of(p, 0) == "validation")
    with pytest.raises(ValueError, match="fold"):
        split_of("x", FOLDS)


def test_a_fold_out_of_range_is_refused_naming_the_field(tmp_path: pathlib.Path) -> None:
    with pytest.raises(EvalError, match="fold"):
        EvalConfig(SOURCES["arena"].data, "cascade", tmp_path, catalog=SOURCES["arena"].catalog, fold=-1)
    config = TrainConfig.from_file(ROOT / "training" / "configs" / "mixed-tiny.yaml")
    with pytest.raises(ConfigError, match="validation_fold"):
        dataclasses.replace(config, validation_fold=FOLDS)


def test_folds_pool_into_one_report_where_every_prompt_is_held_out_once(tmp_path: pathlib.Path) -> None:
    """Two folds of Arena-Hard, each evaluated with its own held-out fifth (the bundled checkpoint
    stands in for each fold's training): the pooled report holds the union of the two fifths, every
    prompt once, and its figures are recomputed from the pooled decisions."""
    config = dataclasses.replace(TrainConfig.from_file(ROOT / "training" / "configs" / "mixed-tiny.yaml"),
                                 sources=("arena",))
    trained: list[int] = []

    def train(fold_config: TrainConfig, out: pathlib.Path) -> pathlib.Path:
        trained.append(fold_config.validation_fold)
        return BUNDLED_POLICY

    def evaluate(checkpoint: pathlib.Path, out: pathlib.Path, sources: list[str], lambdas: tuple[float, ...],
                 fold: int) -> dict:
        one = EvalConfig(SOURCES["arena"].data, str(checkpoint), out, lambdas=lambdas, catalog=SOURCES["arena"].catalog,
                         allow_partial=True, knn=False, progress=False, fold=fold,
                         allow_seen=True)  # the bundled checkpoint stands in for fold 1 too
        return run_sources(one, sources)[0]

    pooled = kfold.cross_validate(config, tmp_path, (0.0, 1000.0), train, evaluate, folds=(0, 1))
    assert trained == [0, 1]
    report = pooled["arena"]
    fifths = []
    for fold in (0, 1):
        lines = (tmp_path / f"fold-{fold}" / "eval" / "arena" / "decisions.jsonl").read_text().splitlines()
        fifths.append({json.loads(line)["prompt_id"] for line in lines})
        assert all(split_of(p, fold) == "validation" for p in fifths[-1])
    assert not fifths[0] & fifths[1] and report["prompts"] == len(fifths[0] | fifths[1])
    scores = {}
    for row in read_outcomes(SOURCES["arena"].data):
        if row.model == "gpt-4-1106-preview":
            scores[row.prompt_id] = row.score
    single = next(r for r in report["runs"] if r["policy"] == "fixed:gpt-4-1106-preview")
    assert single["accuracy"] == pytest.approx(sum(scores[p] for p in fifths[0] | fifths[1]) / report["prompts"])
    assert {r["policy"] for r in report["runs"]} >= {"learned", "cascade"}
    assert report["apgr_margin"]["cascade"]["prompts"] == report["prompts"]
    assert (tmp_path / "kfold" / "arena" / "report.json").is_file() and (tmp_path / "kfold" / "arena" / "frontier.png").is_file()
    row = kfold.rows(pooled)["arena"]
    assert set(row["per_fold"]) == {0, 1} and row["apgr"]["learned"] == report["metrics"]["learned"]["apgr"]


def test_a_reused_fold_checkpoint_trained_with_another_config_is_refused() -> None:
    tiny = TrainConfig.from_file(ROOT / "training" / "configs" / "mixed-tiny.yaml")
    with pytest.raises(ConfigError, match="--fold0"):
        kfold.check_trained_with(BUNDLED_POLICY, tiny)
    kfold.check_trained_with(BUNDLED_POLICY, TrainConfig.from_file(ROOT / "training" / "configs" / "mixed.yaml"))


def test_xrouter_eval_evaluates_the_fold_it_is_given_and_refuses_one_out_of_range(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xrouter import cli

    assert cli.main(["eval", "--source", "arena", "--policy", "cascade", "--no-knn", "--fold", "3",
                     "--allow-partial", "--lambdas", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "arena" / "report.json").read_text())
    assert report["fold"] == 3 and "--fold 3" in report["command"]
    played = {json.loads(line)["prompt_id"] for line in (tmp_path / "arena" / "decisions.jsonl").read_text().splitlines()}
    assert played and all(split_of(p, 3) == "validation" for p in played)
    capsys.readouterr()
    assert cli.main(["eval", "--source", "arena", "--policy", "cascade", "--fold", "5", "--out", str(tmp_path)]) == 2
    assert "--fold: 5 is not in 0..4" in capsys.readouterr().err
