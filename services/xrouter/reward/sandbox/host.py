"""Runs untrusted Python in a sandbox and says how it ended.

Isolation is the kernel's, not Python's: ``unshare`` puts the program in new PID, network and mount
namespaces (plus a user namespace when the service is not root), and ``boot.py``, PID 1 there,
makes every inherited mount read-only, changes root to a fresh read-only tmpfs that holds only
/usr, /lib*, the interpreter's library, four devices, a new /proc and a small private /tmp (the only
writable place), sets resource limits, drops every capability (to a throw-away uid when the
host is real root) and installs a seccomp filter (``seccomp.py``) before running the program.
A verdict (:meth:`Sandbox.judge`) comes from a tests' process apart from the answer's (``boot.py``). What that guarantees, and what it does not, is in
``GUARANTEES``. Why not Python-level guards (audit hooks, a patched ``socket``): code in the same
interpreter can undo them (ctypes, or just ``os.system``); the kernel's checks it cannot.

Everything here is safe to call from many threads at once: no ``preexec_fn``, one process tree and
one private file system per run, nothing shared on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Literal

from xrouter.reward.sandbox import seccomp

BOOT = pathlib.Path(__file__).with_name("boot.py")
# Environment of the sandboxed process: nothing from the service's own (no keys, no tokens).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
             "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"}
# Throw-away uids for a root host: high, unnamed, one per run so concurrent runs do not share a
# process count (RLIMIT_NPROC is per uid).
_UID_BASE, _UID_SPAN = 1_000_000, 1_000_000

GUARANTEES = """\
Holds (enforced by the kernel, tested in tests/test_sandbox.py and tests/security/):
- the verdict is not the answer's to write (Sandbox.judge): the answer runs in a fresh interpreter
  (exec'd, so it holds no copy of the harness's memory and never sees the tests or their expected
  values); the tests run in a second process holding none of the answer's code, which calls the
  answer's functions through a pipe that carries only plain values (exact built-in types) and
  handles; the tests' exit status is the verdict. Walking frames, gc, patching builtins or
  AssertionError, objects equal to everything, exit(0) at any point, forged messages: a failure;
- the tests' process is out of the answer's reach: not dumpable (its memory and /proc files are
  closed to the answer), under another uid when the host is root, and ptrace/process_vm_* are
  filtered, and so is any signal to it; PID 1 handles no signal and kill(1) is filtered;
- a seccomp filter on every sandboxed process (x86_64): no sockets but AF_UNIX, no ptrace or
  process_vm_*, no new namespaces (unshare, setns, clone with CLONE_NEW*, clone3), no mounts, no
  kill of PID 1 or of process groups, none of bpf, perf_event_open, userfaultfd, io_uring, key
  rings, modules, kexec, open_by_handle_at, personality; everything else is allowed (a deny list);
- no network: a new network namespace with only a loopback that is down, besides the filter;
- no way out of the process tree: PID namespace; when the run ends (or is killed at the wall-time
  limit) PID 1 exits and the kernel kills every process left, daemonised or not;
- a root of its own: /usr, /lib*, the interpreter and its library, /dev/{null,zero,random,urandom},
  a new /proc (its own processes only) and /tmp, all read-only but /tmp (a private, size-capped
  tmpfs that vanishes with the run); the host's /etc, /home, /root, /run (and the sockets there),
  /var, /sys and the service's files are not in it; every inherited mount is read-only besides;
- CPU time (RLIMIT_CPU), address space (RLIMIT_AS), processes (RLIMIT_NPROC: counted for a
  throw-away uid when the host is root, since root ignores it; per user namespace otherwise),
  file size, open files; core dumps off; hard limits equal soft ones so they cannot be raised;
- memory per run at most (processes + 1) x memory_bytes + the /tmp size; the reward service checks
  at start-up that its runs, math workers and itself fit the pod's memory limit;
- no capabilities and no_new_privs: setuid binaries give nothing back;
- a scrubbed environment; the service's variables and /proc of its processes are out of sight;
- stdout+stderr capped (the run is killed past the cap) and wall time capped.
Does not hold:
- a kernel exploit in an allowed system call escapes it (no gVisor): for hostile multi-tenant use,
  run the reward service under a sandboxed runtime (e.g. a gVisor RuntimeClass) as well;
- memory is bounded by address-space limits per process, not by a cgroup of the run: the bound is
  the sum above, not a shared pool;
