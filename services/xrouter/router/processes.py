"""Several router processes on one set of ports (``XROUTER_ROUTER_PROCESSES=N``): one Python process
is one core's worth of routing (the GIL), so a pod with N cores runs N routers. The parent starts N
workers, each a whole router (its own channels, key cache, policy) listening on the same gRPC,
HTTP and health ports with SO_REUSEPORT, so the kernel spreads connections over them. The parent
binds none of them; it serves the workers' metrics merged (prometheus_client's multiprocess mode)
on the metrics port, forwards SIGTERM/SIGINT to every worker and waits for their drain, and stops
them all and exits with status 1 when one dies on its own (the pod restarts whole).

What cannot be right across processes is refused: ``LoadPolicy`` would switch one worker's policy
only (FAILED_PRECONDITION naming XROUTER_ROUTER_PROCESSES; the policy ConfigMap, which every worker
watches, switches them all); port 0 would give each worker a different port.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from xrouter.router.settings import RouterSettings

log = logging.getLogger(__name__)

_WORKER_ARG = "--worker"
_POLL_S = 0.2


def supervise(config: RouterSettings) -> int:
    """Run ``config.processes`` workers until SIGTERM/SIGINT (their drain awaited) or until one dies
    on its own; the exit status for the parent."""
    metrics_dir = tempfile.mkdtemp(prefix="xrouter-router-metrics-")
    worker_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                  # The parent serves the merged metrics on the metrics port; workers serve none.
                  "XROUTER_ROUTER_METRICS_PORT": "0"}
    if config.metrics_port:
        _serve_merged_metrics(metrics_dir, config.host, config.metrics_port)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _frame: stopping.append(number))
    signal.signal(signal.SIGINT, lambda number, _frame: stopping.append(number))
    workers = [subprocess.Popen([sys.executable, "-m", "xrouter.router.processes", _WORKER_ARG, str(index)],
                                env=worker_env) for index in range(config.processes)]
    log.info("router: %d worker processes (pids %s) on gRPC port %d, HTTP port %d", len(workers),
             ", ".join(str(w.pid) for w in workers), config.port, config.http_port)
    status = 0
    while not stopping:
        dead = next((w for w in workers if w.poll() is not None), None)
        if dead is not None:
            log.error("router worker pid %d exited with status %s: stopping the others", dead.pid, dead.returncode)
            status = 1
            break
        time.sleep(_POLL_S)
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # each drains for XROUTER_ROUTER_GRACE_S
    give_up = time.monotonic() + config.grace_s + 10.0
    for worker in workers:
        try:
            worker.wait(timeout=max(0.1, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("router worker pid %d did not stop within its grace: killed", worker.pid)
            worker.kill()
            worker.wait()
            status = 1
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _serve_merged_metrics(metrics_dir: str, host: str, port: int) -> None:
    """/metrics on ``port``: every worker's series, summed (counters, histograms) or per pid (gauges)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)
    start_http_server(port, addr=host, registry=registry)


def worker_main(argv: list[str]) -> None:
    """One worker: the router, its ports shared with its siblings."""
    if len(argv) != 2 or argv[0] != _WORKER_ARG or not argv[1].isdigit():
        sys.exit(f"usage: python -m xrouter.router.processes {_WORKER_ARG} INDEX (started by the router itself)")
    from xrouter.router.server import main

    main(worker=int(argv[1]))


if __name__ == "__main__":
    worker_main(sys.argv[1:])
