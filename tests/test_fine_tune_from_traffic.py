"""Learning from traffic by gradient steps (training/xrouter_training/fine_tune.py): the network's
own prediction moves toward the served verdicts, what the start knew is replayed beside them, the
memory's calibration is recomputed against the new network, and serving reads the new weights."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from test_generalisation import tiny_bundle  # noqa: F401 - the fixture
from test_learn_from_traffic import CHEAP, NEWCOMER, STRONG, pool
from xrouter.common.outcomes import SOURCES, read_outcomes, split_of
from xrouter.router.compact.batch import pad_decisions
from xrouter.router.compact.checkpoint import load_policy, read_manifest
from xrouter.router.compact.features import encode_state
from xrouter.router.policy import EpisodeState
from xrouter_training.fine_tune import Verdicts, fine_tune, replay_environment


def routerbench_prompts(split: str, count: int) -> list[str]:
    texts = dict.fromkeys(row.prompt for row in read_outcomes(SOURCES["routerbench"].data)
                          if split_of(row.prompt_id) == split)
    return list(texts)[:count]


def mean_prediction(policy, texts: list[str], model: str) -> float:  # type: ignore[no-untyped-def]
    option = next(o for o in pool() if o.id == model)
    return float(np.mean([policy.network_prediction(text, [option])[0] for text in texts]))


def test_fine_tuning_moves_the_prediction_toward_the_verdicts_on_prompts_never_served(tiny_bundle) -> None:  # noqa: F811
    """Served: the newcomer right and gpt-4 wrong on 40 RouterBench prompts; asked: 20 others."""
    policy = load_policy(tiny_bundle, pool())
    served, unseen = routerbench_prompts("train", 40), routerbench_prompts("validation", 20)
    before = {m: mean_prediction(policy, unseen, m) for m in (NEWCOMER, STRONG)}
    lessons = [Verdicts(text, {NEWCOMER: 1.0, STRONG: 0.0}) for text in served]
    replay = replay_environment(read_manifest(tiny_bundle))
    assert replay is not None  # the tiny bundle names its bundled sources
    report = asyncio.run(fine_tune(policy, lessons, pool(), replay, epochs=20, replay_prompts=60))
    after = {m: mean_prediction(policy, unseen, m) for m in (NEWCOMER, STRONG)}
    assert after[NEWCOMER] > before[NEWCOMER] + 0.05 and after[STRONG] < before[STRONG] - 0.05, (before, after)
    assert report["lessons"] == 40 and report["held_out_lessons"] == 8 and report["replayed_prompts"] == 60
    assert 1 <= report["best_epoch"] <= 20


def test_served_verdicts_calibrate_against_the_fine_tuned_network_not_the_old_one(tiny_bundle) -> None:  # noqa: F811
    policy = load_policy(tiny_bundle, pool())
    newcomer = [o for o in pool() if o.id == NEWCOMER]
    served = routerbench_prompts("train", 24)
    for text in served:  # recorded as a serving router would: residual = verdict − the prediction then
        policy.record_verdicts(text, pool(), {NEWCOMER: 1.0, CHEAP: 0.0})
    memory = policy.memory
    column = memory.column[NEWCOMER]
    stale = memory.residuals[:, column][~np.isnan(memory.residuals[:, column])].copy()
    report = asyncio.run(fine_tune(policy, [Verdicts(t, {NEWCOMER: 1.0, CHEAP: 0.0}) for t in served], pool(),
                                   None, epochs=6))
    assert report["recalibrated_verdicts"] == 24 and report["replayed_prompts"] == 0
    fresh = np.array([1.0 - policy.network_prediction(text, newcomer)[0] for text in served])
    stored = memory.residuals[:, column][~np.isnan(memory.residuals[:, column])]
    assert np.allclose(np.sort(stored), np.sort(fresh), atol=1e-3)  # (float32 residuals)
    assert stored.mean() < stale.mean() - 0.05  # the network learned most of the bias: less is left to calibrate
    assert np.isnan(memory.residuals[:, memory.column[CHEAP]]).all()  # CHEAP is known: local evidence, no residual


def test_serving_reads_the_fine_tuned_weights(tiny_bundle) -> None:  # noqa: F811
    """A loaded policy decides through an exported onnxruntime graph: after fine-tuning it must
    answer as the network now does, not as the weights it was exported with."""
    policy = load_policy(tiny_bundle, pool())
    served = routerbench_prompts("train", 12)
    asyncio.run(fine_tune(policy, [Verdicts(t, {NEWCOMER: 1.0}) for t in served], pool(), None, epochs=3))
    text = routerbench_prompts("validation", 1)[0]
    state = EpisodeState([("user", text)], pool(), 10.0, None, 3, 0)
    arrays = encode_state(state, policy.vocabulary, policy.lambda_top, policy.answer_checks,
                          policy.memory_features(text, [o.id for o in pool()]))
    batch = pad_decisions([policy.query_vector(text)], [arrays], [False], len(policy.vocabulary.tags),
                          [policy.descriptors(pool())])
    with torch.inference_mode():
        graph, torch_out = policy._forward(batch), batch.forward(policy.network)
    assert policy._graph is not None
    assert torch.allclose(graph["correct"], torch_out["correct"], atol=1e-4)


@pytest.mark.parametrize("lessons, epochs, message", [
    (1, 3, "at least two"),
    (4, 0, "at least one"),
])
def test_too_little_to_fine_tune_is_refused(tiny_bundle, lessons: int, epochs: int, message: str) -> None:  # noqa: F811
    policy = load_policy(tiny_bundle, pool())
    verdicts = [Verdicts(t, {CHEAP: 1.0}) for t in routerbench_prompts("train", lessons)]
    with pytest.raises(ValueError, match=message):
        asyncio.run(fine_tune(policy, verdicts, pool(), None, epochs=epochs))


def test_xrouter_learn_fine_tunes_the_candidate_and_writes_its_weights(tiny_bundle, tmp_path, monkeypatch) -> None:  # noqa: F811
    """The product path: ``xrouter learn --fine-tune-epochs`` writes a candidate whose weights are
    its own (hashed in its manifest, loadable), and whose network now favours the newcomer the
    verdicts praised."""
    from test_learn_from_traffic import _write_catalog, export
    from xrouter.cli import main
    from xrouter_training import fine_tune as module

    monkeypatch.setattr(module, "REPLAY_PROMPTS", 50)  # the start's own data, replayed: a small sample here
    catalog = tmp_path / "catalog.yaml"
    _write_catalog(catalog)
    episodes = export(tmp_path / "episodes.jsonl")
    assert main(["learn", "--start", str(tiny_bundle), "--episodes", str(episodes),
                 "--out", str(tmp_path / "out"), "--catalog", str(catalog), "--min-matches", "10",
                 "--fine-tune-epochs", "40"]) == 0
    record = json.loads((tmp_path / "out" / "publish.json").read_text())
    assert record["fine_tuned"]["lessons"] == 288 and record["fine_tuned"]["replayed_prompts"] == 50
    candidate = tmp_path / "out" / "checkpoint"
    manifest, start = read_manifest(candidate), read_manifest(tiny_bundle)
    assert manifest["sha256"]["policy.safetensors"] != start["sha256"]["policy.safetensors"]
    assert manifest["learned_from_traffic"]["fine_tuned"]["epochs"] == 40
    # Saved as served: the newcomer's residuals (it is only calibrated) were measured against the
    # fine-tuned weights the candidate holds, not the start's (float16 in memory.npz).
    learned = load_policy(candidate, pool())
    assert record["fine_tuned"]["recalibrated_verdicts"] == learned.memory.rows_of(NEWCOMER) > 50
    column = learned.memory.column[NEWCOMER]
    judged = np.flatnonzero(~np.isnan(learned.memory.residuals[:, column]))
    lessons = {json.loads(line)["request_id"]: json.loads(line) for line in episodes.read_text().splitlines()}
    texts = {row.prompt_id: row.prompt for row in read_outcomes(SOURCES["routerbench"].data)}
    newcomer = [o for o in pool() if o.id == NEWCOMER]
    learned_ids = json.loads((candidate / "learned_requests.json").read_text())["request_ids"]
    judged_texts = [(e["feedback"]["score"], texts[e["prompt"]["prompt_id"]]) for e in lessons.values()
                    if e["returned_call"]["model"] == NEWCOMER and e["request_id"] in learned_ids]
    expected = sorted(verdict - learned.network_prediction(text, newcomer)[0] for verdict, text in judged_texts)
    assert np.allclose(sorted(learned.memory.residuals[judged, column]), expected, atol=2e-2)


def test_learn_records_too_few_verdicts_to_fine_tune_instead_of_skipping_silently(tiny_bundle, tmp_path) -> None:  # noqa: F811
    from test_learn_from_traffic import export
    from xrouter_training.learn import learn

    episodes = export(tmp_path / "episodes.jsonl", requests=2)
    record = learn(tiny_bundle, episodes, tmp_path / "out", pool(), fine_tune_epochs=5)
    assert record["fine_tuned"] == {"skipped": "1 verdict(s) to learn: fine-tuning needs at least two"}
    assert read_manifest(tmp_path / "out" / "checkpoint")["sha256"]["policy.safetensors"] == \
        read_manifest(tiny_bundle)["sha256"]["policy.safetensors"]


@pytest.mark.parametrize("publish_gate", [False, True])
def test_the_simulation_fine_tunes_with_and_without_the_publish_gate(tiny_bundle, tmp_path, monkeypatch,  # noqa: F811
                                                                     publish_gate: bool) -> None:
    from xrouter_training import fine_tune as module
    from xrouter_training.traffic import run

    monkeypatch.setattr(module, "REPLAY_PROMPTS", 20)
    report = run(tiny_bundle, None, "arena", tmp_path, requests=8, every=4, epsilon=0.5, seed=1,
                 publish_gate=publish_gate, fine_tune_epochs=3, fine_tune_every=4)
    assert [row["requests"] for row in report["curve"]] == [0, 4, 8]
    assert [f["requests"] for f in report["fine_tunes"]] == [4, 8]  # every candidate (gate) or every 4 requests
    assert all(f["replayed_prompts"] == 20 and f["epochs"] == 3 for f in report["fine_tunes"])
    saved = json.loads((tmp_path / "traffic_learning.json").read_text())
    assert saved["verdicts"] == "returned" and saved["fine_tune_epochs"] == 3


@pytest.mark.parametrize("flags", [["--fine-tune-every", "50"],
                                   ["--fine-tune-epochs", "5", "--fine-tune-every", "50", "--publish-gate"]])
def test_a_fine_tune_interval_that_would_be_ignored_is_refused(tmp_path, capsys, flags) -> None:  # type: ignore[no-untyped-def]
    from xrouter.cli import main

    code = main(["learn-sim", "--start", str(tmp_path), "--source", "llmrouter", "--out", str(tmp_path / "o"), *flags])
    assert code == 2 and "--fine-tune-every" in capsys.readouterr().err
