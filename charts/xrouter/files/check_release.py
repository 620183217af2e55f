"""`helm test` for an xrouter release: the router's health (gRPC and HTTP), then one request routed
end to end (router -> adapters -> metering, and reward when --score is given).

Runs in the runtime image, so it uses the package's own generated stubs. Exits non-zero, naming
what failed, on any problem. Without --prompt it routes a RouterBench validation prompt, which the
bundled replay catalog can answer.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xrouter.api.common.v1 import common_pb2
from xrouter.api.reward.v1 import reward_pb2
from xrouter.api.router.v1 import router_pb2, router_pb2_grpc

ROUTER_SERVICE = "xrouter.router.v1.RouterService"


def fail(message: str) -> None:
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check_grpc_health(channel: grpc.Channel, timeout: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", ROUTER_SERVICE):
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
        if status != health_pb2.HealthCheckResponse.SERVING:
            fail(f"router health for {service or '<server>'!r} is "
                 f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    print("ok: router gRPC health SERVING")


def check_http_health(base_url: str, timeout: float) -> None:
    with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout) as reply:  # noqa: S310 - cluster URL
        body = json.load(reply)
    if body.get("status") != "ok":
        fail(f"{base_url}/healthz answered {body}")
    print("ok: router HTTP /healthz")


def bundled_prompt() -> tuple[str, str]:
    """A (prompt id, prompt) from the validation split of the bundled RouterBench set."""
    from xrouter.common.outcomes import ROUTERBENCH, read_outcomes, split_of

    for row in read_outcomes(ROUTERBENCH):
        if split_of(row.prompt_id) == "validation":
            return row.prompt_id, row.prompt
    fail("the bundled RouterBench set has no validation prompt")
    raise AssertionError  # unreachable


def route_one(channel: grpc.Channel, prompt: str, prompt_id: str, score: bool, timeout: float, api_key: str) -> None:
    request = router_pb2.RouteRequest(messages=[common_pb2.ChatMessage(role="user", content=prompt)],
                                      tenant="helm-test")
    if score and prompt_id:
        request.reference.CopyFrom(reward_pb2.Reference(
            task_type="recorded_label", dataset="routerbench", prompt_id=prompt_id))
    try:
        reply = router_pb2_grpc.RouterServiceStub(channel).Route(
            request, timeout=timeout, metadata=(("authorization", f"Bearer {api_key}"),))
    except grpc.RpcError as error:
        fail(f"Route: {error.code().name}: {error.details()}")
    ok_calls = [c for c in reply.calls if c.status == common_pb2.CALL_STATUS_OK]
    if not reply.answer.strip():
        fail("Route returned an empty answer")
    if not ok_calls:
        fail(f"Route made no successful model call ({len(reply.calls)} attempted)")
    if score and prompt_id and not reply.HasField("score"):
        fail("Route carried a reference but the reply has no score: is the reward service wired?")
    print(f"ok: routed one request: {len(ok_calls)} successful call(s), ${reply.total_cost_usd:.6f}, "
          f"policy {reply.policy_kind}@{reply.policy_version}, trace {reply.trace_id or '-'}"
          + (f", score {reply.score}" if reply.HasField("score") else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True, help="router gRPC host:port")
    parser.add_argument("--http", default="", help="router HTTP base URL ('' skips the HTTP check)")
    parser.add_argument("--prompt", default="", help="prompt to route (default: a bundled RouterBench one)")
    parser.add_argument("--score", action="store_true", help="score the answer through the reward service")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--ca", default="", help="CA file: the router's gRPC port speaks TLS")
    args = parser.parse_args(argv)
    api_key = os.environ.get("XROUTER_API_KEY", "")
    if not api_key:
        fail("XROUTER_API_KEY is empty: the router refuses keyless calls (the chart passes its admin key)")
    prompt_id, prompt = ("", args.prompt) if args.prompt else bundled_prompt()
    channel = (grpc.secure_channel(args.grpc, grpc.ssl_channel_credentials(pathlib.Path(args.ca).read_bytes()))
               if args.ca else grpc.insecure_channel(args.grpc))
    with channel:
        check_grpc_health(channel, args.timeout)
        if args.http:
            check_http_health(args.http, args.timeout)
        route_one(channel, prompt, prompt_id, args.score, args.timeout, api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
