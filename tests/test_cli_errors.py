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
])
def test_bad_input_is_one_line_and_status_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], names: str) -> None:
    file = tmp_path / "a-file"
    file.write_text("")
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
