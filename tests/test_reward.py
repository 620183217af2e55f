"""The reward service: formula, verifiers, recorded labels on the bundled data, the Scorer's
errors, settings, and Score / ScoreBatch through a real gRPC server."""

from __future__ import annotations

import collections
import random
import subprocess
import sys

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.reward.v1 import reward_pb2, reward_pb2_grpc
from xrouter.common.errors import InvalidArgument, NotFound
from xrouter.common.grpc_server import GrpcServer
from xrouter.common.outcomes import ROUTERBENCH, Outcome, read_outcomes
from xrouter.common.settings import SettingsError, load
from xrouter.reward.core import Reference, Scorer
from xrouter.reward.formula import RewardConfig, cost_aware_reward
from xrouter.reward.server import build_sandbox, register
from xrouter.reward.settings import RewardSettings
from xrouter.reward.verifiers import (CodeTests, RecordedLabels, exact_match, extract_choice,
                                      multiple_choice, normalize_answer)


def outcome(prompt_id: str, response: str, score: float) -> Outcome:
    return Outcome(source="t", task="t", prompt_id=prompt_id, prompt="q", gold=None, model="m",
                   score=score, response=response, prompt_tokens=None, completion_tokens=None,
                   cost_usd=0.0)


@pytest.fixture(scope="module")
def routerbench_rows() -> list[Outcome]:
    return list(read_outcomes(ROUTERBENCH))


@pytest.fixture(scope="module")
def routerbench(routerbench_rows: list[Outcome]) -> RecordedLabels:
    return RecordedLabels(routerbench_rows, name="routerbench")


# --- formula -------------------------------------------------------------------------------------

def test_reward_formula() -> None:
    config = RewardConfig(k=1.0, cost_max=0.7)
    assert cost_aware_reward(1.0, 0.0, 5.0, config) == 1.0
    assert cost_aware_reward(1.0, 0.1, 2.0, config) == pytest.approx(0.8)
    assert cost_aware_reward(1.0, 100.0, 2.0, config) == pytest.approx(0.3)  # penalty capped
    assert cost_aware_reward(0.5, 0.1, 2.0, config) == pytest.approx(0.4)
    assert cost_aware_reward(1.0, 100.0, 0.0, config) == 1.0  # lambda 0: cost ignored
    assert cost_aware_reward(0.0, 0.1, 2.0, config) == 0.0
    assert cost_aware_reward(1.0, 0.0, 1.0, RewardConfig(k=2.0)) == 2.0


def test_reward_formula_edges() -> None:
    config = RewardConfig(k=1.0, cost_max=0.7)
    assert cost_aware_reward(1.0, 0.35, 2.0, config) == pytest.approx(0.3)  # exactly at the cap
    assert cost_aware_reward(1.0, 0.3499, 2.0, config) == pytest.approx(1 - 0.6998)  # just under it
    assert cost_aware_reward(0.25, 1e9, 3.0, config) == pytest.approx(0.25 * 0.3)  # partial, capped
    assert cost_aware_reward(1.0, 0.0, 0.0, config) == 1.0
    assert cost_aware_reward(1.0, 5.0, 1.0, RewardConfig(cost_max=0.0)) == 1.0  # no penalty at all
    # A cap above K lets an expensive correct answer score below a wrong one (0): allowed, visible.
    assert cost_aware_reward(1.0, 10.0, 1.0, RewardConfig(k=0.5, cost_max=0.7)) == pytest.approx(-0.2)
    # Failed episodes earn nothing, whatever the answer and cost.
    assert cost_aware_reward(1.0, 0.0, 1.0, config, failure="format error") == 0.0
    assert cost_aware_reward(1.0, 0.0, 1.0, config, failure="   ") == 1.0  # blank is not a reason
    # The router's own cost joins the models' cost (by default) and shares the cap.
    assert cost_aware_reward(1.0, 0.1, 1.0, config, router_cost_usd=0.02) == pytest.approx(0.88)
    assert cost_aware_reward(1.0, 0.1, 1.0, config, router_cost_usd=5.0) == pytest.approx(0.3)
    paper = RewardConfig(charge_router_cost=False)
    assert cost_aware_reward(1.0, 0.1, 1.0, paper, router_cost_usd=0.02) == pytest.approx(0.9)


