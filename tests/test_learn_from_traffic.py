"""``xrouter learn`` (training/xrouter_training/learn.py): verdicts from an export go into a copy of
the serving checkpoint's memory; the copy is published only if its off-policy value on the newest,
held-back traffic is not worse; a worse one never reaches the store.

The traffic: RouterBench prompts served to a three-model pool under uniform exploration (each
first call logged with probability 1/3), one of the models a newcomer the policy never trained
with — it answers as gpt-4 did but is priced like mistral-7b and described in one vague line."""

from __future__ import annotations

import json
import math
import pathlib
import random

import numpy as np
import pytest

from test_generalisation import tiny_bundle  # noqa: F401 - the fixture
from xrouter.common.outcomes import SOURCES, read_outcomes, split_of
from xrouter.metering.export import SCHEMA
from xrouter.router.compact.checkpoint import load_policy, read_manifest
from xrouter.router.policy import ModelOption
from xrouter_training.learn import learn, lessons
from xrouter_training.publish_rule import PUBLISH, UNPROVEN, WORSE, decide, off_policy_value

CHEAP, STRONG, NEWCOMER = "mistralai/mistral-7b-chat", "gpt-4-1106-preview", "acme/newcomer-7b"


def pool() -> list[ModelOption]:
    from xrouter.adapters.catalog import load_catalog

    specs = load_catalog(SOURCES["routerbench"].catalog)
    options = [ModelOption(s.id, float(s.input_usd_per_mtok), float(s.output_usd_per_mtok), s.description, s.tags,
                           s.context_tokens) for s in specs.values() if s.id in (CHEAP, STRONG)]
    cheap = next(o for o in options if o.id == CHEAP)
    return [*options, ModelOption(NEWCOMER, cheap.input_usd_per_mtok, cheap.output_usd_per_mtok,
                                  "A new 7B chat model.", (), cheap.context_tokens)]


