"""Leaving a task family out: training without it (``exclude_tasks``), evaluating on it beside a kNN
that has not seen it either (``xrouter eval --held-out-tasks``), and both in one command
(``xrouter generalise --lotf``): how the router routes a kind of request it never saw."""

from __future__ import annotations

import json
import pathlib

import pytest

from xrouter.cli import main
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import MixedEnvironment
from xrouter_training.train import build_environment

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "training" / "configs"


@pytest.mark.parametrize(("settings", "message"), [
    ({"sources": ("arena",), "exclude_tasks": ("arena",)}, "'arena' is not <source>/<task>"),
    ({"sources": ("arena",), "exclude_tasks": ("llmrouter/math",)}, "with a source of sources"),
    ({"exclude_tasks": ("llmrouter/math",)}, "it needs sources"),
    ({"sources": ("arena",), "exclude_tasks": ("arena/chat", "arena/chat")}, "names a task twice"),
])
def test_a_task_family_to_leave_out_is_named_as_source_and_task(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


def test_a_task_family_its_source_lacks_is_refused_with_the_sources_tasks() -> None:
    with pytest.raises(ConfigError, match=r"arena has no task 'nope'; its tasks: \['chat'\]"):
        build_environment(TrainConfig(sources=("arena",), exclude_tasks=("arena/nope",)))


def test_a_config_file_giving_one_family_as_text_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sources: [llmrouter]\nexclude_tasks: llmrouter/math\n")
    with pytest.raises(ConfigError, match="exclude_tasks='llmrouter/math' is not a list of <source>/<task> names"):
        TrainConfig.from_file(path)


def test_a_left_out_family_is_in_no_split_and_the_others_are_kept() -> None:
    full = MixedEnvironment(["routerbench"])
    without = MixedEnvironment(["routerbench"], exclude_tasks=["routerbench/mbpp"])
    assert without.tasks["routerbench"] == {"arc-challenge", "winogrande", "mbpp"}
    assert not [p for p in without.split("all") if p.task == "mbpp"]
    assert {p.prompt_id for p in without.split("all")} == {p.prompt_id for p in full.split("all") if p.task != "mbpp"}


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny mixed config trained without RouterBench's MBPP and evaluated on every MBPP prompt."""
    out = tmp_path_factory.mktemp("lotf")
    assert main(["generalise", "--config", str(CONFIGS / "mixed-tiny.yaml"), "--out", str(out),
                 "--lotf", "routerbench/mbpp"]) == 0
    return out


def test_leave_one_task_family_out_trains_without_it_and_evaluates_every_prompt_of_it(
        held_out_run: pathlib.Path) -> None:
    run = held_out_run / "without-task-routerbench-mbpp"
    manifest = json.loads((run / "checkpoint" / "manifest.json").read_text())
    assert manifest["config"]["exclude_tasks"] == ["routerbench/mbpp"]
    assert manifest["data"]["exclude_tasks"] == ["routerbench/mbpp"]
    report = json.loads((run / "eval" / "routerbench" / "report.json").read_text())
    # every MBPP prompt, none of another task; neither the checkpoint nor kNN has seen one
    assert report["split"] == "all" and report["prompts"] == 289 and set(report["per_task"]) == {"mbpp"}
    assert report["held_out_tasks"]["checkpoint_trained_on"] == [] and report["subject_trained_on"]["by_split"] == 0
    assert report["knn"]["trained_on"] == "train split without the tasks ['mbpp']"
    assert not report["knn_sees_evaluated_prompts"]
    summary = json.loads((held_out_run / "generalisation.json").read_text())["leave_one_task_family_out"]
    row = summary["routerbench/mbpp"]
    assert row["prompts"] == 289 and {"learned, never saw this family", "knn", "oracle"} <= set(row)
    assert row["margin_over_knn"]["prompts"] == 289
    assert "| routerbench/mbpp (289) |" in (held_out_run / "generalisation.md").read_text()


def test_the_knn_baseline_is_fitted_without_the_held_out_family(held_out_run: pathlib.Path,
                                                                tmp_path: pathlib.Path) -> None:
    checkpoint = held_out_run / "without-task-routerbench-mbpp" / "checkpoint"
    assert main(["eval", "--source", "routerbench", "--policy", str(checkpoint), "--split", "all",
                 "--held-out-tasks", "mbpp", "--lambdas", "0", "--limit", "20", "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "--source", "routerbench", "--policy", "cascade", "--split", "all",
                 "--lambdas", "0", "--limit", "20", "--out", str(tmp_path / "b")]) == 0
    held_out = json.loads((tmp_path / "a" / "routerbench" / "report.json").read_text())["knn"]["train_prompts"]
    everything = json.loads((tmp_path / "b" / "routerbench" / "report.json").read_text())["knn"]["train_prompts"]
    mbpp_train = sum(p.task == "mbpp" for p in MixedEnvironment(["routerbench"]).split("train"))
    assert mbpp_train > 100 and held_out == everything - mbpp_train


def test_a_checkpoint_that_trained_on_the_family_is_refused_unless_allowed(held_out_run: pathlib.Path,
                                                                            tmp_path: pathlib.Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = held_out_run / "without-task-routerbench-mbpp" / "checkpoint"
    args = ["eval", "--source", "routerbench", "--policy", str(checkpoint), "--held-out-tasks", "winogrande",
            "--lambdas", "0", "--limit", "5", "--no-knn", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "the checkpoint" in (err := capsys.readouterr().err) and "was trained on ['winogrande']" in err
    assert not (tmp_path / "o").exists()
    assert main([*args, "--allow-seen"]) == 0
    note = json.loads((tmp_path / "o" / "routerbench" / "report.json").read_text())["held_out_tasks"]
    assert note["checkpoint_trained_on"] == ["winogrande"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--source", "routerbench", "--held-out-tasks", "nope"], "--held-out-tasks: ['nope'] are not tasks of"),
    (["--source", "routerbench", "--held-out-tasks", "mbpp,"], "--held-out-tasks: an empty task name"),
    (["--source", "all", "--held-out-tasks", "mbpp"], "names task families of one source"),
])
def test_held_out_tasks_that_cannot_be_evaluated_are_refused(argv: list[str], message: str, tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", *argv, "--policy", "cascade", "--no-knn", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_a_family_to_leave_out_is_checked_before_any_training(tmp_path: pathlib.Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    assert main(["generalise", "--config", str(CONFIGS / "mixed-tiny.yaml"), "--out", str(out), "--loso",
                 "--lotf", "routerbench/nope"]) == 2
    assert "--lotf: routerbench has no task 'nope'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_learning_a_new_family_from_traffic_serves_and_evaluates_only_that_family(held_out_run: pathlib.Path,
                                                                                  tmp_path: pathlib.Path) -> None:
    from xrouter_training.traffic import run

    start = held_out_run / "without-task-routerbench-mbpp" / "checkpoint"
    report = run(start, None, "routerbench", tmp_path, requests=6, every=3, epsilon=0.5, seed=1, task="mbpp")
    env = MixedEnvironment(["routerbench"])
    mbpp_validation = sum(p.task == "mbpp" and len(env.answered[p.prompt_id]) == len(env.options)
                          for p in env.split("validation"))
    assert report["task"] == "mbpp" and report["traffic"] == 6 and report["validation_prompts"] == mbpp_validation
    assert [row["requests"] for row in report["curve"]] == [0, 3, 6]
    with pytest.raises(ValueError, match="no prompt of 'nope'"):
        run(start, None, "routerbench", tmp_path, requests=6, every=3, task="nope")


def test_learn_sim_refuses_a_task_its_source_lacks_before_simulating(tmp_path: pathlib.Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learn-sim", "--start", str(tmp_path), "--source", "arena", "--task", "mbpp",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--task: arena has no task 'mbpp'; its tasks: ['chat']" in capsys.readouterr().err
