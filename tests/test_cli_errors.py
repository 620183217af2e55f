"""The command line names what its input or environment got wrong in one line and exits 2 (each
case here was a Python traceback with status 1, found by probing the CLI on 2026-12-07)."""

from __future__ import annotations

import pathlib

import pytest

from xrouter import cli


@pytest.mark.parametrize("argv, names", [
    (["eval", "--source", "arena", "--policy", "cascade", "--no-knn", "--limit", "2", "--allow-partial",
      "--lambdas", "0", "--out", "{file}/x"], "Not a directory"),
    (["export-episodes", "--url", "garbage://", "--out", "{tmp}/e.jsonl"], "garbage"),
    (["db", "upgrade", "--url", "sqlite:///{tmp}/x.db", "--revision", "zzzz"], "zzzz"),
    (["db", "check", "--url", "sqlite:///{file}"], "file is not a database"),  # {file}: text, not SQLite
    # learn-sim checked its source and checkpoints only after minutes of simulation
    (["learn-sim", "--start", "{tmp}", "--source", "nosuch", "--out", "{tmp}/o"], "--source: 'nosuch'"),
    (["learn-sim", "--start", "{tmp}/none", "--source", "llmrouter", "--out", "{tmp}/o"], "--start: "),
])
def test_bad_input_is_one_line_and_status_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], names: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a database, not a checkpoint" * 100)
    argv = [a.format(file=file, tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xrouter {argv[0]}: ") and names in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_lookback_past_year_1_is_refused_by_the_parser(tmp_path: pathlib.Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export-episodes", "--url", f"sqlite:///{tmp_path}/x.db", "--since", "99999999999d",
                  "--out", str(tmp_path / "e.jsonl")])
    assert exit_.value.code == 2 and "reaches back before year 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval", "--source", "arena", "--policy", "cascade"],
                                     ["train", "--config", "c.yaml"], ["learn-sim", "--start", "s", "--source", "arena"]])
def test_an_empty_out_folder_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """--out "" wrote the results into the current directory."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--out", ""])
    assert exit_.value.code == 2 and "argument --out: must name a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["learn-sim", "--start", "s", "--source", "llmrouter", "--out", "o", "--requests", "0"], "--requests"),
    (["learn-sim", "--start", "s", "--source", "llmrouter", "--out", "o", "--every", "0"], "--every"),
    (["learn-sim", "--start", "s", "--source", "llmrouter", "--out", "o", "--epsilon", "nan"], "--epsilon"),
    (["learn", "--start", "s", "--episodes", "e", "--out", "o", "--min-matches", "-1"], "--min-matches"),
    (["learn", "--start", "s", "--episodes", "e", "--out", "o", "--hold-out", "1"], "--hold-out"),
])
def test_numbers_out_of_range_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                        flag: str) -> None:
    """--min-matches -1 divided by zero after writing half a checkpoint; --requests 0 ran 83 s for
    nothing; --every 0 divided by zero after 85 s."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("corrupt, names", [
    (lambda d: (d / "manifest.json").write_text("[1, 2]"), "must be a JSON object"),
    (lambda d: (d / "memory.npz").write_bytes(b"garbage" * 100), "unreadable outcome memory"),
])
def test_a_corrupted_checkpoint_is_named_not_a_traceback(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                                         corrupt, names: str) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from xrouter.router.policy_store import BUNDLED_POLICY

    policy = tmp_path / "policy"
    shutil.copytree(BUNDLED_POLICY, policy)
    corrupt(policy)
    code = cli.main(["eval", "--source", "routerbench", "--policy", str(policy), "--no-knn", "--limit", "2",
                     "--lambdas", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and names in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.json"))


@pytest.mark.parametrize("flags", [["--to", "20261207000000-s0"], ["--store", "/tmp/store"]])
def test_rollback_refuses_half_of_store_and_to(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    """--to without --store (or the reverse) beside --router was ignored."""
    assert cli.main(["rollback", "--router", "127.0.0.1:1", *flags]) == 2
    assert "--store and --to go together" in capsys.readouterr().err
