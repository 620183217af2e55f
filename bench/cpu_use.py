"""CPU time per process role, for the benches: where a request's CPU goes (on 2 cores, throughput
is CPU per request, and this figure is steadier than req/s on a shared machine).

A role is read off each descendant process's command line (``python -m xrouter.router`` is
``router``; a process without a known command — a router worker — takes its parent's role) plus
``postgres``: every process of that name on the machine (the ledger's backends; other databases'
clients count too, so it is only exact on a quiet server). A process that starts and exits between
two snapshots is missed; the stacks here keep their processes (and connection pools) for the run.
"""

from __future__ import annotations

import psutil

_MODULE_ROLES = {"xrouter.router": "router", "xrouter.adapters": "adapters", "xrouter.metering": "metering",
                 "xrouter.reward": "reward", "bench.gateway_backend": "backend"}

Snapshot = dict[int, tuple[str, float]]  # pid -> (role, CPU seconds so far)


def _role(process: psutil.Process) -> str | None:
    try:
        command = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if "-m" in command[:-1]:
        module = command[command.index("-m") + 1]
        if module in _MODULE_ROLES or module.startswith("bench."):
            return _MODULE_ROLES.get(module, module.removeprefix("bench."))
    if any(part.endswith("/litellm") or part == "litellm" for part in command[:2]):
        return "litellm"
    return None


def snapshot() -> Snapshot:
    """CPU seconds (user + system) so far of every descendant with a role, and of Postgres."""
    taken: Snapshot = {}
    descendants = {p.pid: p for p in psutil.Process().children(recursive=True)}
    roles = {pid: _role(p) for pid, p in descendants.items()}

    def inherited(pid: int) -> str | None:  # a worker's role is its nearest known ancestor's
        seen = set()
        while pid in descendants and pid not in seen:
            if roles[pid] is not None:
                return roles[pid]
            seen.add(pid)
            try:
                pid = descendants[pid].ppid()
            except psutil.NoSuchProcess:
                return None
        return None

    for pid, process in descendants.items():
        role = inherited(pid)
        if role is None:
            continue
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        taken[pid] = (role, times.user + times.system)
    for process in psutil.process_iter(["name", "cpu_times"]):
        if process.info["name"] == "postgres" and process.info["cpu_times"] is not None:
            times = process.info["cpu_times"]
            taken[process.pid] = ("postgres", times.user + times.system)
    return taken


def per_request_ms(before: Snapshot, after: Snapshot, requests: float) -> dict[str, float]:
    """CPU milliseconds per request per role between two snapshots (a new process counts whole)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        start = before.get(pid)
        spent = seconds - start[1] if start is not None and start[0] == role else seconds
        used[role] = used.get(role, 0.0) + spent
    if requests <= 0:
        return {}
    figures = {role: round(seconds * 1000 / requests, 3) for role, seconds in sorted(used.items())}
    figures["total"] = round(sum(used.values()) * 1000 / requests, 3)
    return figures