def export(path: pathlib.Path, lie: bool = False, requests: int = 360, seed: int = 0) -> pathlib.Path:
    """An ``xrouter.episode/v1`` export of ``requests`` explored requests; ``lie``: in the oldest 80%,
    poisoned feedback says the newcomer is never right and gpt-4 always is."""
    scores, costs = {}, {}
    for row in read_outcomes(SOURCES["routerbench"].data):
        if split_of(row.prompt_id) == "train":
            scores.setdefault(row.prompt_id, {})[row.model] = row.score
            costs.setdefault(row.prompt_id, {})[row.model] = row.cost_usd
    ids = sorted(p for p in scores if {CHEAP, STRONG} <= set(scores[p]))
    rng = random.Random(seed)
    lines = []
    for n, prompt_id in enumerate(rng.sample(ids, requests)):
        model = rng.choice([CHEAP, STRONG, NEWCOMER])
        recorded = STRONG if model == NEWCOMER else model  # the newcomer answers as gpt-4 did ...
        cost = costs[prompt_id][CHEAP if model == NEWCOMER else model]  # ... at mistral's price
        verdict = scores[prompt_id][recorded]
        if lie and n < 0.8 * requests:
            verdict = {STRONG: 1.0, NEWCOMER: 0.0}.get(model, verdict)
        lines.append({"schema": SCHEMA, "request_id": f"s{seed}-r{n:04d}", "tenant": "acme",
                      "settled_at": f"2026-12-01T00:{n // 60:02d}:{n % 60:02d}Z", "outcome": "ok",
                      "cost_lambda": math.expm1(rng.uniform(0, math.log1p(1000))),
                      "prompt": {"dataset": "routerbench", "prompt_id": prompt_id}, "messages": None,
                      "calls": [{"index": 0, "model": model, "status": "ok"}], "cost_micro_usd": round(cost * 1e6),
                      "score": None, "feedback": {"score": verdict, "source": "user", "comment": "", "at": None},
                      "returned_call": {"index": 0, "model": model},
                      "exploration": {"epsilon": 1.0, "first_call_probability": 1 / 3, "first_call_explored": True}})
    lines.append({**lines[0], "request_id": "no-verdict", "feedback": None})
    lines.append({**lines[0], "request_id": "failed", "outcome": "error:UNAVAILABLE"})
    lines.append({**lines[0], "request_id": "no-text", "prompt": None})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_episodes_that_cannot_teach_are_counted_by_reason_never_dropped_silently(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xrouter_training.learn import read_episodes

    used, skipped = lessons(read_episodes(export(tmp_path / "e.jsonl", requests=20)))
    assert len(used) == 20
    assert {tuple(ids) for ids in skipped.values()} == {("no-verdict",), ("failed",), ("no-text",)}


def test_true_verdicts_teach_the_newcomer_and_the_candidate_is_published(tiny_bundle, tmp_path) -> None:  # noqa: F811
    from xrouter.cli import main

    episodes = export(tmp_path / "episodes.jsonl")
    store = tmp_path / "store"
    catalog = tmp_path / "catalog.yaml"
    _write_catalog(catalog)
    assert main(["learn", "--start", str(tiny_bundle), "--episodes", str(episodes), "--out", str(tmp_path / "out"),
                 "--catalog", str(catalog), "--store", str(store), "--min-matches", "10"]) == 0
    record = json.loads((tmp_path / "out" / "publish.json").read_text())
    assert record["learned_verdicts"] == 288 and record["held_out"] == 72
    assert record["candidate_value"]["value"] > record["serving"]["value"], record
    assert record["decision"] == "publish"
    candidate = tmp_path / "out" / "checkpoint"
    assert read_manifest(candidate)["learned_from_traffic"]["verdicts"] == 288
    assert (store / read_manifest(candidate)["version"] / "manifest.json").exists()  # copied, verified
    metric = (tmp_path / "out" / "learn.prom").read_text()
    assert "xrouter_learn_published 1" in metric and 'xrouter_learn_value{policy="candidate"}' in metric
    # The newcomer is now the cheap model's better replacement.
    learned = load_policy(candidate, pool())
    assert learned.memory.rows_of(NEWCOMER) > 50 and load_policy(tiny_bundle, pool()).memory.rows_of(NEWCOMER) == 0


def test_a_verdict_is_learned_once_when_export_windows_overlap(tiny_bundle, tmp_path) -> None:  # noqa: F811
    """The daily job exports the last 7 days and starts from the serving checkpoint, which already
    holds most of those verdicts: only the ones it does not hold are learned."""
    first = learn(tiny_bundle, export(tmp_path / "e.jsonl"), tmp_path / "first", pool(), min_matches=10)
    assert first["learned_verdicts"] == 288
    learned_once = load_policy(tmp_path / "first" / "checkpoint", pool()).memory
    # The same window again, from the first candidate: its 288 are skipped, the 72 it held back are learned.
    second = learn(tmp_path / "first" / "checkpoint", tmp_path / "e.jsonl", tmp_path / "second", pool(),
                   min_matches=10)
    assert second["skipped"]["already learned by the start checkpoint"]["count"] == 288
    assert second["learned_verdicts"] + second["held_out"] == 72
    learned_twice = load_policy(tmp_path / "second" / "checkpoint", pool()).memory
    assert len(learned_twice) == len(learned_once) + second["learned_verdicts"]
    assert len(json.loads((tmp_path / "second" / "checkpoint" / "learned_requests.json").read_text())
               ["request_ids"]) == 288 + second["learned_verdicts"]


def test_a_candidate_taught_a_falsehood_is_worse_and_never_reaches_the_store(tiny_bundle, tmp_path) -> None:  # noqa: F811
    """The serving policy has learned the newcomer from true verdicts; then poisoned feedback says it
    is never right. (Lies told to the untrained start cannot be shown worse: it is about as bad as
    always calling the cheap model, and the held-back verdicts score what is served, not the lie.)"""
    from xrouter.cli import main

    catalog = tmp_path / "catalog.yaml"
    _write_catalog(catalog)
    store = tmp_path / "store"
    assert main(["learn", "--start", str(tiny_bundle), "--episodes", str(export(tmp_path / "true.jsonl")),
                 "--out", str(tmp_path / "serving"), "--catalog", str(catalog), "--min-matches", "10"]) == 0
    serving = tmp_path / "serving" / "checkpoint"
    assert json.loads((tmp_path / "serving" / "publish.json").read_text())["decision"] == "publish"
    assert main(["learn", "--start", str(serving), "--episodes", str(export(tmp_path / "lies.jsonl", lie=True, seed=1)),
                 "--out", str(tmp_path / "out"), "--catalog", str(catalog), "--store", str(store),
                 "--min-matches", "10"]) == 0
    record = json.loads((tmp_path / "out" / "publish.json").read_text())
    assert record["decision"] == "worse: not published", record
    assert not store.exists()
    assert "xrouter_learn_published 0" in (tmp_path / "out" / "learn.prom").read_text()


def test_off_policy_value_weighs_matching_episodes_by_their_inverse_behaviour_probability(tiny_bundle, tmp_path) -> None:  # noqa: F811
    from xrouter_training.learn import Lesson

    policy = load_policy(tiny_bundle, pool())
    text = "What is 2 + 2? A) 3 B) 4"
    chosen = policy.decide_many([_state(text, 0.0)])[0].calls[0].model
    other = next(o.id for o in pool() if o.id != chosen)
    held = [Lesson("a", "1", text, chosen, chosen, 1.0, 0.0, 0.0, 0.5),
            Lesson("b", "2", text, chosen, chosen, 0.0, 0.0, 0.0, 0.25),
            Lesson("c", "3", text, other, other, 1.0, 0.0, 0.0, 0.5)]  # not the policy's call: no say
    value = off_policy_value(policy, pool(), held, clip=10.0)
    assert value["matches"] == 2 and value["value"] == pytest.approx((2 * 1.0 + 4 * 0.0) / 6)
    assert off_policy_value(policy, pool(), held, clip=2.0)["value"] == pytest.approx(0.5)  # both capped at 2


def test_a_candidate_that_only_looks_better_on_few_episodes_is_not_published() -> None:
    """Forty held-back episodes, each policy matching a different half: the candidate's value is
    0.05 higher (11 of 20 right against 10 of 20), which comparing the two values would publish;
    paired by the bootstrap, that is noise, so it is not shown to be within the margin."""
    serving, candidate = np.repeat([1.0, 0.0], 20), np.repeat([0.0, 1.0], 20)
    rewards = np.array([1.0] * 10 + [0.0] * 10 + [1.0] * 11 + [0.0] * 9)
    before, after, difference, decision = decide(serving, candidate, np.ones(40), rewards)
    assert after["value"] - before["value"] == pytest.approx(0.05)
    assert difference["lower_bound"] < -0.1 and decision == UNPROVEN
    # The same gap shown over many more episodes is evidence, and a clear loss is called worse.
    many = decide(np.tile(serving, 20), np.tile(candidate, 20), np.ones(800), np.tile(rewards, 20))
    assert many[3] == PUBLISH and many[2]["lower_bound"] > 0
    assert decide(candidate, serving, np.ones(800 // 20), rewards, min_matches=10)[3] != PUBLISH
    assert decide(np.tile(candidate, 20), np.tile(serving, 20), np.ones(800), np.tile(rewards, 20))[3] == WORSE


def test_a_candidate_that_changes_no_decision_is_published_on_any_evidence() -> None:
    """Identical matches: the difference is 0 in every resample, however noisy the rewards."""
    rng = np.random.default_rng(3)
    matched = (rng.random(30) < 0.7).astype(float)
    _, _, difference, decision = decide(matched, matched.copy(), rng.uniform(1, 10, 30), rng.random(30),
                                        min_matches=5)
    assert difference["lower_bound"] == 0.0 and difference["matched_by_one_only"] == 0 and decision == PUBLISH


@pytest.mark.parametrize("change, message", [
    (lambda e: {**e, "feedback": {**e["feedback"], "score": 1.5}}, r"line 1: feedback: score must be a number in \[0, 1\]"),
    (lambda e: {**e, "feedback": {**e["feedback"], "score": "good"}}, "feedback: score must be a number"),
    (lambda e: {**e, "cost_lambda": -1.0}, "line 1: cost_lambda must be a number >= 0"),
    (lambda e: {**e, "cost_micro_usd": -5}, "cost_micro_usd must be an integer >= 0"),
    (lambda e: {**e, "exploration": {**e["exploration"], "first_call_probability": 0}},
     r"exploration.first_call_probability must be in \(0, 1\]"),
    (lambda e: {k: v for k, v in e.items() if k != "request_id"}, "request_id must be a non-empty string"),
    (lambda e: {k: v for k, v in e.items() if k != "settled_at"}, "settled_at must be a non-empty string"),
    (lambda e: {**e, "calls": [[1, 2]]}, "calls must be a list of objects"),
    (lambda e: [1, 2], "line 1: not an xrouter.episode/v1 episode"),
])
def test_an_episode_the_export_would_never_write_is_refused_naming_line_and_field(tmp_path, change, message) -> None:  # type: ignore[no-untyped-def]
    """Each was learned as it was (a score of 1.5 reached the candidate's memory), or a traceback."""
    from xrouter_training.learn import read_episodes

    good = json.loads(export(tmp_path / "e.jsonl", requests=2).read_text().splitlines()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(change(good)) + "\n")
    with pytest.raises(ValueError, match=message) as error:
        read_episodes(path)
    assert str(error.value).startswith(f"{path}: ")


def test_an_unreadable_or_repeated_export_is_refused_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xrouter_training.learn import read_episodes

    lines = export(tmp_path / "e.jsonl", requests=3).read_text().splitlines()
    cases = {"dup.jsonl": (lines[0] + "\n" + lines[1] + "\n" + lines[0] + "\n", "line 3: request_id .* also on line 1"),
             "bad.jsonl": (lines[0] + "\n{nope\n", "line 2: not JSON"),
             "plain.jsonl.gz": (lines[0] + "\n", "unreadable"),
             "binary.jsonl": (None, "unreadable")}
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"\xff\xfe\x00garbage")
        else:
            path.write_text(text)
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            read_episodes(path)


@pytest.mark.parametrize("flags, message", [({"store": "FILE"}, "--store"), ({"routers": ["no-port"]}, "--router")])
def test_publishing_flags_are_checked_before_learning(tmp_path, flags, message) -> None:  # type: ignore[no-untyped-def]
    """They were read only when a candidate passed: a typo waited for the day it mattered."""
    from xrouter.common.errors import InvalidArgument
    from xrouter_training.learn import check_publish_flags

    (tmp_path / "FILE").write_text("")
    arguments = {"store": "", "routers": [], **flags}
    if arguments["store"] == "FILE":
        arguments["store"] = str(tmp_path / "FILE")
    with pytest.raises(InvalidArgument, match=message):
        check_publish_flags(arguments["store"], arguments["routers"])
    check_publish_flags(str(tmp_path / "store"), ["router-0.router:50051"])


def test_learn_cli_defaults_are_the_publish_rules() -> None:
    from xrouter.cli import build_parser
    from xrouter_training import publish_rule

    args = build_parser().parse_args(["learn", "--start", "s", "--episodes", "e", "--out", "o"])
    assert (args.hold_out, args.clip, args.min_matches, args.confidence, args.margin) == (
        publish_rule.HOLD_OUT, publish_rule.CLIP, publish_rule.MIN_MATCHES, publish_rule.CONFIDENCE,
        publish_rule.MARGIN)


@pytest.mark.parametrize("settings, message", [({"hold_out": 0.0}, "hold_out"), ({"hold_out": 1.0}, "hold_out"),
                                               ({"clip": 0.5}, "clip"), ({"clip": float("nan")}, "clip"),
                                               ({"confidence": 1.0}, "confidence"), ({"confidence": 0.2}, "confidence"),
                                               ({"margin": -0.1}, "margin"), ({"margin": float("inf")}, "margin")])
def test_bad_learn_settings_are_refused_naming_them(tiny_bundle, tmp_path, settings, message) -> None:  # noqa: F811
    with pytest.raises(ValueError, match=message):
        learn(tiny_bundle, export(tmp_path / "e.jsonl", requests=5), tmp_path / "out", pool(), **settings)
    assert not (tmp_path / "out").exists()


def _state(text: str, cost_lambda: float):  # type: ignore[no-untyped-def]
    from xrouter.router.policy import EpisodeState

    return EpisodeState([("user", text)], pool(), cost_lambda, None, 3, 0)


def _write_catalog(path: pathlib.Path) -> None:
    """The pool as a serving catalog (replay backend; the newcomer is only ever a logged verdict here)."""
    import yaml

    models = [{"id": o.id, "backend": "replay", "dataset": "routerbench", "input_usd_per_mtok": str(o.input_usd_per_mtok),
               "output_usd_per_mtok": str(o.output_usd_per_mtok), "context_tokens": o.context_tokens,
               "max_output_tokens": 4096, "description": o.description, "tags": list(o.tags)} for o in pool()]
    path.write_text(yaml.safe_dump({"models": models}))


def test_a_verdict_on_a_known_model_is_local_evidence_on_a_new_one_a_calibration(tiny_bundle) -> None:  # noqa: F811
    """Traffic of a new kind on a model the memory knows teaches where that model is right (local
    evidence); a model the memory holds no recorded row of can only be calibrated."""
    from xrouter.router.compact.memory import CALIBRATION, EVIDENCE, LOCAL_MEAN

    policy = load_policy(tiny_bundle, pool())
    memory = policy.memory
    text = "Translate into Klingon: the ledger balances."
    before = memory.features(policy.query_vector(text), "another text", [CHEAP, NEWCOMER])
    rows, known = len(memory), memory.recorded_rows_of(CHEAP)
    assert known > 0 and memory.recorded_rows_of(NEWCOMER) == 0
    for n in range(3):
        policy.record_verdicts(f"{text} ({n})", pool(), {CHEAP: 1.0, NEWCOMER: 1.0})
    assert len(memory) == rows + 6  # one row of local evidence, one of calibration, per request
    assert memory.recorded_rows_of(CHEAP) == known + 3 and memory.recorded_rows_of(NEWCOMER) == 0
    assert np.isnan(memory.residuals[:, memory.column[CHEAP]]).all()  # no residual: nothing calibrated
    assert (~np.isnan(memory.residuals[:, memory.column[NEWCOMER]])).sum() == 3
    after = memory.features(policy.query_vector(text), "another text", [CHEAP, NEWCOMER])
    assert after[0, EVIDENCE] > before[0, EVIDENCE] + 2 and after[0, LOCAL_MEAN] > before[0, LOCAL_MEAN]
    assert after[1, EVIDENCE] == before[1, EVIDENCE] == 0.0 and after[0, CALIBRATION] == 0.0