- without root (one user namespace) the answer and the tests share a uid: only the filter (no
  signal to the tests' pid) and non-dumpability keep them apart, not the uid;
- tests that use a name they neither import nor define get the answer's object for it (the
  benchmarks' own semantics): what such a name computes on the tests' side is the answer's to say;
- /usr and the interpreter's library are readable (not writable): nothing secret belongs there;
- Sandbox.run (one process, no tests) is not a verdict: a program can fake reaching its end;
- the filter is built for x86_64; on other machines only the layers above hold.
"""

Status = Literal["passed", "failed", "timeout", "cpu_limit", "memory_limit", "output_limit",
                 "killed", "early_exit"]


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """Tests for :meth:`Sandbox.judge`: ``tests`` (source run in the tests' process), ``prompt``
    (code run there first, for its helpers: HumanEval's prompt) and ``entry_point`` (a name always
    taken from the answer, even when the prompt defines a stub of it)."""

    __test__ = False  # not a pytest class, despite its name

    tests: str
    prompt: str = ""
    entry_point: str = ""


class SandboxUnavailable(RuntimeError):
    """This host cannot build the sandbox (no namespaces); nothing was run."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. ``processes`` counts threads too, and the program itself. The CPU default
    covers every canonical MBPP / HumanEval solution (the slowest, MBPP 123, takes 6.5 s); the
    wall limit leaves room for a busy machine. ``memory_bytes`` bounds each process (the answer's
    and the tests'), so a run holds at most ``(processes + 1) * memory_bytes``: with the defaults,
    1.25 GiB (every canonical MBPP / HumanEval solution passes within them)."""

    wall_s: float = 30.0
    cpu_s: int = 10
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 64 * 2**10
    file_bytes: int = 16 * 2**20
    tmp_bytes: int = 32 * 2**20
    processes: int = 4
    open_files: int = 64

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(f"SandboxLimits.{field.name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """How a run ended: ``status`` and a one-line ``reason``, with the captured output."""

    status: Status
    reason: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float | None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def namespace_command(root: bool) -> list[str]:
    """``unshare`` with the namespaces the sandbox needs (a user namespace only when not root)."""
    unshare = shutil.which("unshare", path=CLEAN_ENV["PATH"])
    if unshare is None:
        raise SandboxUnavailable("the sandbox needs util-linux's `unshare`, which is not installed")
    user = [] if root else ["--user", "--map-root-user"]
    # --kill-child: if unshare itself is killed, its child (PID 1 inside) dies, and with it the rest.
    return [unshare, *user, "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]


class Sandbox:
    """Runs Python programs in the namespaced sandbox. ``probe()`` checks the host can."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), python: str = sys.executable,
                 max_parallel: int = 2) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
        self.limits = limits
        self._python = python
        self._root = os.geteuid() == 0
        self._command = [*namespace_command(self._root), python, "-I", "-S", str(BOOT)]
        # Runs beyond this wait: each holds a CPU, and wall-time limits should measure the program.
        self._slots = threading.BoundedSemaphore(max_parallel)

    def describe(self) -> str:
        """How runs are isolated on this host, in a few words."""
        who = "a throw-away uid per run (host is root)" if self._root else "a user namespace"
        syscalls = "a seccomp filter" if seccomp.supported() else "no seccomp filter (not x86_64)"
        return (f"PID+network+mount namespaces, {who}, a minimal read-only root, {syscalls}, "
                f"verdicts from a tests' process apart from the answer's, "
                f"limits {dataclasses.asdict(self.limits)}")

    def probe(self) -> None:
        """Raise :class:`SandboxUnavailable` naming the cause unless a trivial program passes."""
        result = self.run("import json, re, math, collections, socket")
        if not result.passed:
            raise SandboxUnavailable(f"the sandbox cannot run a trivial program: {result.reason}")
        # And a verdict: the answer's fresh interpreter must start inside the sandbox's root.
        result = self.judge("def one():\n    return 1\n", TestSpec("assert one() == 1\n"))
        if not result.passed:
            raise SandboxUnavailable(f"the sandbox cannot judge a trivial answer: {result.reason}")

    def run(self, program: str, limits: SandboxLimits | None = None) -> SandboxResult:
        """Run ``program`` (Python source) once, in one process; ``passed`` means it ran to its
        end. Not a verdict on untrusted code (code can fake reaching its end): use :meth:`judge`.
        Never raises for anything the program does (:class:`SandboxUnavailable` means the host
        failed, before the program ran)."""
        with self._slots:
            return self._run(program, None, limits or self.limits)

    def judge(self, answer: str, tests: TestSpec, limits: SandboxLimits | None = None) -> SandboxResult:
        """Run the ``answer``'s code in one process and ``tests`` in another that reaches it only
        through plain values (see ``boot.py``); ``passed`` means every test ran to its end."""
        with self._slots:
            return self._run(answer, dataclasses.asdict(tests), limits or self.limits)

    def _run(self, program: str, tests: dict[str, str] | None, limits: SandboxLimits) -> SandboxResult:
        nonce = secrets.token_hex(16)
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if self._root else 0
        # The tests' process gets a uid of its own, so the answer cannot signal or read it.
        tests_uid = _UID_BASE + _UID_SPAN + secrets.randbelow(_UID_SPAN) if self._root else 0
        config: dict[str, object] = {"program": program, "nonce": nonce, "uid": uid,
                                     "tests_uid": tests_uid, "tests": tests,
                                     "limits": dataclasses.asdict(limits)}
        report_read, report_write = os.pipe()
        # Popen passes the pipe under the same number; boot.py is told which one it is.
        config["report_fd"] = report_write
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=CLEAN_ENV, cwd="/", start_new_session=True, pass_fds=(report_write,),
                close_fds=True)
        except OSError as error:
            os.close(report_read)
            os.close(report_write)
            raise SandboxUnavailable(f"cannot start the sandbox: {error}") from error
        os.close(report_write)
        try:
            return self._supervise(process, json.dumps(config).encode(), report_read, limits,
                                   started, nonce)
        finally:
            os.close(report_read)
            if process.poll() is None:
                _kill(process)

    def _supervise(self, process: subprocess.Popen[bytes], config: bytes, report_fd: int,
                   limits: SandboxLimits, started: float, nonce: str) -> SandboxResult:
        assert process.stdin and process.stdout and process.stderr
        try:
            process.stdin.write(config)
            process.stdin.close()
        except BrokenPipeError:
            pass  # the sandbox died at start-up; its report says why
        streams = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): bytearray(),
                   report_fd: bytearray()}
        selector = selectors.DefaultSelector()
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        deadline = started + limits.wall_s
        ended: Status | None = None
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                ended = "timeout"
                break
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                streams[key.fd] += chunk
            output = len(streams[process.stdout.fileno()]) + len(streams[process.stderr.fileno()])
            if output > limits.output_bytes:
                ended = "output_limit"
                break
        selector.close()
        if ended:
            _kill(process)
        process.wait()
        wall = time.monotonic() - started
        stdout = bytes(streams[process.stdout.fileno()][:limits.output_bytes]).decode("utf-8", "replace")
        stderr = bytes(streams[process.stderr.fileno()][:limits.output_bytes]).decode("utf-8", "replace")
        process.stdout.close()
        process.stderr.close()
        if ended == "timeout":
            return SandboxResult("timeout", f"killed at the wall-time limit of {limits.wall_s:g}s "
                                 "with every process it started", None, stdout, stderr, wall, None)
        if ended == "output_limit":
            return SandboxResult("output_limit", f"killed for writing more than "
                                 f"{limits.output_bytes} bytes of output", None, stdout, stderr, wall, None)
        return _classify(bytes(streams[report_fd]), process.returncode, limits, nonce, stdout,
                         stderr, wall)


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Kill the whole tree: unshare's process group, and its child (PID 1 inside, by
    --kill-child), whose exit makes the kernel kill everything else in the namespace."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _classify(raw: bytes, returncode: int, limits: SandboxLimits, nonce: str, stdout: str,
              stderr: str, wall: float) -> SandboxResult:
    try:
        record = json.loads(raw) if raw else {}
    except ValueError:
        record = {}
    if "setup_error" in record:
        raise SandboxUnavailable(f"sandbox set-up failed: {record['setup_error']}")
    if "status" not in record:
        raise SandboxUnavailable(f"the sandbox ended without a report (exit {returncode}): "
                                 f"{stderr.strip()[-500:]}")
    if "tests" in record:
        return _classify_judged(record, limits, stdout, stderr, wall)
    status, cpu = record["status"], record.get("cpu_s")
    program = record.get("program") or {}
    if isinstance(program, dict) and "setup_error" in program:
        raise SandboxUnavailable(f"sandbox set-up failed: {program['setup_error']}")

    def result(kind: Status, reason: str) -> SandboxResult:
        return SandboxResult(kind, reason, status, stdout, stderr, wall, cpu)

    if status < 0:
        sig = signal.Signals(-status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu >= limits.cpu_s):
            return result("cpu_limit", f"killed at the CPU-time limit of {limits.cpu_s}s")
        if sig == signal.SIGXFSZ:
            return result("failed", f"killed for writing a file over {limits.file_bytes} bytes")
        return result("killed", f"killed by {sig.name}")
    if status == 0 and program.get("done") == nonce:
        return result("passed", "ran to the end")
    if status == 0:
        return result("early_exit", "exited with status 0 before the tests finished")
    error = program.get("error") if isinstance(program, dict) else None
    if not error:
        return result("early_exit", f"exited with status {status} before the tests finished")
    line = program.get("line")
    where = f" at line {line['number']}: {line['source'].strip()}" if line else ""
    if error.startswith("MemoryError"):
        return result("memory_limit", f"out of memory (limit {limits.memory_bytes} bytes){where}")
    return result("failed", f"{error.splitlines()[-1]}{where}{_hint(error)}")


