"""`xrouter up` as a newcomer runs it: four separate processes on loopback, the `xrouter route`
command, spans really leaving each process over OTLP/gRPC, and a graceful stop on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from xrouter.api.common.v1 import common_pb2
from xrouter.api.reward.v1 import reward_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes
from xrouter.supervisor import running_stack


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace receiver: keeps (service name, span name, trace id) of every span."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((attributes.get("service.name", ""), span.name, span.trace_id.hex()))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture()
def receiver():  # type: ignore[no-untyped-def]
    sink = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield sink, port
    server.stop(None)


def test_up_route_and_spans_over_otlp(tmp_path, receiver) -> None:  # type: ignore[no-untyped-def]
    sink, port = receiver
    prompt = next(read_outcomes(ROUTERBENCH)).prompt
    all_four = {"xrouter-router", "xrouter-adapters", "xrouter-metering", "xrouter-reward"}
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with running_stack(tmp_path, extra_env=otel) as info:
        routed = subprocess.run(
            [sys.executable, "-m", "xrouter.cli", "--home", str(tmp_path), "route", prompt, "--policy", "cascade"],
            capture_output=True, text=True, timeout=60, env={**os.environ})
        assert routed.returncode == 0, routed.stderr
        trace_id = routed.stdout.rsplit("trace ", 1)[1].strip()
        assert len(trace_id) == 32 and "total $" in routed.stdout
        row = next(read_outcomes(ROUTERBENCH))
        with grpc.insecure_channel(info["router"]) as channel:
            scored = router_pb2_grpc.RouterServiceStub(channel).Route(router_pb2.RouteRequest(
                messages=[common_pb2.ChatMessage(role="user", content=row.prompt)],
                reference=reward_pb2.Reference(task_type="recorded_label", dataset="routerbench",
                                               prompt_id=row.prompt_id)), timeout=30,
                metadata=(("authorization", f"Bearer {info['api_key']}"),))
        assert scored.HasField("score")
        # The local key is kept private; metrics are on their own port, not on the public HTTP one.
        assert (tmp_path / "api-keys.json").stat().st_mode & 0o077 == 0
        with urllib.request.urlopen(info["router_metrics"], timeout=10) as response:
            assert 'xrouter_cost_usd_total{model=' in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(info["http"] + "/metrics", timeout=10)
        assert refused.value.code == 404
        bad = subprocess.run([sys.executable, "-m", "xrouter.cli", "--home", str(tmp_path), "route", prompt,
                              "--lambda", "-2"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "INVALID_ARGUMENT: cost_lambda" in bad.stderr
    # The stack stopped on SIGTERM: each service drained and flushed its spans before exiting.
    def services_of(trace: str) -> set[str]:
        return {service for service, _, span_trace in sink.spans if span_trace == trace}

    deadline = time.monotonic() + 10
    while services_of(scored.trace_id) != all_four and time.monotonic() < deadline:
        time.sleep(0.2)
    assert services_of(scored.trace_id) == all_four
    assert services_of(trace_id) == all_four - {"xrouter-reward"}  # no reference: nothing to score
    for name in ("adapters", "metering", "reward", "router"):
        log = (tmp_path / f"{name}.log").read_text()
        assert "SIGTERM received, draining" in log, f"{name} did not drain on SIGTERM:\n{log[-2000:]}"
    assert not (tmp_path / "stack.json").exists()
