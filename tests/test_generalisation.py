"""The learned router across outcome sets: the mixed environment, configs that name sources, the
tiny mixed pipeline end to end (train → bundle → load with the encoder by hash → route), a model
routed from its catalog entry alone, and the shipped checkpoint (small, fresh, monotone in λ)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

from xrouter.adapters.catalog import load_catalog
from xrouter.common.outcomes import SOURCES
from xrouter.router.checkpoint_manifest import MANIFEST, sha256
from xrouter.router.compact.checkpoint import ENCODER, load_policy, read_manifest
from xrouter.router.policy import ModelOption
from xrouter.router.policy_store import BUNDLED_POLICY
from xrouter_training.bundle import MAX_BYTES, bundle, data_hashes
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import MixedEnvironment
from xrouter_training.train import first_per_source, sample_pool

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "training" / "configs"


def options_of(source: str) -> list[ModelOption]:
    return [ModelOption(s.id, float(s.input_usd_per_mtok), float(s.output_usd_per_mtok), s.description, s.tags,
                        s.context_tokens) for s in load_catalog(SOURCES[source].catalog).values()]


@pytest.fixture(scope="module")
def mixed() -> MixedEnvironment:
    return MixedEnvironment(["routerarena", "arena"])


def test_a_mixed_environment_keeps_each_prompt_with_its_own_sources_models(mixed: MixedEnvironment) -> None:
    import random

    prompts = mixed.split("train")
    assert {p.source for p in prompts} == {"routerarena", "arena"}
    assert all(p.prompt_id.startswith(f"{p.source}/") for p in prompts)
    arena_models = set(load_catalog(SOURCES["arena"].catalog))
    config = TrainConfig(sources=("routerarena", "arena"))
    rng = random.Random(0)
    for prompt in prompts[:: max(1, len(prompts) // 40)]:
        pool = sample_pool(mixed, prompt, config, rng)
        assert set(pool) <= mixed.answered[prompt.prompt_id]
        assert (set(pool) <= arena_models) == (prompt.source == "arena")


def test_episodes_of_a_mixed_environment_replay_their_source_and_score_textless_rows(mixed) -> None:  # type: ignore[no-untyped-def]
    from xrouter.router.baselines import make_baseline

    # gpt-4-0314 has scores but no recorded text in Arena-Hard: the placeholder answer still scores.
    prompt = next(p for p in mixed.split("all") if p.source == "arena" and "gpt-4-0314" in mixed.answered[p.prompt_id])
    episode = asyncio.run(mixed.play(make_baseline("fixed:gpt-4-0314", set(mixed.options)), prompt, ["gpt-4-0314"], 1.0))
    assert episode.prompt == prompt
    assert episode.result is not None
    assert episode.score == pytest.approx(mixed.scores[prompt.prompt_id]["gpt-4-0314"])
    assert episode.cost_usd > 0


def test_limit_prompts_takes_the_first_of_each_source(mixed: MixedEnvironment) -> None:
    chosen = first_per_source(mixed.split("train"), 3)
    assert [p.source for p in chosen].count("arena") == 3 and [p.source for p in chosen].count("routerarena") == 3


@pytest.mark.parametrize(("settings", "message"), [
    ({"sources": ("routerbench", "nope")}, r"\['nope'\] are not bundled outcome sets"),
    ({"sources": ("arena", "arena")}, "names a source twice"),
    ({"sources": ("arena",), "data": "x.jsonl.gz"}, "sources and data/catalog both set"),
    ({"lambda_max": float("nan")}, "lambda_max=nan: must be a finite number"),
    ({"lambda_min": -1.0}, "lambda range"),
    ({"id_dropout": 1.0}, "id_dropout=1.0"),
])
def test_bad_source_settings_are_refused_by_name(settings, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


def test_a_config_file_naming_a_missing_source_fails_naming_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.yaml"
    path.write_text("sources: [routerbench, imaginary]\n")
    with pytest.raises(ConfigError, match="imaginary"):
        TrainConfig.from_file(path)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> pathlib.Path:  # type: ignore[no-untyped-def]
    """The tiny mixed config trained from scratch, then bundled as the default is."""
    from xrouter.cli import main

    out = tmp_path_factory.mktemp("tiny")
    assert main(["train", "--config", str(CONFIGS / "mixed-tiny.yaml"), "--out", str(out)]) == 0
    return bundle(out / "checkpoint", CONFIGS / "mixed-tiny.yaml", out / "bundled")


def test_the_tiny_mixed_pipeline_trains_bundles_loads_and_routes(tiny_bundle: pathlib.Path) -> None:
    from xrouter.router.compact.checkpoint import smoke_episode

    manifest = read_manifest(tiny_bundle)
    assert not (tiny_bundle / ENCODER).exists()  # named by hash, exported from the package on load
    assert manifest["data"]["sources"] == ["routerbench", "llmrouter", "arena", "routerarena"]
    assert manifest["provenance"]["data_sha256"] == data_hashes(manifest["data"]["sources"])
    for source in SOURCES:
        policy = load_policy(tiny_bundle, options_of(source))
        asyncio.run(smoke_episode(policy, options_of(source)))


def test_bundle_refuses_another_config_and_a_folder_that_is_not_a_checkpoint(tiny_bundle: pathlib.Path,
                                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The config was only hashed into the provenance (any file passed), and an --out folder that
    held a training run was deleted to make room (CLI probe, 2026-12-07)."""
    checkpoint = tiny_bundle.parent / "checkpoint"
    with pytest.raises(ValueError, match="not the config that trained"):
        bundle(checkpoint, CONFIGS / "mixed.yaml", tmp_path / "b1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="is not a checkpoint"):
        bundle(checkpoint, CONFIGS / "mixed-tiny.yaml", run)
    assert (run / "metrics.jsonl").read_text() == "{}\n"
    assert bundle(checkpoint, CONFIGS / "mixed-tiny.yaml", tmp_path / "b2") == tmp_path / "b2"
    assert bundle(checkpoint, CONFIGS / "mixed-tiny.yaml", tmp_path / "b2") == tmp_path / "b2"  # a bundle: replaced


def test_a_bundle_whose_encoder_differs_is_refused(tiny_bundle: pathlib.Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xrouter.common.errors import InvalidArgument
    from xrouter.router.checkpoint_manifest import write_manifest

    copy = tmp_path / "copy"
    copy.mkdir()
    for item in tiny_bundle.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["encoder_sha256"] = "0" * 64
    write_manifest(copy, manifest)
    with pytest.raises(InvalidArgument, match="query encoder"):
        load_policy(copy, options_of("routerbench"))


def test_a_model_never_trained_with_is_routed_from_its_catalog_entry(tiny_bundle: pathlib.Path) -> None:
    """A new model (unknown id) described as free and excellent must be chosen at a high λ by a
    policy that never saw it: its description and prices carry it."""
    from xrouter.router.policy import CallModels, EpisodeState

    pool = options_of("routerbench")
    newcomer = ModelOption("acme/newcomer-1", 0.0, 0.0, "A new model, free to call.", ("general",), 8192)
    policy = load_policy(tiny_bundle, [*pool, newcomer])
    assert "acme/newcomer-1" not in policy.vocabulary.models
    state = EpisodeState([("user", "Which is heavier? A) a feather B) a brick")], [*pool, newcomer], 1e4, None, 3, 0)
    action = asyncio.run(policy.decide(state))
    assert isinstance(action, CallModels)
    assert action.calls[0].model == "acme/newcomer-1"


# --- the shipped checkpoint -------------------------------------------------------------------

shipped = pytest.mark.skipif(not BUNDLED_POLICY.is_dir(), reason="no bundled policy in this checkout")


@shipped
def test_the_shipped_policy_is_small_verified_and_made_from_the_bundled_data() -> None:
    manifest = read_manifest(BUNDLED_POLICY)
    assert sum(f.stat().st_size for f in BUNDLED_POLICY.iterdir()) < MAX_BYTES
    # A stale bundle (data regenerated since it was trained) fails here: retrain and re-bundle.
    assert manifest["provenance"]["data_sha256"] == data_hashes(manifest["data"]["sources"])
    config = pathlib.Path(manifest["provenance"]["command"].split("--config ")[1].split()[0])
    assert sha256(config) == manifest["provenance"]["config_sha256"]


def _mean_costs(policy, env, prompts, lambdas) -> list[float]:  # type: ignore[no-untyped-def]
    async def play(cost_lambda: float):  # type: ignore[no-untyped-def]
        with policy.batched():
            return await asyncio.gather(*(env.play(policy, p, sorted(env.answered[p.prompt_id]), cost_lambda)
                                          for p in prompts))
    return [float(np.mean([e.cost_usd for e in asyncio.run(play(cost_lambda))])) for cost_lambda in lambdas]


@shipped
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_larger_lambda_never_raises_the_mean_cost(source: str) -> None:
    """Greedy decisions over the whole validation split of each source, λ from 0 to 1e6 (far past
    the trained top, 1e4): the mean cost per request never rises."""
    env = MixedEnvironment([source])
    policy = load_policy(BUNDLED_POLICY, list(env.options.values()))
    prompts = env.split("validation")
    lambdas = [0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
    costs = _mean_costs(policy, env, prompts, lambdas)
    for (low, cheap), (high, dear) in zip(zip(lambdas, costs), zip(lambdas[1:], costs[1:])):
        assert dear <= cheap * (1 + 1e-9), f"{source}: mean cost rose from ${cheap:.6f} at λ={low:g} to ${dear:.6f} at λ={high:g}"
    # And λ does something, unless the policy already pays the cheapest model's price at λ = 0 (on
    # RouterArena the cheapest model, gemini-2.0-flash, is also the most accurate: no cost axis).
    cheapest = min(np.mean([env.costs[p.prompt_id][m] for p in prompts if m in env.costs[p.prompt_id]])
                   for m in env.options if any(m in env.costs[p.prompt_id] for p in prompts))
    assert costs[-1] < costs[0] or costs[0] <= cheapest * 1.001, (source, costs, cheapest)


def test_dataclass_replace_keeps_sources(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig.from_file(CONFIGS / "mixed.yaml")
    assert dataclasses.replace(config, sources=("arena",)).sources == ("arena",)
    assert config.sources == ("routerbench", "llmrouter", "arena", "routerarena")


def test_batched_decisions_of_concurrent_episodes_equal_one_by_one(tiny_bundle: pathlib.Path) -> None:
    """Evaluation plays many episodes at once through one forward (CompactPolicy.batched): the
    greedy decisions must be exactly those of playing them one by one, pools of different sizes too."""
    env = MixedEnvironment(["routerbench"])
    policy = load_policy(tiny_bundle, list(env.options.values()))
    prompts = env.split("validation")[:24]
    pools = [sorted(env.answered[p.prompt_id])[: 3 + i % 5] for i, p in enumerate(prompts)]

    async def one_by_one():  # type: ignore[no-untyped-def]
        return [await env.play(policy, p, pool, 30.0) for p, pool in zip(prompts, pools)]

    async def together():  # type: ignore[no-untyped-def]
        with policy.batched():
            return await asyncio.gather(*(env.play(policy, p, pool, 30.0) for p, pool in zip(prompts, pools)))

    alone, batched = asyncio.run(one_by_one()), asyncio.run(together())
    assert [[c.model for c in e.calls] for e in alone] == [[c.model for c in e.calls] for e in batched]
    assert [e.score for e in alone] == [e.score for e in batched]


def test_training_on_an_unreadable_outcome_file_fails_naming_it_and_writes_nothing(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import gzip

    from xrouter.cli import main

    data = tmp_path / "broken.jsonl.gz"
    with gzip.open(data, "wt") as handle:
        handle.write('{"source": "x", "task": "t", "prompt_id": "p1", "prompt": "q", "model": "m", "score": 2.5}\n')
    config = tmp_path / "broken.yaml"
    config.write_text(f"data: {data}\nsteps: 1\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{data}:1" in error and "score" in error
    assert not (tmp_path / "out").exists()


def test_the_tiny_bundle_carries_its_outcome_memory_and_reads_added_rows(tiny_bundle: pathlib.Path) -> None:
    from xrouter.router.compact.memory import FILE, KNOWN, LOCAL_MEAN

    assert FILE in read_manifest(tiny_bundle)["sha256"]  # shipped and hash-checked like the weights
    policy = load_policy(tiny_bundle, options_of("routerbench"))
    assert policy.memory is not None and len(policy.memory) > 100  # 40 train-split prompts a source, less the validation
    text = "Which is heavier? A) a feather B) a brick"
    assert not policy.memory_features(text, ["acme/newcomer-1"]).any()
    policy.memory.add("Which is lighter? A) a feather B) a brick", policy.query_vector(text), {"acme/newcomer-1": 1.0})
    policy.forget_memory_cache()
    features = policy.memory_features(text, ["acme/newcomer-1"])[0]
    assert features[LOCAL_MEAN] == 1.0 and features[KNOWN] == 1.0


def test_learning_from_traffic_simulation_grows_the_memory_and_reports_a_curve(tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xrouter_training.traffic import run

    report = run(tiny_bundle, None, "arena", tmp_path, requests=6, every=3, epsilon=0.5, seed=1)
    assert [row["requests"] for row in report["curve"]] == [0, 3, 6]
    rows = [row["memory_rows"] for row in report["curve"]]
    assert rows[0] < rows[1] < rows[2] <= rows[0] + 6  # one verdict per answered request
    assert all(math.isfinite(row["apgr"]) for row in report["curve"])
    assert (tmp_path / "traffic_learning.png").stat().st_size > 0
    assert json.loads((tmp_path / "traffic_learning.json").read_text())["traffic"] == 6


def test_learning_behind_the_publish_gate_serves_nothing_unproven(tiny_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the publish gate (what ``xrouter learn`` does), verdicts reach the serving memory only
    through a passed rule: a few held-back episodes are not enough evidence, so the memory stays
    as it started and every decision is recorded."""
    from xrouter_training.traffic import run

    report = run(tiny_bundle, None, "arena", tmp_path, requests=10, every=5, epsilon=0.5, seed=1, publish_gate=True)
    assert [d["requests"] for d in report["publish_decisions"]] == [5, 10]
    assert {d["decision"] for d in report["publish_decisions"]} == {"not enough held-back evidence"}
    assert len({row["memory_rows"] for row in report["curve"]}) == 1
    with pytest.raises(ValueError, match="publish_gate"):
        run(tiny_bundle, None, "arena", tmp_path, requests=2, every=1, publish_gate=True, verdicts="called")
    assert report["publish_scores"]["decisions"] == 2 and report["publish_scores"]["published"] == 0
    assert all({"serving_apgr", "candidate_apgr", "difference"} <= set(d) for d in report["publish_decisions"])


def test_publish_decisions_are_scored_against_the_true_apgr() -> None:
    from xrouter_training.traffic import score_decisions

    def decision(verdict: str, serving: float, candidate: float) -> dict:
        return {"decision": verdict, "serving_apgr": serving, "candidate_apgr": candidate}

    scores = score_decisions([decision("publish", 0.80, 0.70), decision("publish", 0.80, 0.805),
                              decision("worse: not published", 0.80, 0.90),
                              decision("not enough held-back evidence", 0.80, 0.60)])
    assert scores == {"decisions": 4, "published": 2, "published_worse": 1, "held_back_better": 1}


def test_a_model_to_leave_out_that_no_source_holds_is_refused_before_any_training(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--lomo was checked after the leave-one-source-out runs had trained and evaluated."""
    from xrouter.cli import main

    out = tmp_path / "gen"
    assert main(["generalise", "--config", str(CONFIGS / "mixed-tiny.yaml"), "--out", str(out), "--loso",
                 "--lomo", "no-such-model"]) == 2
    assert not out.exists() or not any(out.iterdir())