@pytest.mark.parametrize(("args", "field"), [
    ((-0.1, 0.0, 1.0), "score"), ((1.5, 0.0, 1.0), "score"), ((float("nan"), 0.0, 1.0), "score"),
    ((1.0, -0.01, 1.0), "cost_usd"), ((1.0, float("inf"), 1.0), "cost_usd"),
    ((1.0, 0.0, -1.0), "cost_lambda")])
def test_reward_rejects_bad_inputs(args: tuple[float, float, float], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        cost_aware_reward(*args, RewardConfig())
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")


def test_reward_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="k must be"):
        RewardConfig(k=0.0)
    with pytest.raises(ValueError, match="cost_max must be"):
        RewardConfig(cost_max=-0.1)


# --- multiple choice and exact match -------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("B", "B"), ("(B)", "B"), ("B\n", "B"), ("  b ", "B"), ("**C**", "C"), ("A.", "A"),
    ("The answer is B.", "B"), ("the answer is b", "B"), ("Answer: B", "B"), ("answer: d", "D"),
    ("B) iron", "B"), ("b. iron", "B"), ("(D) copper", "D"), ("D (because it conducts", "D"),
    ("The correct answer is (C)", "C"), ("Option C", "C"), ("Final answer: C\n", "C"),
    ("Answer: (c) copper", "C"), ("It is A", "A"), ("A is correct", "A"),
    ("I would pick C because it is heavier", "C"),
    # The article "A" must not win over an explicit answer elsewhere.
    ("A good conductor is needed, so the answer is D", "D"),
    ("A cat is an animal. Answer: B", "B"),
    ("A) a tree", "A"),
    ("At first I thought B, but the answer is C.", "C"),
    ("The answer is B... no, the correct answer is C.", "C"),
    # No pick, or an ambiguous one.
    ("A chart is the best tool", None), ("I think the answer is a tree", None), ("B or C", None),
    ("Between (A) and (C), hard to say", None), ("Sediment", None), ("I do not know", None),
    ("", None), (None, None),
])
def test_extract_choice(text: str | None, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_extract_choice_respects_options() -> None:
    assert extract_choice("E", "ABCD") is None
    assert extract_choice("The answer is C", "AB") is None
    assert extract_choice("B", "AB") == "B"


def test_multiple_choice() -> None:
    assert multiple_choice("The answer is B.", "B") == multiple_choice("B", "b")
    assert multiple_choice("The answer is B.", "B").score == 1.0
    assert multiple_choice("The answer is B.", "B").detail == "extracted B, gold B"
    assert multiple_choice("(C)", "B").score == 0.0
    assert "no option letter" in multiple_choice("Sediment", "B").detail
    with pytest.raises(InvalidArgument, match="^reference.gold: "):
        multiple_choice("B", "BC")
    with pytest.raises(InvalidArgument, match="^reference.gold: "):
        multiple_choice("B", "Z")


def test_exact_match() -> None:
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert exact_match("the Eiffel Tower.", "Eiffel   tower").score == 1.0
    assert exact_match("An apple", "apple").score == 1.0
    assert exact_match("Paris", "paris, France").score == 0.0
    assert "!=" in exact_match("Paris", "London").detail


# --- recorded labels -----------------------------------------------------------------------------

def test_recorded_labels_on_hand_made_rows() -> None:
    labels = RecordedLabels([
        outcome("p1", "B", 1.0), outcome("p1", "b\n", 1.0), outcome("p1", "C", 0.0),
        outcome("p2", "yes", 1.0), outcome("p2", "yes", 0.0), outcome("p2", "yes", 1.0),
        outcome("p3", "maybe", 1.0), outcome("p3", "Maybe", 0.0),
    ], name="hand")
    assert len(labels) == 3 and "p1" in labels
    assert labels.verdict("p1", " B ").score == 1.0
    assert labels.verdict("p1", "B").detail == "recorded label 1 (2 recordings)"
    assert labels.verdict("p1", "C").score == 0.0
    majority = labels.verdict("p2", "yes")
    assert majority.score == 1.0 and "majority" in majority.detail
    tie = labels.verdict("p3", "MAYBE")
    assert tie.score == 0.5 and "mean" in tie.detail
    with pytest.raises(NotFound, match="^reference.prompt_id: 'nope' is not a recorded prompt"):
        labels.verdict("nope", "B")
    with pytest.raises(NotFound, match="no recorded label"):
        labels.verdict("p1", "D")


def test_recorded_labels_agree_with_bundled_data(routerbench_rows: list[Outcome],
                                                 routerbench: RecordedLabels) -> None:
    sample = random.Random(0).sample(routerbench_rows, 200)
    agree = sum(routerbench.verdict(r.prompt_id, r.response or "").score == r.score for r in sample)
    print(f"recorded-label agreement on 200 sampled rows: {agree / 200:.1%}")
    assert agree / len(sample) >= 0.95


def test_multiple_choice_agrees_with_bundled_labels(routerbench_rows: list[Outcome]) -> None:
    """The letter extractor grades real model answers as the publisher did: gold letters are not
    in the data, so each prompt's gold is inferred from the answers recorded as correct."""
    by_prompt: dict[str, list[Outcome]] = collections.defaultdict(list)
    for row in routerbench_rows:
        if row.task in ("arc-challenge", "winogrande"):
            by_prompt[row.prompt_id].append(row)
    agree = total = 0
    for rows in by_prompt.values():
        options = "AB" if rows[0].task == "winogrande" else "ABCDE"
        correct = collections.Counter(extract_choice(r.response, options) for r in rows if r.score)
        correct.pop(None, None)
        if not correct:
            continue
        gold = correct.most_common(1)[0][0]
        for row in rows:
            total += 1
            agree += multiple_choice(row.response or "", gold, options).score == row.score
    print(f"multiple_choice agreement with recorded labels: {agree / total:.2%} of {total}")
    assert total > 15_000 and agree / total >= 0.99


# --- scorer --------------------------------------------------------------------------------------

@pytest.fixture()
def scorer() -> Scorer:
    labels = RecordedLabels([outcome("p1", "B", 1.0), outcome("p1", "C", 0.0)], name="hand")
    return Scorer({"hand": labels}, RewardConfig(k=1.0, cost_max=0.7))


async def test_scorer_dispatches(scorer: Scorer) -> None:
    result = await scorer.score("q", "The answer is B", Reference("multiple_choice", gold="B"), 0.1, 2.0)
    assert (result.score, result.reward, result.detail) == (1.0, pytest.approx(0.8), "extracted B, gold B")
    assert (await scorer.score("q", "paris", Reference("exact_match", gold="Paris"), 0.0, 1.0)).reward == 1.0
    recorded = await scorer.score("q", "C", Reference("recorded_label", dataset="hand", prompt_id="p1"), 0, 1)
    assert (recorded.score, recorded.reward) == (0.0, 0.0)
    winogrande = await scorer.score("q", "B", Reference("multiple_choice", gold="B", options="AB"), 0, 1)
    assert winogrande.score == 1.0
    assert (await scorer.score("q", "C", Reference("multiple_choice", gold="B", options="AB"), 0, 1)).score == 0.0
    f1 = await scorer.score("q", "the Eiffel tower in Paris", Reference("token_f1", gold="Eiffel Tower"), 0, 1)
    assert f1.score == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    aliased = await scorer.score("q", "NYC", Reference("exact_match", gold="New York", aliases=("nyc",)), 0, 1)
    assert aliased.score == 1.0
    math_ok = await scorer.score("q", "so \\boxed{\\frac{1}{2}}", Reference("math", gold="0.5"), 0.0, 1.0)
    assert (math_ok.score, math_ok.reward) == (1.0, 1.0)


async def test_scorer_failed_episode_and_router_cost(scorer: Scorer) -> None:
    reference = Reference("multiple_choice", gold="B")
    failed = await scorer.score("q", "B", reference, 0.1, 1.0, failure="turn limit reached")
    assert (failed.score, failed.reward) == (1.0, 0.0)
    assert failed.detail.endswith("episode failed (turn limit reached): reward 0")
    charged = await scorer.score("q", "B", reference, 0.1, 1.0, router_cost_usd=0.05)
    assert charged.reward == pytest.approx(1.0 - 0.15)
    paper = Scorer({}, RewardConfig(charge_router_cost=False))
    assert (await paper.score("q", "B", reference, 0.1, 1.0, router_cost_usd=0.05)).reward == pytest.approx(0.9)
    with pytest.raises(InvalidArgument, match="^router_cost_usd: "):
        await scorer.score("q", "B", reference, 0.1, 1.0, router_cost_usd=-1.0)


@pytest.mark.parametrize(("reference", "field", "mentions"), [
    (Reference("essay"), "reference.task_type", "multiple_choice, exact_match, token_f1, math, code"),
    (Reference("multiple_choice"), "reference.gold", "required"),
    (Reference("exact_match", gold="  "), "reference.gold", "required"),
    (Reference("token_f1"), "reference.gold", "required"),
    (Reference("math"), "reference.gold", "the final answer"),
    (Reference("multiple_choice", gold="7"), "reference.gold", "option letter"),
    (Reference("multiple_choice", gold="B", options="A,B"), "reference.options", "letters"),
    (Reference("recorded_label", dataset="other", prompt_id="p1"), "reference.dataset", "hand"),
    (Reference("recorded_label", dataset="hand"), "reference.prompt_id", "required"),
    (Reference("code"), "reference.code", "asserts"),
    (Reference("code", code=CodeTests()), "reference.code", "nothing to test"),
    (Reference("code", code=CodeTests(check="def check(c): pass")), "reference.code.entry_point", "check()"),
    (Reference("code", code=CodeTests(asserts=("assert f()", " "))), "reference.code.asserts[1]", "empty"),
    # A well-formed code reference on a scorer without a sandbox: refused, naming why.
    (Reference("code", code=CodeTests(asserts=("assert f()",))), "reference.task_type", "not enabled"),
    (Reference("judge"), "reference.task_type", "XROUTER_REWARD_JUDGE_MODEL"),
])
async def test_scorer_errors_name_the_field(scorer: Scorer, reference: Reference, field: str,
                                            mentions: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await scorer.score("q", "B", reference, 0.0, 1.0)
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")
    assert mentions in str(error.value)


async def test_scorer_checks_cost_before_the_verdict(scorer: Scorer) -> None:
    reference = Reference("recorded_label", dataset="hand", prompt_id="unknown")
    with pytest.raises(InvalidArgument, match="^cost_usd: "):
        await scorer.score("q", "B", reference, -1.0, 1.0)
    with pytest.raises(NotFound):
        await scorer.score("q", "B", reference, 0.0, 1.0)


# --- settings ------------------------------------------------------------------------------------

def test_settings_defaults_and_pairs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    defaults = load(RewardSettings, {})
    assert (defaults.port, defaults.k, defaults.cost_max, defaults.max_parallel) == (50054, 1.0, 0.7, 8)
    assert defaults.datasets() == {"routerbench": ROUTERBENCH}
    extra = tmp_path / "x.jsonl.gz"
    extra.write_bytes(b"")
    config = load(RewardSettings, {"XROUTER_REWARD_RECORDED_DATASETS": f"routerbench, x={extra}"})
    assert config.datasets() == {"routerbench": ROUTERBENCH, "x": extra}


@pytest.mark.parametrize(("environ", "variable"), [
    ({"XROUTER_REWARD_PORT": "http"}, "XROUTER_REWARD_PORT"),
    ({"XROUTER_REWARD_K": "0"}, "XROUTER_REWARD_K"),
    ({"XROUTER_REWARD_COST_MAX": "-1"}, "XROUTER_REWARD_COST_MAX"),
    ({"XROUTER_REWARD_MAX_PARALLEL": "0"}, "XROUTER_REWARD_MAX_PARALLEL"),
    ({"XROUTER_REWARD_RECORDED_DATASETS": "x=/nonexistent.gz"}, "XROUTER_REWARD_RECORDED_DATASETS"),
    ({"XROUTER_REWARD_RECORDED_DATASETS": "mine"}, "XROUTER_REWARD_RECORDED_DATASETS"),
    ({"XROUTER_REWARD_CHARGE_ROUTER_COST": "maybe"}, "XROUTER_REWARD_CHARGE_ROUTER_COST"),
    ({"XROUTER_REWARD_SANDBOX_CPU_S": "0"}, "XROUTER_REWARD_SANDBOX_CPU_S"),
    ({"XROUTER_REWARD_SANDBOX_WALL_S": "-1"}, "XROUTER_REWARD_SANDBOX_WALL_S"),
    ({"XROUTER_REWARD_MATH_WORKERS": "0"}, "XROUTER_REWARD_MATH_WORKERS"),
    ({"XROUTER_REWARD_JUDGE_MODEL": "m"}, "XROUTER_REWARD_JUDGE_MODEL"),
    ({"XROUTER_REWARD_ADAPTERS_TARGET": "127.0.0.1:1"}, "XROUTER_REWARD_JUDGE_MODEL"),
])
def test_settings_errors_name_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}"):
        load(RewardSettings, environ)


def test_settings_for_the_new_verifiers() -> None:
    config = load(RewardSettings, {"XROUTER_REWARD_SANDBOX_MEMORY_MB": "256",
                                   "XROUTER_REWARD_CHARGE_ROUTER_COST": "false"})
    assert config.sandbox_limits().memory_bytes == 256 * 2**20 and not config.charge_router_cost
    assert build_sandbox(load(RewardSettings, {"XROUTER_REWARD_SANDBOX": "off"})) is None


def test_main_exits_2_on_bad_settings() -> None:
    process = subprocess.run([sys.executable, "-m", "xrouter.reward"], capture_output=True, text=True,
                             env={"XROUTER_REWARD_K": "-1"}, timeout=20)
    assert process.returncode == 2
    assert "XROUTER_REWARD_K" in process.stderr


# --- gRPC through a real server ------------------------------------------------------------------

@pytest.fixture()
async def stub(routerbench: RecordedLabels):  # type: ignore[no-untyped-def]
    scorer = Scorer({"routerbench": routerbench}, RewardConfig())
    server = GrpcServer("reward", register(scorer, max_parallel=4), TracerProvider())
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)
    await server.stop(0)


