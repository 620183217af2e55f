"""Answers written to forge a pass, or to hurt the service, against the real sandbox: every one is
scored 0 (or, where it also solves the task honestly, passes without having reached anything).

Each forgery here passed before the tests moved to a process of their own (measured on the
previous harness, where answer and tests shared one interpreter: see the issue's closing note).
Real processes in real namespaces; a host that cannot build the sandbox skips these loudly (and
fails them under CI=true), as tests/test_sandbox.py does.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import time

import pytest

from xrouter.reward.sandbox import Sandbox, SandboxLimits, SandboxUnavailable
from xrouter.reward.verifiers import CodeTests, verify_code

LIMITS = SandboxLimits(wall_s=8.0, cpu_s=4, memory_bytes=256 * 2**20, output_bytes=16 * 2**10,
                       processes=4)
ADD = ("assert add(2, 3) == 5", "assert add(-1, 1) == 0")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    try:
        box = Sandbox(LIMITS, max_parallel=2)
        box.probe()
    except SandboxUnavailable as error:
        message = f"code sandbox unavailable on this host ({error}): hostile-input tests SKIPPED"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- in CI a host without namespaces is a failure")
        print(f"\n!!! {message} !!!")
        pytest.skip(message)
    return box


def score(sandbox: Sandbox, answer: str, *asserts: str) -> tuple[float, str]:
    verdict = verify_code(answer, CodeTests(asserts=asserts or ADD), sandbox)
    return verdict.score, verdict.detail


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- forging the harness's report --------------------------------------------------------------

# Each defines a wrong add() and then tries to make the harness report a pass anyway.
FORGERIES = {
    # The old harness ran the answer by exec() inside run_program(source, nonce, report): one
    # frame up held the nonce and the report pipe.
    "frame walking": """
import json, os, sys
def add(a, b):
    return 0
frame = sys._getframe(0)
while frame is not None:
    if "nonce" in frame.f_locals and "report" in frame.f_locals:
        os.write(frame.f_locals["report"], json.dumps({"done": frame.f_locals["nonce"]}).encode())
        os._exit(0)
    frame = frame.f_back
""",
    "inspect.stack": """
import inspect, json, os
def add(a, b):
    return 0
for info in inspect.stack():
    names = info.frame.f_locals
    if "nonce" in names and "report" in names:
        os.write(names["report"], json.dumps({"done": names["nonce"]}).encode())
        os._exit(0)
""",
    # The old answer's process was a fork of the harness: its config (nonce included) was still
    # in memory; the report pipe is found by trying every descriptor.
    "gc.get_objects": """
import gc, json, os
def add(a, b):
    return 0
for obj in gc.get_objects():
    if isinstance(obj, dict) and isinstance(obj.get("nonce"), str):
        for fd in range(3, 64):
            try:
                os.write(fd, json.dumps({"done": obj["nonce"]}).encode())
                os._exit(0)
            except OSError:
                pass
""",
    # Whatever a verdict message looks like, written as frames on every descriptor.
    "forged frames on every descriptor": """
import json, os
def add(a, b):
    return 0
for message in ({"passed": True}, {"ready": True}, {"ok": True}, {"ok": 5}):
    data = json.dumps(message).encode()
    for fd in range(3, 64):
        try:
            os.write(fd, len(data).to_bytes(4, "big") + data)
        except OSError:
            pass
""",
    "nonce guessing": """
import json, os, secrets
def add(a, b):
    return 0
for fd in range(3, 16):
    for _ in range(200):
        try:
            os.write(fd, json.dumps({"done": secrets.token_hex(16)}).encode())
        except OSError:
            break
""",
    "an object equal to everything": """
class Anything:
    def __eq__(self, other):
        return True
    __hash__ = object.__hash__
def add(a, b):
    return Anything()
""",
    "an int subclass equal to everything": """
