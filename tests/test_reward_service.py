"""The reward service over a real gRPC server with every verifier wired in: the new reference
fields, the router-cost and failed-episode inputs, errors that name nested fields, and ScoreBatch's
ordering and parallelism bound with slow verifiers (the sandbox) in the mix."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter.api.reward.v1 import reward_pb2, reward_pb2_grpc
from xrouter.common.grpc_server import GrpcServer
from xrouter.reward.core import Reference, Scorer
from xrouter.reward.formula import RewardConfig
from xrouter.reward.sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from xrouter.reward.server import register, to_reference
from xrouter.reward.verifiers import CodeTests, Verdict

ADD_TESTS = reward_pb2.CodeTests(asserts=["assert add(2, 3) == 5", "assert add(-1, 1) == 0"])


@pytest.fixture(scope="module")
def sandbox() -> Sandbox | None:
    try:
        box = Sandbox(SandboxLimits(wall_s=10.0, cpu_s=5), max_parallel=2)
        box.probe()
        return box
    except SandboxUnavailable:
        return None


async def serve(scorer: Scorer, max_parallel: int = 4, client_tests: bool = True):  # type: ignore[no-untyped-def]
    # These tests play a trusted caller (the deployment's own router) that writes code tests.
    server = GrpcServer("reward", register(scorer, max_parallel=max_parallel, client_tests=client_tests),
                        TracerProvider())
    port = await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture()
async def stub(sandbox: Sandbox | None):  # type: ignore[no-untyped-def]
    server, channel = await serve(Scorer({}, RewardConfig(), sandbox=sandbox))
    async with channel:
        yield reward_pb2_grpc.RewardServiceStub(channel)
    await server.stop(0)


def code_request(response: str, **fields) -> reward_pb2.ScoreRequest:  # type: ignore[no-untyped-def]
    return reward_pb2.ScoreRequest(
        prompt="Write add(a, b).", response=response, cost_usd=0.01, cost_lambda=10.0,
        reference=reward_pb2.Reference(task_type="code", code=ADD_TESTS), **fields)


def test_to_reference_keeps_every_field() -> None:
    proto = reward_pb2.Reference(task_type="code", gold="g", dataset="d", prompt_id="p", aliases=["a"],
                                 rubric="r", options="AB",
                                 code=reward_pb2.CodeTests(asserts=["assert x"], setup="s", check="c",
                                                           entry_point="f", prefix="pre"))
    assert to_reference(proto) == Reference("code", "g", "d", "p", ("a",),
                                            CodeTests(("assert x",), "s", "c", "f", "pre"), "r", "AB")
    assert to_reference(reward_pb2.Reference(task_type="math")).code is None


async def test_code_over_grpc(stub, sandbox) -> None:  # type: ignore[no-untyped-def]
    if sandbox is None:
        pytest.skip("code sandbox unavailable on this host: SKIPPED (see test_sandbox.py)")
    good = await stub.Score(code_request("```python\ndef add(a, b):\n    return a + b\n```"))
    assert (good.score, good.reward, good.flagged) == (1.0, pytest.approx(0.9), False)
    assert good.detail.startswith("passed 2 asserts in")
    bad = await stub.Score(code_request("def add(a, b):\n    return a * b"))
    assert (bad.score, bad.reward) == (0.0, 0.0)
    assert bad.detail == "failed: AssertionError at test line 1: assert add(2, 3) == 5"
    hostile = await stub.Score(code_request("import os\nwhile True:\n    os.fork()"))
    assert hostile.score == 0.0 and hostile.detail.endswith("(process limit reached)")


async def test_math_router_cost_and_failure_over_grpc(stub) -> None:  # type: ignore[no-untyped-def]
    def math(**fields) -> reward_pb2.ScoreRequest:  # type: ignore[no-untyped-def]
        return reward_pb2.ScoreRequest(prompt="q", response="so \\boxed{\\frac{1}{2}}", cost_usd=0.1,
                                       cost_lambda=1.0, reference=reward_pb2.Reference(task_type="math", gold="0.5"),
                                       **fields)
    plain = await stub.Score(math())
    assert (plain.score, plain.reward) == (1.0, pytest.approx(0.9))
    charged = await stub.Score(math(router_cost_usd=0.05))
    assert charged.reward == pytest.approx(0.85)
    failed = await stub.Score(math(failure="format error: no tool call parsed"))
    assert (failed.score, failed.reward) == (1.0, 0.0)
    assert failed.detail.endswith("episode failed (format error: no tool call parsed): reward 0")


@pytest.mark.parametrize(("reference", "field"), [
    (reward_pb2.Reference(task_type="code"), "reference.code"),
    (reward_pb2.Reference(task_type="code", code=reward_pb2.CodeTests(check="def check(c): pass")),
     "reference.code.entry_point"),
    (reward_pb2.Reference(task_type="code", code=reward_pb2.CodeTests(asserts=["assert 1", ""])),
     "reference.code.asserts[1]"),
    (reward_pb2.Reference(task_type="multiple_choice", gold="B", options="1234"), "reference.options"),
    (reward_pb2.Reference(task_type="math"), "reference.gold"),
])
async def test_errors_name_nested_fields(stub, reference, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(reward_pb2.ScoreRequest(response="x", cost_lambda=1.0, reference=reference))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Score(reward_pb2.ScoreRequest(response="x", cost_lambda=1.0, router_cost_usd=-1,
                                                 reference=reward_pb2.Reference(task_type="math", gold="1")))
    assert error.value.details().startswith("router_cost_usd: ")


class SlowScorer(Scorer):
    """A scorer whose verdicts take a random while, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__({})
        self.running = self.most = 0
        self._random = random.Random(3)

    async def _verify(self, prompt: str, response: str, reference: Reference) -> Verdict:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(self._random.uniform(0.0, 0.05))
        self.running -= 1
        return Verdict(float(int(response) % 2), f"item {response}")


