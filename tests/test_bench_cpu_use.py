"""The gateway bench's CPU accounting (bench/cpu_use.py): a child process's role is read off its
command line, and the CPU it spends serving requests shows up as that role's, per request."""

from __future__ import annotations

import json
import urllib.request

from bench import cpu_use, gateway_stack


def test_the_cpu_a_child_spends_serving_requests_is_counted_under_its_role() -> None:
    with gateway_stack.backend(gap_ms=1) as url:
        before = cpu_use.snapshot()
        assert "backend" in {role for role, _ in before.values()}
        body = json.dumps({"model": "instant", "messages": [{"role": "user", "content": "hi"}]}).encode()
        for _ in range(300):
            request = urllib.request.Request(f"{url}/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
        figures = cpu_use.per_request_ms(before, cpu_use.snapshot(), 300)
    assert figures["backend"] > 0  # 300 answers cost the backend process some CPU
    assert figures["total"] >= figures["backend"]
    assert set(figures) <= {"backend", "postgres", "total"}  # this test's own process has no role


def test_per_request_ms_counts_a_new_process_whole_and_an_old_one_by_its_delta() -> None:
    before = {1: ("router", 2.0), 2: ("metering", 1.0)}
    after = {1: ("router", 2.5), 2: ("metering", 1.5), 3: ("router", 0.5)}
    assert cpu_use.per_request_ms(before, after, 100) == {"metering": 5.0, "router": 10.0, "total": 15.0}
    assert cpu_use.per_request_ms(before, after, 0) == {}
