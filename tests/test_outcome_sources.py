"""The bundled outcome sets: registry, files, catalogs, placeholders, preparation, validation."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import importlib.util
import json
import math
import pathlib

import pytest

from xrouter.adapters.backends.replay import ReplayBackend
from xrouter.adapters.catalog import load_catalog
from xrouter.common.outcomes import (SOURCES, Outcome, is_placeholder, placeholder_text, read_outcomes,
                                     source)
from xrouter.reward.verifiers import RecordedLabels

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("prepare_outcomes", REPO / "scripts" / "prepare_outcomes.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_rows(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def row(prompt_id: str = "p1", model: str = "m", **changes: object) -> dict:
    base = {"source": "t", "task": "t", "prompt_id": prompt_id, "prompt": f"question {prompt_id}", "gold": None,
            "model": model, "score": 1.0, "response": "A", "prompt_tokens": None, "completion_tokens": None,
            "cost_usd": 0.001}
    base.update(changes)
    return base


# --- registry and bundled files --------------------------------------------------------------------

def test_registry_names_the_four_sets() -> None:
    assert set(SOURCES) == {"routerbench", "llmrouter", "arena", "routerarena"}
    for name, entry in SOURCES.items():
        assert source(name) is entry and entry.name == name
        assert entry.data.name == f"{name}.jsonl.gz" and entry.catalog.name == f"catalog.{name}.yaml"
    with pytest.raises(ValueError, match="unknown outcome source 'nope'.*routerbench.*routerarena"):
        source("nope")


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_bundled_set_reads_priced_and_its_catalog_covers_it(name: str) -> None:
    entry = source(name)
    rows = list(read_outcomes(entry.data))
    assert rows and {r.source for r in rows} == {name}
    assert all(r.cost_usd is not None and math.isfinite(r.cost_usd) and r.cost_usd >= 0 for r in rows)
    assert all(0.0 <= r.score <= 1.0 for r in rows)
    recorded = {r.cost_estimated for r in rows}
    assert recorded == ({False} if name in {"routerbench", "routerarena"} else {True})
    catalog = load_catalog(entry.catalog)
    assert {r.model for r in rows} <= set(catalog)
    assert all(spec.backend == "replay" and spec.dataset == name and spec.description for spec in catalog.values())


def test_bundled_files_stay_small() -> None:
    assert sum(source(n).data.stat().st_size for n in SOURCES) < 8_000_000


# --- placeholders ----------------------------------------------------------------------------------

def test_placeholder_is_marked_and_unique() -> None:
    text = placeholder_text("p1", "m")
    assert is_placeholder(text) and "m" in text and "p1" in text
    assert text != placeholder_text("p1", "n") and text != placeholder_text("p2", "m")
    assert not is_placeholder("A") and not is_placeholder("") and not is_placeholder(None)


def test_placeholder_round_trip_through_replay_and_recorded_labels(tmp_path: pathlib.Path) -> None:
    path = write_rows(tmp_path / "set.jsonl.gz", [
        row("p1", "a", response="B", score=1.0, cost_usd=0.002),
        row("p1", "b", response=None, score=0.4, cost_usd=0.003, cost_estimated=True),
        row("p2", "b", response=None, score=0.7, cost_usd=0.0, prompt=json.dumps(["hello", "and now?"])),
    ])
    replay = ReplayBackend("t", path)
    labels = RecordedLabels.from_file(path, name="t")
    assert replay.models() == {"a", "b"}
    spec = next(iter(load_catalog(source("routerbench").catalog).values()))
    spec_b = dataclasses.replace(spec, id="b")
    reply = asyncio.run(replay.invoke(spec_b, [("user", "question p1")], 0.0, 1))
    assert is_placeholder(reply.text) and reply.text == placeholder_text("p1", "b")
    assert reply.cost_micro_usd == 3000 and reply.tokens_estimated and reply.finish_reason == "stop"
    assert labels.verdict("p1", reply.text).score == 0.4
    assert labels.verdict("p1", "B").score == 1.0
    # A multi-turn prompt (JSON list of turns) is found by its last turn too.
    second = asyncio.run(replay.invoke(spec_b, [("user", "and now?")], 0.0, 0))
    assert labels.verdict("p2", second.text).score == 0.7 and second.cost_micro_usd == 0


# --- preparation -----------------------------------------------------------------------------------

def _synthetic_shared(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir()
    bench = [row("rb1", "gpt-4-1106-preview", task="mbpp", response="def f(): pass", cost_usd=0.01),
             row("rb1", "claude-v1", task="mbpp", response="x", cost_usd=0.02),
             row("rb1", "claude-v2", task="mbpp", prompt="other text", cost_usd=0.02)]
    write_rows(folder / "routerbench.jsonl.gz", bench)
    arena_rows = [row("ra1", "gemini-2.0-flash-001", task="GSM8K", score=-0.03, prompt_tokens=10,
                      completion_tokens=90, cost_usd=0.00004),
                  row("ra1", "claude-3-haiku-20240307", task="GSM8K", prompt_tokens=10, completion_tokens=70,
                      cost_usd=0.00009)]
    write_rows(folder / "routerarena.jsonl.gz", arena_rows)
    chat = [row("c1", "gpt-4-0314", task="chat", prompt=json.dumps(["hi there"]), response=None, cost_usd=None),
            row("c1", "claude-2", task="chat", prompt=json.dumps(["hi there"]), response="hello " * 50,
                cost_usd=None),
            row("c1", "claude-2", task="chat", prompt=json.dumps(["hi there"]), response="hello " * 50,
                cost_usd=None)]
    write_rows(folder / "arena_bench_v1.jsonl.gz", chat)
    llm = [row("l1", "gemma-2-9b-it", task="train", prompt="Write a function to add.", response=None, cost_usd=None),
           row("l1", "gemma-2-9b-it", task="test", prompt="Write a function to add.", response=None,
               cost_usd=None, score=0.0),
           row("l2", "codegemma-7b", task="test", prompt="a, b, c, d, e, f", response=None, cost_usd=None)]
    write_rows(folder / "llmrouter.jsonl.gz", llm)
    for name in ("llmrouter.models.json", "prices.routerarena.json"):
        (folder / name).write_bytes(_real_shared_file(name))
    return folder


def _real_shared_file(name: str) -> bytes:
    real = REPO.parent / "shared" / "data" / name
    if real.exists():
        return real.read_bytes()
    if name == "prices.routerarena.json":
        return json.dumps({m: {"input_token_price_per_million": 1, "output_token_price_per_million": 2} for m in (
            "gpt-4-1106-preview", "gpt-3.5-turbo-1106", "gpt-3.5-turbo", "mistralai/mixtral-8x7b-instruct",
            "mistralai/mistral-7b-instruct", "gemini-2.0-flash-001", "claude-3-haiku-20240307")}).encode()
    return json.dumps({m: {"feature": f"{m} is a model. Priced.", "input_price": 0.2, "output_price": 0.2}
                       for m in ("gemma-2-9b-it", "codegemma-7b")}).encode()


def test_prepare_script_is_deterministic_on_synthetic_input(tmp_path: pathlib.Path) -> None:
    script = _load_script()
    shared = _synthetic_shared(tmp_path / "shared")
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert script.main(["--shared", str(shared), "--out", str(out)]) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outputs[0] == outputs[1]
    out = tmp_path / "a"
    assert set(outputs[0]) >= {"routerbench.jsonl.gz", "llmrouter.jsonl.gz", "arena.jsonl.gz",
                               "routerarena.jsonl.gz", "catalog.llmrouter.yaml", "catalog.arena.yaml",
                               "catalog.routerarena.yaml"}
    bench = list(read_outcomes(out / "routerbench.jsonl.gz"))
    assert {r.model for r in bench} == {"gpt-4-1106-preview", "claude-v1"}  # the odd prompt text dropped
    arena = {r.model: r for r in read_outcomes(out / "arena.jsonl.gz")}
    assert len(arena) == 2 and all(r.cost_estimated and r.cost_usd > 0 for r in arena.values())
    assert {r.source for r in arena.values()} == {"arena"}
    ra = {r.model: r for r in read_outcomes(out / "routerarena.jsonl.gz")}
    assert ra["gemini-2.0-flash-001"].score == 0.0 and not ra["gemini-2.0-flash-001"].cost_estimated
    llm = {(r.prompt_id, r.model): r for r in read_outcomes(out / "llmrouter.jsonl.gz")}
    assert llm[("l1", "gemma-2-9b-it")].score == 0.5 and llm[("l1", "gemma-2-9b-it")].task == "code"
    assert llm[("l2", "codegemma-7b")].task == "word-sort"
    assert all(r.cost_estimated and r.cost_usd > 0 for r in llm.values())
    with gzip.open(out / "arena.jsonl.gz", "rb") as handle:
        assert handle.read()  # a plain gzip stream
    assert outputs[0]["arena.jsonl.gz"][4:8] == b"\x00\x00\x00\x00"  # mtime 0 in the gzip header


def test_family_rule_on_typical_prompts() -> None:
    family = _load_script().family
    assert family("Q: There are 3 houses in a row, numbered 1 on the left") == "logic-puzzle"
    assert family("Tom has 3 apples.\nAfter careful thought, put you final answer in \\boxed{...}.") == "math-word"
    assert family("report, wheelbarrow, country, gas, dish, lake") == "word-sort"
    assert family('\n\ndef f(x):\n    """Return x."""\n') == "code"
    assert family("What is $\\frac{1}{4}\\%$ of 120?") == "math"
    assert family("who sings i've got to be me") == "open-qa"
    assert family("Which Bavarian town stages a wagner festival every July and August?") == "knowledge-qa"


# --- validation ------------------------------------------------------------------------------------

def _first_error(path: pathlib.Path) -> str:
    with pytest.raises(ValueError) as caught:
        list(read_outcomes(path))
    return str(caught.value)


def test_unreadable_files_name_the_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.jsonl.gz"
    assert str(missing) in _first_error(missing)
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text(json.dumps(row()) + "\n")
    message = _first_error(plain)
    assert str(plain) in message and "unreadable" in message
    truncated = tmp_path / "truncated.jsonl.gz"
    data = gzip.compress(("\n".join(json.dumps(row(f"p{i}")) for i in range(50)) + "\n").encode())
    truncated.write_bytes(data[: len(data) // 2])
    assert str(truncated) in _first_error(truncated)
    garbage = write_rows(tmp_path / "garbage.jsonl.gz", [row()])
    with gzip.open(garbage, "at") as handle:
        handle.write("{not json\n")
    assert f"{garbage}:2:" in _first_error(garbage)


@pytest.mark.parametrize(("bad", "field"), [
    ({"model": None}, "model"),
    ({"prompt_id": ""}, "prompt_id"),
    ({"score": None}, "score"),
    ({"score": -0.03}, "score"),
    ({"score": 1.5}, "score"),
    ({"score": float("nan")}, "score"),
    ({"score": "1"}, "score"),
    ({"cost_usd": -1.0}, "cost_usd"),
    ({"cost_usd": float("inf")}, "cost_usd"),
    ({"completion_tokens": -3}, "completion_tokens"),
    ({"cost_estimated": "yes"}, "cost_estimated"),
    ({"scroe": 1.0}, "scroe"),  # a misspelt field was read as absent
    ({"source": "another-set"}, "source"),  # one file is one source
])
def test_inconsistent_row_names_file_line_and_field(tmp_path: pathlib.Path, bad: dict, field: str) -> None:
    path = write_rows(tmp_path / "bad.jsonl.gz", [row("p0"), {**row("p1"), **bad}])
    message = _first_error(path)
    assert message.startswith(f"{path}:2: field {field!r}"), message


def test_duplicate_pair_and_conflicting_prompt_text_are_refused(tmp_path: pathlib.Path) -> None:
    twice = write_rows(tmp_path / "twice.jsonl.gz", [row("p1", "m"), row("p2", "m"), row("p1", "m")])
    assert _first_error(twice).startswith(f"{twice}:3: field 'model'")
    texts = write_rows(tmp_path / "texts.jsonl.gz", [row("p1", "m"), row("p1", "n", prompt="something else")])
    message = _first_error(texts)
    assert message.startswith(f"{texts}:2: field 'prompt'") and "line 1" in message


def test_valid_rows_come_back_as_outcomes(tmp_path: pathlib.Path) -> None:
    path = write_rows(tmp_path / "ok.jsonl.gz", [row("p1", "m", cost_usd=None), row("p1", "n", score=0)])
    rows = list(read_outcomes(path))
    assert [r.model for r in rows] == ["m", "n"] and isinstance(rows[0], Outcome)
    assert rows[0].cost_usd is None and rows[0].cost_estimated is False and rows[1].score == 0.0
