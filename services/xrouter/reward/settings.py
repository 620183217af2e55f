"""Reward service settings, read once from the environment."""

from __future__ import annotations

import pathlib
from typing import Annotated

from pydantic import Field

from xrouter.common.outcomes import ROUTERBENCH
from xrouter.common.settings import Flag, Port, Settings, SettingsError, env
from xrouter.common.tls import TlsFiles
from xrouter.reward.sandbox import SandboxLimits

# A sandboxed run's own processes besides the program's: unshare (C) and PID 1 (boot.py, a
# standard-library Python), with headroom.
_RUN_OVERHEAD_MB = 64

# Dataset names that need no path because the package bundles them.
BUNDLED = {"routerbench": ROUTERBENCH}
Positive = Annotated[int, Field(gt=0)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class RewardSettings(Settings):
    """Where the reward service listens, its reward constants and its recorded-label datasets."""

    host: str = env("XROUTER_REWARD_HOST", "127.0.0.1")
    port: Port = env("XROUTER_REWARD_PORT", 50054)
    k: float = env("XROUTER_REWARD_K", 1.0, gt=0, allow_inf_nan=False,
                   help="the reward of a free correct answer (> 0)")
    cost_max: float = env("XROUTER_REWARD_COST_MAX", 0.7, ge=0, allow_inf_nan=False,
                          help="the cap on the cost penalty (>= 0)")
    # Comma-separated name=path pairs; a bare bundled name ("routerbench") needs no path.
    recorded_datasets: str = env("XROUTER_REWARD_RECORDED_DATASETS", "routerbench")
    max_parallel: Positive = env("XROUTER_REWARD_MAX_PARALLEL", 8)
    grace_s: float = env("XROUTER_REWARD_GRACE_S", 5.0, ge=0, allow_inf_nan=False)
    metrics_port: Port = env("XROUTER_REWARD_METRICS_PORT", 0)
    charge_router_cost: Flag = env("XROUTER_REWARD_CHARGE_ROUTER_COST", True,
                                   help="add the router's own cost to the cost penalty")
    # Code answers run in the sandbox; off, or on a host without namespaces, `code` is refused.
    sandbox: Flag = env("XROUTER_REWARD_SANDBOX", True)
    sandbox_wall_s: Seconds = env("XROUTER_REWARD_SANDBOX_WALL_S", 30.0)
    sandbox_cpu_s: Positive = env("XROUTER_REWARD_SANDBOX_CPU_S", 10)
    # Per process of a run (address space); a run is up to `sandbox_processes` of the answer's
    # plus the tests' process, so its worst case is (processes + 1) x this (see memory_budget_mb).
    sandbox_memory_mb: Positive = env("XROUTER_REWARD_SANDBOX_MEMORY_MB", 256)
    sandbox_processes: Positive = env("XROUTER_REWARD_SANDBOX_PROCESSES", 4,
                                 help="processes (and threads) the answer may run at once")
    sandbox_parallel: Positive = env("XROUTER_REWARD_SANDBOX_PARALLEL", 2)
    # Callers write the tests a code answer must pass (reference.code); whoever writes the tests
    # decides the score ("assert True"), so only a deployment whose every caller is trusted with
    # the reward (its own router and trainer) should turn this on. Off: code references are refused.
    client_tests: Flag = env("XROUTER_REWARD_CLIENT_TESTS", False,
                             help="accept test code written by the caller (reference.code)")
    math_workers: Positive = env("XROUTER_REWARD_MATH_WORKERS", 2)
    math_deadline_s: Seconds = env("XROUTER_REWARD_MATH_DEADLINE_S", 10.0)
    # A math worker measured 93 MiB of address space after warming up (sympy + math-verify).
    math_memory_mb: Positive = env("XROUTER_REWARD_MATH_MEMORY_MB", 512)
    # The pod's memory limit; 0 reads it from the cgroup (v2 memory.max, v1 limit_in_bytes) and
    # skips the check when there is none. The worst case of every bound above must fit in it.
    memory_limit_mb: int = env("XROUTER_REWARD_MEMORY_LIMIT_MB", 0, ge=0)
    # The service itself: 60 MiB RSS measured with RouterBench's labels loaded, plus headroom.
    base_memory_mb: Positive = env("XROUTER_REWARD_BASE_MEMORY_MB", 256)
    # The judge: a model of the adapters' catalog, reached at this gRPC target. Both or neither.
    adapters_target: str = env("XROUTER_REWARD_ADAPTERS_TARGET", "")
    judge_model: str = env("XROUTER_REWARD_JUDGE_MODEL", "")
    judge_timeout_s: Seconds = env("XROUTER_REWARD_JUDGE_TIMEOUT_S", 60.0)
    # TLS (common/tls.py): this service's certificate and key, and the CA its peers' certificates
    # are checked against (also used on the judge's channel to the adapters). Empty: plaintext.
    tls_cert_file: str = env("XROUTER_REWARD_TLS_CERT_FILE", "")
    tls_key_file: str = env("XROUTER_REWARD_TLS_KEY_FILE", "")
    tls_ca_file: str = env("XROUTER_REWARD_TLS_CA_FILE", "")
    # A plaintext port serving only grpc.health.v1 (0: none), for kubelet probes, which cannot
    # speak TLS to the service port.
    health_port: Port = env("XROUTER_REWARD_HEALTH_PORT", 0)

    def sandbox_limits(self) -> SandboxLimits:
        """The per-run limits of the code sandbox."""
        return SandboxLimits(wall_s=self.sandbox_wall_s, cpu_s=self.sandbox_cpu_s,
                             memory_bytes=self.sandbox_memory_mb * 2**20,
                             processes=self.sandbox_processes)

    def memory_budget_mb(self) -> dict[str, int]:
        """The most memory each part can hold at once (MiB), from the kernel-enforced bounds:
        every process's address space (RLIMIT_AS) bounds its resident memory, and a run's /tmp
        (a tmpfs) is charged to the pod as well."""
        limits = self.sandbox_limits()
        run = ((limits.processes + 1) * limits.memory_bytes + limits.tmp_bytes) // 2**20 + _RUN_OVERHEAD_MB
        return {"sandbox": self.sandbox_parallel * run if self.sandbox else 0,
                "math": self.math_workers * self.math_memory_mb, "service": self.base_memory_mb}

    def pod_memory_limit_mb(self) -> int:
        """The pod's limit: the setting, else the cgroup's; 0 when there is none."""
        if self.memory_limit_mb:
            return self.memory_limit_mb
        for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
            try:
                text = pathlib.Path(path).read_text().strip()
            except OSError:
                continue
            # "max" (v2) or a huge number (v1's "no limit") mean unbounded.
            return int(text) // 2**20 if text.isdigit() and int(text) < 2**62 else 0
        return 0

    def datasets(self) -> dict[str, pathlib.Path]:
        """The recorded-label datasets by name, bundled names resolved to their files."""
        var = "XROUTER_REWARD_RECORDED_DATASETS"
        pairs: dict[str, pathlib.Path] = {}
        for item in filter(None, (p.strip() for p in self.recorded_datasets.split(","))):
            name, sep, path = (part.strip() for part in item.partition("="))
            if not sep and name in BUNDLED:
                resolved = BUNDLED[name]
            elif not sep or not name or not path:
                raise SettingsError(f"{var}: {item!r} is not name=path (only "
                                    f"{', '.join(sorted(BUNDLED))} may be given without a path)")
            else:
                resolved = pathlib.Path(path)
            if name in pairs:
                raise SettingsError(f"{var}: dataset {name!r} is listed twice")
            pairs[name] = resolved
        return pairs

    def tls(self) -> TlsFiles:
        """The TLS files of this service (all empty: plaintext)."""
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)

    def validate(self) -> None:
        """Fail fast, naming the variable, on values the service could not run with."""
        self.tls().validate("XROUTER_REWARD")
        if bool(self.adapters_target) != bool(self.judge_model):
            raise SettingsError("XROUTER_REWARD_JUDGE_MODEL and XROUTER_REWARD_ADAPTERS_TARGET go "
                                "together: set both to enable the judge, or neither")
        self._check_memory()
        for name, path in self.datasets().items():
            if not path.is_file():
                raise SettingsError(f"XROUTER_REWARD_RECORDED_DATASETS: {name}: no file at {path}")

    def _check_memory(self) -> None:
        """Fail at start-up when the bounds could together exceed the pod's limit: the kernel
        would then kill the whole pod (every request in flight), not the one answer at fault."""
        limit = self.pod_memory_limit_mb()
        parts = self.memory_budget_mb()
        if not limit or sum(parts.values()) <= limit:
            return
        run = parts["sandbox"] // self.sandbox_parallel if self.sandbox else 0
        raise SettingsError(
            f"XROUTER_REWARD_MEMORY_LIMIT_MB: the worst case, {sum(parts.values())} MiB, is over the "
            f"pod's {limit} MiB: {self.sandbox_parallel} sandbox runs x {run} MiB "
            f"(({self.sandbox_processes} + 1) processes x {self.sandbox_memory_mb} MiB, /tmp and "
            f"{_RUN_OVERHEAD_MB} MiB) + {self.math_workers} math workers x {self.math_memory_mb} MiB + "
            f"{self.base_memory_mb} MiB for the service. Lower XROUTER_REWARD_SANDBOX_PARALLEL, "
            "_SANDBOX_PROCESSES, _SANDBOX_MEMORY_MB, _MATH_WORKERS or _MATH_MEMORY_MB, or raise the "
            "pod's memory limit")
