"""Training-data export: requests settled (and scored) through the real gRPC service come out of
``xrouter export-episodes`` as episodes in the documented format (metering/EXPORT.md)."""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider

from xrouter import cli
from xrouter.api.common.v1 import common_pb2
from xrouter.api.metering.v1 import metering_pb2, metering_pb2_grpc
from xrouter.common.grpc_server import GrpcServer
from xrouter.metering import export
from xrouter.metering import server as metering_server
from xrouter.metering.ledger import CallRecord, Ledger, Settlement
from xrouter.metering.store import make_engine

from ledger_clock import NOON, Clock  # noqa: E402 - tests/ helper module


@pytest.fixture()
def clock() -> Clock:
    return Clock(NOON)


@pytest.fixture()
def ledger(database_url: str, clock: Clock):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    ledger = Ledger(engine, 60.0, clock=clock)
    ledger.create_schema()
    yield ledger
    engine.dispose()


def call(request_id: str, index: int, model: str, cost: int, status: int = common_pb2.CALL_STATUS_OK,
         tenant: str = "acme") -> metering_pb2.RecordRequest:
    return metering_pb2.RecordRequest(request_id=request_id, call_index=index, tenant=tenant, model=model,
                                      input_tokens=100 + index, output_tokens=20, cost_micro_usd=cost,
                                      latency_ms=250.5, status=status, policy_version="cascade@1",
                                      trace_id="ab" * 16)