def request(response: str, **reference: str) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(prompt="q", response=response, cost_usd=0.01, cost_lambda=10.0,
                                   reference=reward_pb2.Reference(**reference))


async def test_grpc_score(stub) -> None:  # type: ignore[no-untyped-def]
    reply = await stub.Score(request("The answer is B.", task_type="multiple_choice", gold="B"))
    assert (reply.score, reply.reward, reply.detail) == (1.0, pytest.approx(0.9), "extracted B, gold B")


async def test_grpc_errors_map_to_status(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(request("B", task_type="essay"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("reference.task_type")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(request("B", task_type="recorded_label", dataset="routerbench",
                                 prompt_id="no-such-prompt"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_score_batch_in_request_order(stub, routerbench_rows) -> None:  # type: ignore[no-untyped-def]
    rows = random.Random(1).sample(routerbench_rows, 7)
    requests, expected = [], []
    for i in range(21):
        if i % 3 == 0:
            row = rows[i // 3]
            requests.append(request(row.response, task_type="recorded_label", dataset="routerbench",
                                    prompt_id=row.prompt_id))
            expected.append(row.score)
        elif i % 3 == 1:
            letter = "ABCD"[i % 4]
            requests.append(request(f"The answer is {letter}.", task_type="multiple_choice", gold="B"))
            expected.append(1.0 if letter == "B" else 0.0)
        else:
            requests.append(request(f"answer {i}", task_type="exact_match", gold=f"Answer {i % 2}"))
            expected.append(1.0 if i in (0, 1) else 0.0)
    replies = [reply async for reply in stub.ScoreBatch(iter(requests))]
    assert [r.score for r in replies] == expected
    assert [r.detail for r in replies][1] == "extracted B, gold B"


async def test_grpc_score_batch_error_names_the_item(stub) -> None:  # type: ignore[no-untyped-def]
    requests = [request("B", task_type="multiple_choice", gold="B")] * 3
    requests.insert(2, request("B", task_type="essay"))
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for reply in stub.ScoreBatch(iter(requests)):
            replies.append(reply)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("reference.task_type")
    assert "request 2" in error.value.details()
    assert len(replies) <= 2
