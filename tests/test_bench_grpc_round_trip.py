"""bench.grpc_round_trip measures a real round trip to each kind of server it names."""

from __future__ import annotations

import json

import pytest

from bench import grpc_round_trip


@pytest.mark.parametrize("kind", grpc_round_trip.SERVERS)
def test_each_server_kind_answers_round_trips(kind: str) -> None:
    figures = grpc_round_trip.measure(kind, count=20)
    assert figures["round_trips"] == 20
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_the_bench_writes_its_figures(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(grpc_round_trip, "RESULTS", tmp_path / "grpc_round_trip.json")
    monkeypatch.setattr(grpc_round_trip, "measure", lambda kind, count: {"p50_ms": 1.0, "p99_ms": 2.0, "mean_ms": 1.2,
                                                                         "round_trips": count})
    assert grpc_round_trip.main(["--quick"]) == 0
    written = json.loads((tmp_path / "grpc_round_trip.json").read_text())
    assert set(written["servers"]) == set(grpc_round_trip.SERVERS)
    assert written["servers"]["sync"]["round_trips"] == 300
