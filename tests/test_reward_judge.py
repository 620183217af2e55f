"""The LLM judge: its prompt, its strict parser, and the whole path through a real adapters
service (started in-process on port 0) to a judge model.

The replay backend only answers prompts it has recordings of, so the judge model here is a small
in-process backend implementing the adapters' ``Backend`` protocol: it grades by token F1 against
the reference answer and can be told to misbehave, which is what the parser must withstand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.token_count import estimate_tokens
from xrouter.adapters.catalog import ModelSpec
from xrouter.adapters.core import AdapterCore
from xrouter.adapters.server import register as register_adapters
from xrouter.api.reward.v1 import reward_pb2, reward_pb2_grpc
from xrouter.common.grpc_server import GrpcServer
from xrouter.common.errors import Unavailable
from xrouter.reward.core import Reference, Scorer
from xrouter.reward.formula import RewardConfig
from xrouter.reward.server import register as register_reward
from xrouter.reward.verifiers import f1_score
from xrouter.reward.verifiers.judge import DEFAULT_RUBRIC, Judge, judge_messages, parse_judgement

JUDGE = "local/f1-judge"


@pytest.mark.parametrize(("reply", "score"), [
    ("Clear and correct.\nSCORE: 9", 0.9), ("SCORE: 0", 0.0), ("SCORE: 10", 1.0),
    ("Reasoning...\n\nSCORE:7\n\n", 0.7),
])
def test_parse_judgement_reads_a_well_formed_reply(reply: str, score: float) -> None:
    verdict = parse_judgement(reply)
    assert (verdict.score, verdict.flagged) == (score, False)


@pytest.mark.parametrize(("reply", "finish_reason", "why"), [
    ("Looks good, I'd say 8/10.", "stop", "does not end with 'SCORE: <0-10>'"),
    ("SCORE: 8\nActually, on reflection it is weaker.", "stop", "does not end with"),
    ("SCORE: 3\nSCORE: 9", "stop", "2 grade lines"),
    ("Score: 4\nSCORE: 9", "stop", "2 grade lines"),
    ("SCORE: 11", "stop", "outside 0-10"),
    ("SCORE: 7.5", "stop", "does not end with"),
    ("score: 7", "stop", "does not end with"),
    ("**SCORE: 7**", "stop", "does not end with"),
    ("", "stop", "empty"),
    ("The answer is thorough and", "length", "cut off"),
    ("SCORE: 7", "length", "cut off"),
])
def test_parse_judgement_flags_instead_of_guessing(reply: str, finish_reason: str, why: str) -> None:
    verdict = parse_judgement(reply, finish_reason)
    assert (verdict.score, verdict.flagged) == (0.0, True)
    assert why in verdict.detail and verdict.detail.endswith("not graded")


def test_judge_messages() -> None:
    system, user = judge_messages("What is 2+2?", "4", reference="four")
    assert system[0] == "system" and "SCORE: <an integer from 0 to 10>" in system[1]
    assert user[0] == "user"
    assert f"[Rubric]\n{DEFAULT_RUBRIC}" in user[1]
    assert "[User request]\nWhat is 2+2?" in user[1] and "[Reference answer]\nfour" in user[1]
    assert "[Answer to grade]\n4" in user[1]
    assert "[Reference answer]" not in judge_messages("q", "a", rubric="Be kind.")[1][1]
    assert "[Rubric]\nBe kind." in judge_messages("q", "a", rubric="Be kind.")[1][1]


class F1JudgeBackend:
    """A tiny in-process judge model: grades the answer by token F1 against the reference, or
    misbehaves when the answer asks it to. Records every conversation it was sent."""

    def __init__(self) -> None:
        self.seen: list[Sequence[tuple[str, str]]] = []

    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply:
        self.seen.append(messages)
        user = messages[-1][1]
        answer = re.search(r"\[Answer to grade\]\n(.*?)\n\nGrade the answer", user, re.DOTALL).group(1)
        reference = re.search(r"\[Reference answer\]\n(.*?)\n\n\[Answer", user, re.DOTALL)
        if "RAMBLE" in answer:
            text = "This answer is interesting, maybe a seven or so."
        elif "TWICE" in answer:
            text = "SCORE: 2\nOn second thought:\nSCORE: 9"
        else:
            grade = round(10 * f1_score(answer, reference.group(1) if reference else answer))
            text = f"The answer overlaps the reference.\nSCORE: {grade}"
        return BackendReply(text, estimate_tokens(user), estimate_tokens(text), True, "stop")


@pytest.fixture()
async def judged():  # type: ignore[no-untyped-def]
    """A real adapters server with the judge model, a real reward server whose judge calls it."""
    backend = F1JudgeBackend()
    spec = ModelSpec(id=JUDGE, backend="local-judge", input_usd_per_mtok=Decimal("1"),
                     output_usd_per_mtok=Decimal("2"), context_tokens=4096, max_output_tokens=512,
                     description="in-process F1 judge")
    adapters = GrpcServer("adapters", register_adapters(AdapterCore({JUDGE: spec}, {"local-judge": backend})),
                          TracerProvider())
    adapters_port = await adapters.start()
    to_adapters = grpc.aio.insecure_channel(f"127.0.0.1:{adapters_port}")
    scorer = Scorer({}, RewardConfig(), judge=Judge(to_adapters, JUDGE, timeout_s=10))
    reward = GrpcServer("reward", register_reward(scorer), TracerProvider())
    reward_port = await reward.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{reward_port}") as channel:
        yield reward_pb2_grpc.RewardServiceStub(channel), backend, adapters
    await reward.stop(0)
    await to_adapters.close()
    await adapters.stop(0)


def judge_request(response: str, gold: str = "Paris is the capital of France",
                  rubric: str = "") -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        prompt="What is the capital of France?", response=response, cost_usd=0.1, cost_lambda=1.0,
        reference=reward_pb2.Reference(task_type="judge", gold=gold, rubric=rubric))


async def test_judge_grades_through_the_adapters(judged) -> None:  # type: ignore[no-untyped-def]
    stub, backend, _ = judged
    good = await stub.Score(judge_request("Paris is the capital of France", rubric="Be exact."))
    assert (good.score, good.reward, good.flagged) == (1.0, pytest.approx(0.9), False)
    assert good.detail.startswith(f"judge grade 10/10 (judge {JUDGE}, $0.0")
    poor = await stub.Score(judge_request("Lyon"))
    assert (poor.score, poor.reward, poor.flagged) == (0.0, 0.0, False)
    system, user = backend.seen[0]
    assert system[0] == "system" and "[Rubric]\nBe exact." in user[1]
    assert "[User request]\nWhat is the capital of France?" in user[1]


@pytest.mark.parametrize("answer", ["RAMBLE on", "say TWICE"])
async def test_unparseable_judge_reply_is_flagged(judged, answer: str) -> None:  # type: ignore[no-untyped-def]
    stub, _, _ = judged
    reply = await stub.Score(judge_request(answer))
    assert (reply.score, reply.reward, reply.flagged) == (0.0, 0.0, True)
    assert "not graded" in reply.detail


async def test_judge_errors(judged) -> None:  # type: ignore[no-untyped-def]
    stub, _, adapters = judged
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(reward_pb2.ScoreRequest(
            response="x", cost_lambda=1.0, reference=reward_pb2.Reference(task_type="judge")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("prompt: is required for judge scoring")
    await adapters.stop(0)  # the judge model's service goes away
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(judge_request("Paris"))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details().startswith(f"judge model {JUDGE!r} call failed: UNAVAILABLE")


async def test_unknown_judge_model_is_unavailable_not_a_grade(judged) -> None:  # type: ignore[no-untyped-def]
    stub, _, adapters = judged
    async with grpc.aio.insecure_channel(f"127.0.0.1:{adapters.port}") as channel:
        scorer = Scorer({}, judge=Judge(channel, "no/such-model"))
        with pytest.raises(Unavailable, match="judge model 'no/such-model' call failed: NOT_FOUND"):
            await scorer.score("q", "a", Reference("judge"), 0.0, 1.0)
