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


@pytest.mark.parametrize("argv", [
    ["export-episodes", "--out", "{tmp}/e.jsonl"],
    ["keys", "list"],
])
def test_a_ledger_path_that_does_not_exist_is_refused_and_not_created(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    # SQLite creates the file it is asked to open: a typo in --url left an empty database behind
    missing = tmp_path / "no-such-ledger.db"
    assert cli.main([a.format(tmp=tmp_path) for a in argv] + ["--url", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err
    assert f"--url: no ledger at {missing}" in err and not missing.exists()
    assert cli.main(["db", "check", "--url", f"sqlite:///{missing}"]) == 1  # 1: "not at head", as an empty one
    assert "run `xrouter db upgrade`" in capsys.readouterr().err and not missing.exists()


@pytest.mark.parametrize("lambdas, names", [
    ("1,,100", "got '' in '1,,100'"), ("1,nan", "got 'nan'"), ("-1", "got '-1'"), ("2e6", "within [0, 1e+06]"),
    ("", "give one or more cost weights"),
])
def test_the_demo_refuses_a_lambda_list_it_cannot_route(capsys: pytest.CaptureFixture[str], lambdas: str,
                                                       names: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--lambdas", lambdas])
    assert exit_.value.code == 2 and "argument --lambdas" in (err := capsys.readouterr().err) and names in err


def test_eval_refuses_an_empty_item_of_its_lambda_list(tmp_path: pathlib.Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # it was skipped: `--lambdas 0,,100` evaluated two cost weights, not three
    assert cli.main(["eval", "--source", "arena", "--policy", "cascade", "--no-knn", "--lambdas", "0,,100",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--lambdas: each cost weight must be a finite number >= 0, got '' in '0,,100'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_lambda_list_is_read_with_commas_spaces_or_both() -> None:
    from xrouter.common.bounds import lambda_list

    assert lambda_list("0,10,100") == lambda_list("0 10 100") == lambda_list(["0", "10, 100"]) == (0.0, 10.0, 100.0)
    assert lambda_list("1 ,100") == (1.0, 100.0)
    for bad in ("0,100,", "inf", "x", "  "):
        with pytest.raises(ValueError, match="--lambdas"):
            lambda_list(bad)