class Five(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__
def add(a, b):
    return Five(0)
""",
    "overriding builtins and AssertionError": """
import builtins
class Never(Exception):
    pass
builtins.AssertionError = Never
builtins.__dict__["isinstance"] = lambda *a: True
def add(a, b):
    return 0
""",
    "os._exit(0) before the tests": "def add(a, b):\n    return 0\nimport os\nos._exit(0)\n",
    "os._exit(0) when called": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "SystemExit(0) when called": "def add(a, b):\n    raise SystemExit(0)\n",
    "atexit and excepthook printing a pass": """
import atexit, sys
atexit.register(lambda: print("passed"))
sys.excepthook = lambda *a: None
def add(a, b):
    return 0
""",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_passes_score_zero(sandbox: Sandbox, name: str) -> None:
    value, detail = score(sandbox, FORGERIES[name])
    assert value == 0.0, f"{name}: {detail}"
    assert detail.startswith(("failed:", "early_exit:")), detail


def test_the_zeros_come_from_the_wrong_answer_not_from_the_tricks(sandbox: Sandbox) -> None:
    """With a right add() the frame-walking answer passes (the walk finds nothing to forge, and
    the sandbox does not punish looking); the forged frames, which corrupt the answer's own
    channel, make even a right add() fail: a garbled channel is never read as a pass."""
    assert score(sandbox, FORGERIES["frame walking"].replace("return 0", "return a + b"))[0] == 1.0
    right = FORGERIES["forged frames on every descriptor"].replace("return 0", "return a + b")
    assert score(sandbox, right) == (0.0, "failed: a garbled start")


def test_shadowing_a_builtin_the_tests_use_is_not_honoured(sandbox: Sandbox) -> None:
    """In one program the answer's own sorted() would also sort the expected side (0 == 0); the
    tests' process keeps its built-ins unless the tests name a built-in as the entry point."""
    answer = "def sorted(*args, **kwargs):\n    return 0\ndef f(x):\n    return None\n"
    value, detail = score(sandbox, answer, "assert sorted(f(1)) == sorted([3, 1, 2])")
    assert value == 0.0 and detail.startswith("failed: TypeError: 'NoneType' object is not iterable"), detail
    named = verify_code("def sum(a, b):\n    return a * b\n",
                        CodeTests(asserts=("assert sum(2, 3) == 6",), entry_point="sum"), sandbox)
    assert named.score == 1.0, named.detail


# --- reading the expected values --------------------------------------------------------------

HUNTER = """
import gc, os, re
PATTERN = re.compile(rb"sekrit-[0-9a-f]{24}")

def hunt():
    found = set()
    for obj in gc.get_objects():  # its own memory
        if isinstance(obj, (dict, list, tuple)):
            try:
                found.update(PATTERN.findall(repr(obj).encode()))
            except Exception:
                pass
    for folder, _, files in os.walk("/tmp"):  # its own files
        for name in files:
            try:
                found.update(PATTERN.findall(open(os.path.join(folder, name), "rb").read()))
            except OSError:
                pass
    for pid in filter(str.isdigit, os.listdir("/proc")):  # every process it can see
        for part in ("cmdline", "environ"):
            try:
                found.update(PATTERN.findall(open(f"/proc/{pid}/{part}", "rb").read()))
            except OSError:
                pass
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
                for line in maps:
                    span, mode = line.split()[:2]
                    start, end = (int(x, 16) for x in span.split("-"))
                    if mode.startswith("r"):
                        try:
                            mem.seek(start)
                            found.update(PATTERN.findall(mem.read(min(end - start, 1 << 24))))
                        except (OSError, ValueError, OverflowError):
                            pass
        except OSError:
            pass
    return found

def f():
    found = hunt()
    return found.pop().decode() if found else "nothing found"
"""


def test_expected_values_are_out_of_the_answers_reach(sandbox: Sandbox) -> None:
    """The answer searches its memory, its files and every /proc/<pid>/{cmdline,environ,mem} it
    can open for the expected value: it lives only in the tests' process (and PID 1)."""
    secret = f"sekrit-{secrets.token_hex(12)}"
    value, detail = score(sandbox, HUNTER, f"assert f() == {secret!r}")
    assert value == 0.0, detail
    assert detail == f"failed: AssertionError at test line 1: assert f() == {secret!r}"
    # The hunter works: a secret within its reach (here, its own source) is found and passes.
    planted = HUNTER + f"# {secret}\n"
    assert score(sandbox, planted, f"assert f() == {secret!r}")[0] == 1.0


def test_other_processes_descriptors_are_closed_to_the_answer(sandbox: Sandbox) -> None:
    """PID 1 holds the pipe to the host (where a forged record would be read), the tests' process
    its report pipe: /proc/<pid>/fd of either cannot be opened, so neither pipe can be written."""
    answer = ("import glob, os\n"
              "opened = []\n"
              "for path in glob.glob('/proc/[0-9]*/fd/*'):\n"
              "    if path.split('/')[2] != str(os.getpid()):\n"
              "        try:\n"
              "            os.close(os.open(path, os.O_WRONLY))\n"
              "            opened.append(path)\n"
              "        except OSError:\n"
              "            pass\n"
              "print('seen', len(glob.glob('/proc/[0-9]*')), 'opened', opened)\n"
              "def add(a, b):\n    return a + b\n")
    result = sandbox.judge(*_judged(answer))
    assert "opened []" in result.stdout, result.stdout
    # It did see other processes (PID 1 at least), so the empty list is a refusal, not a blind spot.
    assert int(result.stdout.split()[1]) >= 2 and result.passed, (result.stdout, result.reason)


# --- signals -----------------------------------------------------------------------------------

SIGNALS = """
import errno, os, signal
refused = []
for target in (os.getppid(), 1, 0, -1):
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP):
        try:
            os.kill(target, sig)
        except OSError as error:
            refused.append(error.errno == errno.EPERM)
print("refused", len(refused), all(refused))
for pid in filter(str.isdigit, os.listdir("/proc")):  # the tests' process, if it can see it
    if int(pid) != os.getpid():
        for sig in (signal.SIGKILL, signal.SIGSTOP):
            try:
                os.kill(int(pid), sig)
            except OSError:
                pass
def add(a, b):
    return a + b
"""


def test_signals_to_the_parent_and_the_judge_are_refused(sandbox: Sandbox) -> None:
    result = sandbox.judge(*_judged(SIGNALS))
    # kill() of the parent (PID 1), of its group (0) and of everything (-1): refused, all 16.
    assert "refused 16 True" in result.stdout, (result.status, result.reason, result.stdout)
    # The tests' process is out of reach too (its pid is in the answer's filter; on a root host it
    # also has another uid): the right add passes.
    assert result.passed, result.reason
    wrong = SIGNALS.replace("return a + b", "return 0")
    assert score(sandbox, wrong)[0] == 0.0


def _judged(answer: str, *asserts: str):  # type: ignore[no-untyped-def]
    from xrouter.reward.verifiers.code import judged
    return judged(answer, CodeTests(asserts=asserts or ADD))


# --- floods ------------------------------------------------------------------------------------

def test_fork_bomb_is_held_and_cleaned_up(sandbox: Sandbox) -> None:
    marker = f"xrouter-hostile-{secrets.token_hex(6)}"
    answer = ("import os\n"
              "def add(a, b):\n    return 0\n"
              "for _ in range(200):\n"
              "    try:\n"
              "        if os.fork() == 0:\n"
              f"            os.execv('/bin/sleep', ['sleep', '1000', '{marker}'])\n"
              "    except OSError:\n"
              "        pass\n")
    started = time.monotonic()
    value, detail = score(sandbox, answer)
    assert value == 0.0 and detail.startswith("failed: AssertionError"), detail
    assert time.monotonic() - started < LIMITS.wall_s
    time.sleep(0.2)
    assert processes_with(marker) == []
    value, detail = score(sandbox, "import os\nwhile True:\n    os.fork()\n")
    assert value == 0.0 and detail.endswith("(process limit reached)"), detail


@pytest.mark.parametrize(("answer", "expected"), [
    ("def add(a, b):\n    while True:\n        print('x' * 4096)\n", "output_limit:"),
    ("def add(a, b):\n    return 'x' * (9 * 2**20)\n", "failed: RuntimeError: WireError"),
    ("def add(a, b):\n    x = []\n    for _ in range(500):\n        x = [x]\n    return x\n",
     "failed: RuntimeError: WireError: a value nested too deeply"),
    ("import os\nos.write(4, (2**32 - 1).to_bytes(4, 'big'))\ndef add(a, b):\n    return a + b\n",
     "failed: "),
])
def test_huge_outputs_are_cut(sandbox: Sandbox, answer: str, expected: str) -> None:
    started = time.monotonic()
    value, detail = score(sandbox, answer)
    assert value == 0.0 and detail.startswith(expected), detail
    assert time.monotonic() - started < LIMITS.wall_s + 2


@pytest.mark.parametrize("family", ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"])
def test_network_sockets_are_refused_by_the_filter(sandbox: Sandbox, family: str) -> None:
    kind = "SOCK_STREAM" if family.startswith("AF_INET") else "SOCK_RAW"
    value, detail = score(sandbox, f"import socket\nsocket.socket(socket.{family}, socket.{kind})\n")
    assert value == 0.0
    assert "[Errno 97] Address family not supported by protocol" in detail, detail
    assert detail.endswith("(the sandbox has no network)")