async def test_score_batch_is_ordered_and_bounded() -> None:
    scorer = SlowScorer()
    server, channel = await serve(scorer, max_parallel=3)
    requests = [reward_pb2.ScoreRequest(response=str(i), cost_lambda=1.0,
                                        reference=reward_pb2.Reference(task_type="exact_match", gold="x"))
                for i in range(40)]
    async with channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        first = [r.detail async for r in stub.ScoreBatch(iter(requests))]
        again = [(r.score, r.detail) async for r in stub.ScoreBatch(iter(requests))]
    await server.stop(0)
    assert first == [f"item {i}" for i in range(40)]
    assert again == [(float(i % 2), f"item {i}") for i in range(40)]
    assert 2 <= scorer.most <= 3  # really parallel, never past the bound


async def test_score_batch_mixes_sandbox_runs_in_order(stub, sandbox) -> None:  # type: ignore[no-untyped-def]
    if sandbox is None:
        pytest.skip("code sandbox unavailable on this host: SKIPPED (see test_sandbox.py)")
    good, bad = "def add(a, b):\n    return a + b", "def add(a, b):\n    return 0"
    requests, expected = [], []
    for i in range(8):
        if i % 2:
            requests.append(code_request(good if i % 4 == 1 else bad))
            expected.append(1.0 if i % 4 == 1 else 0.0)
        else:
            requests.append(reward_pb2.ScoreRequest(
                response=f"The answer is {i}", cost_lambda=1.0,
                reference=reward_pb2.Reference(task_type="math", gold="4")))
            expected.append(1.0 if i == 4 else 0.0)
    assert [r.score async for r in stub.ScoreBatch(iter(requests))] == expected


