"""`xrouter eval` never drops a prompt silently, evaluates bundled sources each on its own pool with a
summary, and reports CPT(50%/80%) and per-task metrics that hold for graded (0..1) scores. All on
tiny synthetic outcome sets and catalogs written to tmp_path."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
import zlib

import numpy as np
import pytest

from xrouter import cli
from xrouter.common.outcomes import split_of
from xrouter_training import evaluate_sources
from xrouter_training.eval_baselines import encoder_embedder, placeholders_supported
from xrouter_training.evaluate import EvalConfig, EvalError, run_evaluation
from xrouter_training.evaluate_sources import run_sources
from xrouter_training.report import build_report

COSTS = {"cheap": 0.0001, "mid": 0.001, "dear": 0.01}


@dataclasses.dataclass(frozen=True)
class Source:
    """What ``xrouter.common.outcomes.SOURCES`` maps a name to."""

    name: str
    data: pathlib.Path
    catalog: pathlib.Path


class HashingEncoder:
    """Hashed character trigrams, L2-normalised (a stand-in for the compact policy's encoder)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 32), dtype=np.float32)
        for row, text in enumerate(texts):
            for i in range(len(text) - 2):
                vectors[row, zlib.crc32(text[i:i + 3].encode()) % 32] += 1.0
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def ids(prefix: str, validation: int, train: int) -> list[str]:
    """Prompt ids with exactly this many of each split (the split is a hash of the id)."""
    chosen, counts, i = [], {"validation": 0, "train": 0}, 0
    wanted = {"validation": validation, "train": train}
    while counts != wanted:
        pid, i = f"{prefix}-{i}", i + 1
        side = split_of(pid)
        if counts[side] < wanted[side]:
            chosen.append(pid)
            counts[side] += 1
    return chosen


def score_of(model: str, n: int, graded: bool) -> float:
    """dear is right more often than mid, mid more than cheap; graded scores are fractions."""
    right = {"cheap": n % 3 == 0, "mid": n % 3 != 2, "dear": n % 5 != 4}[model]
    return (0.25 + 0.5 * right + 0.05 * (n % 4)) if graded else float(right)


def make_source(tmp: pathlib.Path, name: str, validation: int = 8, train: int = 12, graded: bool = False,
                missing: dict[str, set[int]] | None = None, texts: bool = True) -> Source:
    """An outcome set and its catalog; models are `<name>/cheap|mid|dear`. ``missing`` drops the rows
    of a model (short name) for the prompts at those positions among the validation ids."""
    tmp.mkdir(parents=True, exist_ok=True)
    prompts = ids(name, validation, train)
    validation_ids = [p for p in prompts if split_of(p) == "validation"]
    rows = []
    for n, pid in enumerate(prompts):
        for short, cost in COSTS.items():
            if short in (missing or {}) and pid in {validation_ids[i] for i in missing[short]}:
                continue
            rows.append({"source": name, "task": "alpha" if n % 2 else "beta", "prompt_id": pid,
                         "prompt": f"question {n} about {'fruit' if n % 2 else 'zebras'} ({name})", "gold": None,
                         "model": f"{name}/{short}", "score": score_of(short, n, graded),
                         "response": f"answer {n} from {short}" if texts else None,
                         "prompt_tokens": None, "completion_tokens": None, "cost_usd": cost})
    data = tmp / f"{name}.jsonl.gz"
    with gzip.open(data, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    catalog = tmp / f"catalog.{name}.yaml"
    catalog.write_text("models:\n" + "".join(
        f"  - id: {name}/{short}\n    backend: replay\n    dataset: {name}\n"
        f"    input_usd_per_mtok: \"{price}\"\n    output_usd_per_mtok: \"{price}\"\n"
        f"    context_tokens: 8000\n    max_output_tokens: 1000\n    description: \"{short} model\"\n    tags: [general]\n"
        for short, price in (("cheap", 0.1), ("mid", 1.0), ("dear", 10.0))), encoding="utf-8")
    return Source(name, data, catalog)


def config_for(source: Source, out: pathlib.Path, **kwargs) -> EvalConfig:  # type: ignore[no-untyped-def]
    return EvalConfig(source.data, kwargs.pop("policy", "cascade"), out, lambdas=(0.0, 100.0), catalog=source.catalog,
                      knn=False, progress=False, **kwargs)


# --- no silent drops -----------------------------------------------------------------------------

def test_a_partial_set_fails_naming_the_prompts_and_the_reason(tmp_path: pathlib.Path) -> None:
    source = make_source(tmp_path / "data", "part", missing={"dear": {1, 4}})
    skipped = [p for p in ids("part", 8, 12) if split_of(p) == "validation"][1:5:3]
    with pytest.raises(EvalError) as caught:
        run_evaluation(config_for(source, tmp_path / "out"))
    message = str(caught.value)
    assert "2 of 8 prompts" in message and "no recorded outcome for pool model part/dear" in message
    assert all(pid in message for pid in skipped) and "--allow-partial" in message
    assert not (tmp_path / "out").exists()  # nothing was played


def test_allow_partial_lists_the_skipped_prompts_in_the_report(tmp_path: pathlib.Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = make_source(tmp_path / "data", "part", missing={"dear": {1, 4}, "mid": {4}})
    validation = [p for p in ids("part", 8, 12) if split_of(p) == "validation"]
    out = tmp_path / "out"
    args = ["eval", "--data", str(source.data), "--catalog", str(source.catalog), "--policy", "cascade",
            "--no-knn", "--lambdas", "0", "--out", str(out)]
    assert cli.main(args) == 2
    assert "--allow-partial" in capsys.readouterr().err
    assert cli.main([*args, "--allow-partial"]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == 6 and report["split_prompts"] == 8 and report["allow_partial"]
    assert "--allow-partial" in report["command"]
    listed = {s["prompt_id"]: s["reason"] for s in report["skipped"]["prompts"]}
    assert report["skipped"]["count"] == 2 and set(listed) == {validation[1], validation[4]}
    assert listed[validation[1]] == "no recorded outcome for pool model part/dear"
    assert listed[validation[4]] == "no recorded outcome for pool models part/mid, part/dear"
    played = {json.loads(line)["prompt_id"] for line in (out / "decisions.jsonl").open()}
    assert played == set(validation) - set(listed)  # evaluated or skipped: every prompt is accounted for


def test_a_set_without_response_text_is_replayed_with_placeholders(tmp_path: pathlib.Path) -> None:
    if not placeholders_supported():
        pytest.skip("xrouter.common.outcomes has no placeholder_text yet")
    source = make_source(tmp_path / "data", "silent", texts=False)
    report = run_evaluation(config_for(source, tmp_path / "out", policy="oracle"))
    assert report["skipped"]["count"] == 0 and report["prompts"] == 8
    assert report["data_models_without_responses"] == ["silent/cheap", "silent/dear", "silent/mid"]
    validation = [(n, p) for n, p in enumerate(ids("silent", 8, 12)) if split_of(p) == "validation"]
    runs = {(r["policy"], r["lambda"]): r for r in report["runs"]}
    for short in COSTS:  # the placeholder of each row scores its recorded label
        expected = sum(score_of(short, n, False) for n, _ in validation) / len(validation)
        assert runs[(f"fixed:silent/{short}", None)]["accuracy"] == pytest.approx(expected)


# --- --source --------------------------------------------------------------------------------------

def test_source_all_writes_each_source_and_the_summary(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    sources = {"alpha": make_source(tmp_path / "data", "alpha"), "beta": make_source(tmp_path / "data", "beta", graded=True)}
    monkeypatch.setattr(evaluate_sources, "bundled_sources", lambda: sources)
    out = tmp_path / "out"
    code = cli.main(["eval", "--source", "all", "--policy", "cascade", "--no-knn", "--lambdas", "0,100",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in sources:
        report = json.loads((out / name / "report.json").read_text())
        assert report["source"] == name and report["pool"] == [f"{name}/cheap", f"{name}/mid", f"{name}/dear"]
        assert (out / name / "frontier.png").read_bytes()[:4] == b"\x89PNG"
        assert all(f"{name}/" in line for line in (out / name / "decisions.jsonl").read_text().splitlines())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sources"]) == {"alpha", "beta"} and "--source all" in summary["command"]
    policies = summary["sources"]["alpha"]["policies"]
    assert {"cascade", "cheapest", "random", "oracle", "fixed:alpha/dear"} <= set(policies)
    assert all({"apgr", "cpt_50", "cpt_80"} <= set(figures) for figures in policies.values())
    assert summary["sources"]["beta"]["scores"] == "graded (0..1)"
    table = (out / "summary.md").read_text()
    assert "| alpha | cascade (subject) |" in table and "| beta | oracle |" in table
    assert "CPT(50%)" in capsys.readouterr().out
    assert cli.main(["eval", "--source", "gamma", "--policy", "cascade", "--out", str(out)]) == 2
    assert "not a bundled source" in capsys.readouterr().err
    assert cli.main(["eval", "--source", "alpha", "--data", str(sources["alpha"].data), "--policy", "cascade",
                     "--out", str(out)]) == 2


def test_sources_are_all_checked_before_any_is_played(tmp_path: pathlib.Path) -> None:
    sources = {"alpha": make_source(tmp_path / "data", "alpha"),
               "beta": make_source(tmp_path / "data", "beta", missing={"cheap": {0}})}
    config = config_for(sources["alpha"], tmp_path / "out")
    with pytest.raises(EvalError, match="--source beta: .*1 of 8 prompts"):
        run_sources(config, "all", sources=sources)
    assert not (tmp_path / "out" / "alpha").exists()
    partial = dataclasses.replace(config, knn=True, knn_k=3, allow_partial=True)
    summary, reports = run_sources(partial, "all", embedder=encoder_embedder(HashingEncoder()), sources=sources)
    assert reports["beta"]["skipped"]["count"] == 1 and summary["sources"]["beta"]["skipped"] == 1
    assert summary["sources"]["alpha"]["policies"]["knn"]["group"] == "baseline"


# --- metrics ---------------------------------------------------------------------------------------

def record(policy: str, cost_lambda: float | None, pid: str, task: str, score: float, cost: float) -> dict:
    return {"policy": policy, "lambda": cost_lambda, "prompt_id": pid, "task": task, "calls": [{}],
            "failed": False, "cost_usd": cost, "score": score, "reward": None if cost_lambda is None else score}


def test_cpt_50_and_80_and_per_task_metrics_on_a_hand_computed_example() -> None:
    # Two prompts, graded scores. Weak: accuracy 0.5 at $1; strong: 0.9 at $11 (c = (cost - 1) / 10).
    # The subject: λ=10 → 0.7 at $6 (c 0.5, PGR 0.5); λ=0 → 0.86 at $9 (c 0.8, PGR 0.9).
    rows = {("fixed:weak", None): ((0.4, 1.0), (0.6, 1.0)), ("fixed:strong", None): ((0.85, 11.0), (0.95, 11.0)),
            ("subject", 10.0): ((0.65, 6.0), (0.75, 6.0)), ("subject", 0.0): ((0.75, 9.0), (0.97, 9.0))}
    records = [record(policy, lam, pid, task, score, cost) for (policy, lam), pair in rows.items()
               for pid, task, (score, cost) in zip(("p1", "p2"), ("a", "b"), pair, strict=True)]
    groups = {"fixed:weak": "single", "fixed:strong": "single", "subject": "subject"}
    report = build_report({"subject": "subject"}, records, groups)
    metrics = report["metrics"]["subject"]
    assert metrics["cpt"]["50%"]["normalised_cost"] == pytest.approx(0.5)
    assert metrics["cpt"]["50%"]["cost_usd"] == pytest.approx(6.0)
    # PGR 0.8 lies on the segment (0.5, 0.5)–(0.8, 0.9): c = 0.5 + 0.3 · 0.3 / 0.4 = 0.725, $8.25.
    assert metrics["cpt"]["80%"]["normalised_cost"] == pytest.approx(0.725)
    assert metrics["cpt"]["80%"]["cost_usd"] == pytest.approx(8.25)
    assert metrics["cpt"]["80%"]["share_of_strong_cost"] == pytest.approx(8.25 / 11)
    # Area: 0.5·0.5/2 + (0.5 + 0.9)/2·0.3 + 0.9·0.2.
    assert metrics["apgr"] == pytest.approx(0.125 + 0.21 + 0.18)
    assert report["metrics"]["fixed:strong"]["group"] == "single"  # single models get figures too
    assert report["metrics"]["fixed:strong"]["cpt"]["80%"]["normalised_cost"] == pytest.approx(0.8)
    # Task a alone: weak 0.4 at $1, strong 0.85 at $11, the subject 0.65 at c 0.5 and 0.75 at c 0.8
    # (PGR 5/9 and 7/9): CPT(50%) = 0.5 · 0.5 / (5/9) = 0.45; PGR never reaches 80%.
    task_a = report["per_task"]["a"]
    assert task_a["prompts"] == 1 and task_a["references"]["strong"]["model"] == "strong"
    subject_a = task_a["policies"]["subject"]
    assert [(p["lambda"], p["accuracy"], p["cost_usd"]) for p in subject_a["points"]] == [(10.0, 0.65, 6.0),
                                                                                        (0.0, 0.75, 9.0)]
    assert subject_a["cpt"]["50%"]["normalised_cost"] == pytest.approx(0.45) and subject_a["cpt"]["80%"] is None
    assert subject_a["apgr"] == pytest.approx(
        0.5 * (5 / 9) / 2 + ((5 / 9) + (7 / 9)) / 2 * 0.3 + (7 / 9) * 0.2)
    assert report["per_task"]["b"]["policies"]["fixed:weak"]["points"][0]["accuracy"] == pytest.approx(0.6)


def test_graded_scores_flow_through_every_policy(tmp_path: pathlib.Path) -> None:
    source = make_source(tmp_path / "data", "graded", graded=True)
    report = run_evaluation(config_for(source, tmp_path / "out", policy="oracle"))
    assert report["scores"] == "graded (0..1)"
    validation = [n for n, p in enumerate(ids("graded", 8, 12)) if split_of(p) == "validation"]
    runs = {(r["policy"], r["lambda"]): r for r in report["runs"]}
    for short in COSTS:
        expected = sum(score_of(short, n, True) for n in validation) / len(validation)
        assert runs[(f"fixed:graded/{short}", None)]["accuracy"] == pytest.approx(expected)
    # At λ = 0 the oracle takes the best recorded score of each prompt.
    best = sum(max(score_of(m, n, True) for m in COSTS) for n in validation) / len(validation)
    assert runs[("oracle", 0.0)]["accuracy"] == pytest.approx(best)
    assert 0.0 < report["metrics"]["oracle"]["apgr"] and report["metrics"]["cascade"]["apgr"] is not None
    assert set(report["per_task"]) == {"alpha", "beta"}
    for task, entry in report["per_task"].items():
        assert entry["policies"]["oracle"]["apgr"] is not None, task