def _classify_judged(record: dict[str, Any], limits: SandboxLimits, stdout: str, stderr: str,
                     wall: float) -> SandboxResult:
    """A verdict from the tests' process: its exit status 0 (with its report) is the only pass;
    a failure is explained by the answer's fate when it ended first."""
    status, cpu, answer = record["status"], record.get("cpu_s"), record.get("answer_status")
    tests = record["tests"] if isinstance(record["tests"], dict) else {}
    if "setup_error" in tests:
        raise SandboxUnavailable(f"sandbox set-up failed: {tests['setup_error']}")

    def result(kind: Status, reason: str) -> SandboxResult:
        return SandboxResult(kind, reason, status, stdout, stderr, wall, cpu)

    if status == 0 and tests.get("passed") is True:
        return result("passed", "every test ran to its end")
    if isinstance(answer, int) and answer < 0:
        sig = signal.Signals(-answer)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu is not None and cpu >= limits.cpu_s):
            return result("cpu_limit", f"killed at the CPU-time limit of {limits.cpu_s}s")
        if sig == signal.SIGXFSZ:
            return result("failed", f"killed for writing a file over {limits.file_bytes} bytes")
        return result("killed", f"the answer's process was killed by {sig.name}")
    if status < 0:
        return result("killed", f"the tests' process was killed by {signal.Signals(-status).name}")
    failure = tests.get("answer_error") if isinstance(tests.get("answer_error"), dict) else tests
    line = failure.get("line") if isinstance(failure.get("line"), dict) else None
    # The answer's own lines while it loaded; the tests' lines once they ran.
    where = (f" at {'line' if failure is not tests else 'test line'} {line.get('number')}: "
             f"{str(line.get('source', '')).strip()}") if line else ""
    if "answer_gone" in tests:
        if isinstance(answer, int):
            return result("early_exit", f"the answer's process exited with status {answer} before "
                          f"the tests finished{where}")
        return result("failed", f"{tests['answer_gone']}{where}")
    error = str(failure.get("error") or "")
    if not error:
        return result("failed", f"the tests' process ended with status {status} and no report")
    if error.startswith("MemoryError"):
        return result("memory_limit", f"out of memory (limit {limits.memory_bytes} bytes){where}")
    return result("failed", f"{error.splitlines()[-1]}{where}{_hint(error)}")


# Errors the sandbox causes on purpose, spelled out so a reader of the reason sees why.
_HINTS = {
    "[Errno 101]": "the sandbox has no network", "[Errno 99]": "the sandbox has no network",
    "[Errno 97]": "the sandbox has no network",
    "[Errno 30]": "only /tmp is writable in the sandbox",
    "[Errno 27]": "a file over the sandbox's file-size limit",
    "[Errno 11] Resource temporarily unavailable": "process limit reached",
    "[Errno 28]": "the sandbox's /tmp is full",
}


def _hint(error: str) -> str:
    for needle, hint in _HINTS.items():
        if needle in error:
            return f" ({hint})"
    return ""