async def test_check_reference_refuses_what_score_would_refuse_whatever_the_answer() -> None:
    """CheckReference (asked by the router before any model call) refuses, naming the field, each
    reference Score would refuse for every possible answer, and accepts the usable ones."""
    from xrouter.reward.verifiers import RecordedLabels
    from xrouter.common.outcomes import Outcome

    labels = RecordedLabels([Outcome(source="s", task="t", prompt_id="p1", prompt="q", gold=None, model="m",
                                        score=1.0, response="B", prompt_tokens=None, completion_tokens=None,
                                        cost_usd=None)], name="set")
    server, channel = await serve(Scorer({"set": labels}, RewardConfig()), client_tests=False)
    stub = reward_pb2_grpc.RewardServiceStub(channel)
    Ref = reward_pb2.Reference
    try:
        for usable in (Ref(task_type="multiple_choice", gold="b"), Ref(task_type="multiple_choice", gold="Y", options="XY"),
                       Ref(task_type="exact_match", gold="Paris"), Ref(task_type="math", gold="4"),
                       Ref(task_type="math", gold="Tuesday"), Ref(task_type="math", gold="Hence #### 7"),
                       Ref(task_type="recorded_label", dataset="set", prompt_id="p1")):
            await stub.CheckReference(reward_pb2.CheckReferenceRequest(reference=usable))
        refused = [
            (Ref(task_type="vibes"), grpc.StatusCode.INVALID_ARGUMENT, "reference.task_type"),
            (Ref(task_type="multiple_choice", gold="Z"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            (Ref(task_type="multiple_choice", gold="A", options="XY"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            (Ref(task_type="multiple_choice", gold="A", options="A1"), grpc.StatusCode.INVALID_ARGUMENT, "reference.options"),
            (Ref(task_type="token_f1"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            # A math gold no answer can match scored every answer 0, and that 0 was learned from.
            (Ref(task_type="math", gold="\\frac{1}{"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            (Ref(task_type="math", gold="so \\boxed{"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            (Ref(task_type="math", gold="\\boxed{}"), grpc.StatusCode.INVALID_ARGUMENT, "reference.gold"),
            (Ref(task_type="recorded_label", dataset="other", prompt_id="p1"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.dataset"),
            (Ref(task_type="recorded_label", dataset="set", prompt_id="p2"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.prompt_id"),
            (Ref(task_type="recorded_label", dataset="set"), grpc.StatusCode.INVALID_ARGUMENT, "reference.prompt_id"),
            (Ref(task_type="judge"), grpc.StatusCode.INVALID_ARGUMENT, "reference.task_type"),
            (Ref(task_type="code"), grpc.StatusCode.INVALID_ARGUMENT, "reference.code"),
            (Ref(task_type="code", code=ADD_TESTS), grpc.StatusCode.PERMISSION_DENIED, "reference.code"),
            (Ref(task_type="multiple_choice", gold="A", options="AAB"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.options"),
            # A field the verifier does not read was silently ignored.
            (Ref(task_type="multiple_choice", gold="A", rubric="be kind"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.rubric"),
            (Ref(task_type="multiple_choice", gold="A", aliases=["a"]), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.aliases"),
            (Ref(task_type="recorded_label", dataset="set", prompt_id="p1", gold="B"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.gold"),
            # Echoed whole, the message outgrew gRPC's 16 KiB header limit: RESOURCE_EXHAUSTED ("received
            # metadata size exceeds hard limit") reached the client instead (grpc_server cuts it now).
            (Ref(task_type="x" * 100_000), grpc.StatusCode.INVALID_ARGUMENT, "reference.task_type"),
            (Ref(task_type="recorded_label", dataset="d" * 100_000, prompt_id="p1"), grpc.StatusCode.INVALID_ARGUMENT,
             "reference.dataset"),
        ]
        for reference, code, field in refused:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub.CheckReference(reward_pb2.CheckReferenceRequest(reference=reference))
            assert (error.value.code(), error.value.details().split(":")[0]) == (code, field), reference
    finally:
        await channel.close()
        await server.stop(0)