async def test_settled_and_scored_requests_export_as_episodes(
        ledger: Ledger, database_url: str, clock: Clock, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    server = GrpcServer("metering", metering_server.register(ledger), TracerProvider())
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = metering_pb2_grpc.MeteringServiceStub(channel)
    try:
        await stub.Authorize(metering_pb2.AuthorizeRequest(request_id="q1", tenant="acme", estimate_micro_usd=10_000))
        await stub.Record(call("q1", 0, "mistral-7b", 30))
        await stub.Record(call("q1", 1, "gpt-4", 4_000, common_pb2.CALL_STATUS_TIMEOUT))
        await stub.Settle(metering_pb2.SettleRequest(
            request_id="q1", tenant="acme", strategy="cascade", outcome="ok", total_cost_micro_usd=4_030, calls=2,
            policy_version="cascade@1", trace_id="ab" * 16, cost_lambda=2.0, dataset="routerbench",
            prompt_id="mmlu-123", messages=[common_pb2.ChatMessage(role="user", content="2+2? A) 4 B) 5")],
            returned_call_index=0, exploration=metering_pb2.Exploration(
                epsilon=0.1, first_call_probability=0.05, explored=True)))
        # The user's verdict beside the verifier's score: a learner reads both.
        await stub.RecordFeedback(metering_pb2.RecordFeedbackRequest(
            request_id="q1", tenant="acme", score=0.0, source=metering_pb2.FEEDBACK_SOURCE_USER, comment="wrong"))
        await stub.RecordScore(metering_pb2.RecordScoreRequest(request_id="q1", tenant="acme", score=1.0,
                                                               reward=0.991940))
        clock.now = NOON + dt.timedelta(hours=1)
        await stub.Record(call("q2", 0, "gpt-4", 5_000, tenant="globex"))
        await stub.Settle(metering_pb2.SettleRequest(request_id="q2", tenant="globex", strategy="single",
                                                     outcome="error:UNAVAILABLE", total_cost_micro_usd=5_000, calls=1))
        await stub.Record(call("q3", 0, "gpt-4", 7))  # never settled: not an episode yet
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordScore(metering_pb2.RecordScoreRequest(request_id="q2", tenant="globex", score=1.5))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith("score: ")
    finally:
        await channel.close()
        await server.stop(0)

    def ids(path: pathlib.Path) -> list[str]:
        with open(path, encoding="utf-8") as lines:
            return [episode["request_id"] for episode in export.read_jsonl(lines)]

    out = tmp_path / "episodes.jsonl"
    assert cli.main(["export-episodes", "--url", database_url, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 episodes to {out}"
    with open(out, encoding="utf-8") as lines:
        first, second = export.read_jsonl(lines)
    assert first == {
        "schema": "xrouter.episode/v1", "request_id": "q1", "tenant": "acme", "settled_at": "2025-03-15T12:00:00Z",
        "policy_version": "cascade@1", "trace_id": "ab" * 16, "strategy": "cascade", "outcome": "ok",
        "cost_lambda": 2.0, "prompt": {"dataset": "routerbench", "prompt_id": "mmlu-123"},
        "messages": [{"role": "user", "content": "2+2? A) 4 B) 5"}],
        "calls": [
            {"index": 0, "model": "mistral-7b", "role": "tool", "status": "ok", "input_tokens": 100, "output_tokens": 20,
             "cost_micro_usd": 30, "latency_ms": 250.5, "at": "2025-03-15T12:00:00Z"},
            {"index": 1, "model": "gpt-4", "role": "tool", "status": "timeout", "input_tokens": 101, "output_tokens": 20,
             "cost_micro_usd": 4_000, "latency_ms": 250.5, "at": "2025-03-15T12:00:00Z"}],
        "reported_cost_micro_usd": 4_030, "cost_micro_usd": 4_030, "cost_usd": "0.004030",
        "score": 1.0, "reward": 0.99194, "scored_at": "2025-03-15T12:00:00Z",
        "returned_call": {"index": 0, "model": "mistral-7b"},
        "exploration": {"epsilon": 0.1, "first_call_probability": 0.05, "first_call_explored": True},
        "feedback": {"score": 0.0, "source": "user", "comment": "wrong", "at": "2025-03-15T12:00:00Z"}}
    assert (second["request_id"], second["prompt"], second["messages"], second["score"], second["cost_lambda"],
            second["returned_call"], second["exploration"], second["feedback"]) == (
        "q2", None, None, None, None, None, None, None)

    scored = tmp_path / "scored.jsonl"
    assert cli.main(["export-episodes", "--url", database_url, "--out", str(scored), "--scored-only"]) == 0
    assert ids(scored) == ["q1"]
    later = tmp_path / "later.jsonl"
    assert cli.main(["export-episodes", "--url", database_url, "--out", str(later), "--since",
                     "2025-03-15T12:30:00", "--tenant", "globex"]) == 0
    assert ids(later) == ["q2"]
    assert not list(tmp_path.glob("*.partial"))
    # A .gz name is gzip (it was plain text that `xrouter learn` then refused), and what the export
    # writes passes the learner's strict reader, line for line.
    from xrouter_training.learn import read_episodes

    packed = tmp_path / "episodes.jsonl.gz"
    assert cli.main(["export-episodes", "--url", database_url, "--out", str(packed)]) == 0
    assert read_episodes(packed) == read_episodes(out) == [first, second]
    capsys.readouterr()
    assert cli.main(["export-episodes", "--url", database_url, "--out", str(tmp_path / "none.jsonl"),
                     "--since", "2026-01-02", "--until", "2025-01-01"]) == 2
    assert "is not after --since" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_pages_cover_every_episode_once_even_with_equal_times(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PAGE", 2)
    for number in range(7):  # all settled at the same instant: pages must break ties by request id
        ledger.record(CallRecord(f"r{number}", 0, "acme", "m", 1, 1, number, 1.0, "CALL_STATUS_OK"))
        ledger.settle(Settlement(f"r{number}", "acme", "single", "ok", number, 1))
    episodes = list(export.episodes(ledger.engine))
    assert [e["request_id"] for e in episodes] == [f"r{n}" for n in range(7)]
    assert [e["cost_micro_usd"] for e in episodes] == list(range(7))


def test_reading_an_export_refuses_other_formats(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"schema": "something/v9"}) + "\n")
    with open(path, encoding="utf-8") as lines, pytest.raises(ValueError, match="line 1: not an xrouter.episode/v1"):
        list(export.read_jsonl(lines))
