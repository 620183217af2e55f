"""The code sandbox against hostile programs: each is contained, scored 0, and says why.

Every test runs real processes in real namespaces. A host that cannot build the sandbox skips these
loudly (and fails them under CI=true): see ``GUARANTEES`` in ``xrouter/reward/sandbox/host.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest

from xrouter.reward.sandbox import GUARANTEES, Sandbox, SandboxLimits, SandboxUnavailable
from xrouter.reward.verifiers import CodeTests, verify_code

LIMITS = SandboxLimits(wall_s=4.0, cpu_s=1, memory_bytes=256 * 2**20, output_bytes=16 * 2**10,
                       processes=16)


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    try:
        box = Sandbox(LIMITS, max_parallel=2)
        box.probe()
    except SandboxUnavailable as error:
        message = f"code sandbox unavailable on this host ({error}): sandbox tests SKIPPED"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} -- in CI a host without namespaces is a failure")
        print(f"\n!!! {message} !!!")
        pytest.skip(message)
    return box


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def score(sandbox: Sandbox, code: str, *asserts: str) -> tuple[float, str]:
    verdict = verify_code(code, CodeTests(asserts=asserts or ("assert True",)), sandbox)
    return verdict.score, verdict.detail


def test_honest_program_passes(sandbox: Sandbox) -> None:
    assert score(sandbox, "def add(a, b):\n    return a + b", "assert add(2, 3) == 5")[0] == 1.0
    result = sandbox.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (result.status, result.stdout, result.stderr) == ("passed", "out\n", "err\n")


def test_failing_assert_names_the_line(sandbox: Sandbox) -> None:
    value, detail = score(sandbox, "def add(a, b):\n    return a - b", "assert add(2, 3) == 5")
    assert value == 0.0
    # The line is the tests' own: they run in a process of their own, apart from the answer.
    assert detail == "failed: AssertionError at test line 1: assert add(2, 3) == 5"


@pytest.mark.parametrize("exit_code", ["import sys; sys.exit(0)", "import os; os._exit(0)",
                                       "raise SystemExit"])
def test_leaving_before_the_tests_is_not_passing(sandbox: Sandbox, exit_code: str) -> None:
    value, detail = score(sandbox, f"def f():\n    return 0\n{exit_code}", "assert f() == 1")
    assert value == 0.0
    assert "SystemExit" in detail or "before the tests finished" in detail


def test_infinite_loop_hits_the_cpu_limit(sandbox: Sandbox) -> None:
    # A generous wall limit, so a busy machine cannot turn this into a wall-time kill.
    limits = dataclasses.replace(LIMITS, wall_s=30.0)
    result = sandbox.run("def spin():\n    while True:\n        pass\nspin()\nassert False", limits)
    assert (result.status, result.reason) == ("cpu_limit", "killed at the CPU-time limit of 1s")
    assert result.cpu_s is not None and 0.9 <= result.cpu_s < 2.5  # tick-granular accounting


def test_sleeping_program_and_its_daemons_are_killed_at_the_wall_limit(sandbox: Sandbox) -> None:
    """A program that sleeps (no CPU) and leaves detached children: all gone at the wall limit."""
    marker = f"xrouter-sbx-{secrets.token_hex(6)}"
    program = ("import subprocess, time\n"
               f"for _ in range(3):\n"
               f"    subprocess.Popen(['/bin/sleep', '1000', '{marker}'], start_new_session=True)\n"
               "time.sleep(1000)\n")
    started = time.monotonic()
    result = sandbox.run(program)
    assert result.status == "timeout"
    assert result.reason == "killed at the wall-time limit of 4s with every process it started"
    assert time.monotonic() - started < LIMITS.wall_s + 3
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_detached_children_do_not_outlive_a_passing_program(sandbox: Sandbox) -> None:
    marker = f"xrouter-sbx-{secrets.token_hex(6)}"
    result = sandbox.run("import subprocess\n"
                         f"subprocess.Popen(['/bin/sleep', '1000', '{marker}'], start_new_session=True)\n")
    assert result.passed
    time.sleep(0.2)
    assert processes_with(marker) == []


def test_fork_bomb_is_capped_by_the_process_limit(sandbox: Sandbox) -> None:
    started = time.monotonic()
    value, detail = score(sandbox, "import os\nwhile True:\n    os.fork()")
    assert value == 0.0
    assert detail.startswith("failed: BlockingIOError: [Errno 11] Resource temporarily unavailable")
    assert detail.endswith("(process limit reached)")
    assert time.monotonic() - started < LIMITS.wall_s


def test_process_flood_stays_at_the_limit_and_is_cleaned_up(sandbox: Sandbox) -> None:
    """A program that swallows fork errors and keeps trying: held at the limit, then all killed."""
    marker = f"xrouter-sbx-{secrets.token_hex(6)}"
    program = ("import os, sys, time\n"
               "started = 0\n"
               "deadline = time.monotonic() + 1.5\n"
               "while time.monotonic() < deadline:\n"
               "    try:\n"
               "        if os.fork() == 0:\n"
               f"            os.execv('/bin/sleep', ['sleep', '1000', '{marker}'])\n"
               "        started += 1\n"
               "    except OSError:\n"
               "        time.sleep(0.01)\n"
               "print(started, flush=True)\n"
               "time.sleep(1000)\n")
    result = sandbox.run(program)
    assert result.status == "timeout"
    # The program itself is one of the `processes`; the rest are its sleeping children.
    assert int(result.stdout) == LIMITS.processes - 1
    time.sleep(0.2)
    assert processes_with(marker) == []


@pytest.mark.parametrize("program", ["x = bytearray(2**31)",
                                     "x = []\nwhile True:\n    x.append(bytearray(2**20))"])
def test_memory_blow_up_hits_the_memory_limit(sandbox: Sandbox, program: str) -> None:
    value, detail = score(sandbox, program)
    assert value == 0.0
    assert detail.startswith(f"memory_limit: out of memory (limit {LIMITS.memory_bytes} bytes)")


def test_huge_output_is_cut_and_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("while True:\n    print('x' * 1000)")
    assert result.status == "output_limit"
    assert result.reason == f"killed for writing more than {LIMITS.output_bytes} bytes of output"
    assert len(result.stdout) <= LIMITS.output_bytes
    assert score(sandbox, "print('y' * 10**6)")[0] == 0.0


def test_big_files_are_refused(sandbox: Sandbox) -> None:
    value, detail = score(sandbox, "open('/tmp/big', 'wb').write(b'x' * (64 * 2**20))")
    assert value == 0.0 and ("file over" in detail or "full" in detail or "memory" in detail)


def test_writing_outside_its_directory_is_refused(sandbox: Sandbox, tmp_path: pathlib.Path) -> None:
    name = f"escaped-{secrets.token_hex(6)}"
    # What the sandbox's root holds (the system's /usr, its own /) is read-only ...
    for path in (pathlib.Path("/usr", name), pathlib.Path("/", name)):
        value, detail = score(sandbox, f"open({str(path)!r}, 'w').write('x')")
        assert value == 0.0 and "Read-only file system" in detail, detail
        assert detail.endswith("(only /tmp is writable in the sandbox)")
        assert not path.exists()
    # ... and the rest of the host is not there at all: the repository, the host's world-writable
    # directories, its /tmp (the sandbox's own /tmp is a fresh tmpfs).
    tmp_path.chmod(0o777)
    for folder in (pathlib.Path.cwd(), pathlib.Path("/var/tmp"), pathlib.Path("/dev/shm"), tmp_path):
        value, detail = score(sandbox, f"open({str(folder / name)!r}, 'w').write('x')")
        assert value == 0.0 and "No such file or directory" in detail, detail
        assert not (folder / name).exists()
    # Its own /tmp works, and is private: nothing lands in the host's /tmp.
    assert score(sandbox, f"open('/tmp/{name}', 'w').write('x')",
                 f"assert open('/tmp/{name}').read() == 'x'")[0] == 1.0
    assert not pathlib.Path("/tmp", name).exists()


def test_host_files_are_out_of_sight(sandbox: Sandbox) -> None:
    """Inside: /usr, /lib*, four devices, /proc, its /tmp, and the interpreter's library at its own
    path; no other file of the host (its /etc, /home, /run, /var, the repository ...)."""
    library = json.loads(subprocess.run([sys.executable, "-I", "-S", "-c", "import sys, json, "
                                         "os, sysconfig; print(json.dumps(sys.path + ["
                                         "os.path.realpath(sys.executable), os.path.join("
                                         "sysconfig.get_config_var('LIBDIR'), sysconfig."
                                         "get_config_var('INSTSONAME'))]))"],
                                        capture_output=True, text=True, check=True).stdout)
    program = ("import os, sys\n"
               f"library = tuple(p + '/' for p in {library[:-2]!r})\n"
               f"interpreter = {library[-2:]!r}  # its executable and shared library, read-only\n"
               "print(sorted(os.listdir('/')), sorted(os.listdir('/dev')))\n"
               "for top in os.listdir('/'):\n"
               "    if top in ('usr', 'proc', 'dev', 'tmp') or os.path.islink('/' + top):\n"
               "        continue\n"
               "    for folder, _, files in os.walk('/' + top):\n"
               "        for name in files:\n"
               "            path = os.path.join(folder, name)\n"
               "            if not path.startswith(library) and path not in interpreter:\n"
               "                print('host file visible:', path)\n")
    result = sandbox.run(program, dataclasses.replace(LIMITS, wall_s=60.0, cpu_s=30))  # a long walk
    assert result.passed, result.reason
    assert "host file visible" not in result.stdout, result.stdout
    assert "'etc'" not in result.stdout and "'home'" not in result.stdout and "'run'" not in result.stdout
    assert "['null', 'random', 'urandom', 'zero']" in result.stdout
    for path in ("/etc/passwd", str(pathlib.Path.cwd() / "pyproject.toml")):
        assert score(sandbox, f"open({path!r}).read()")[1].startswith("failed: FileNotFoundError")


def test_opening_a_socket_gets_nowhere(sandbox: Sandbox) -> None:
    """A real server listens on the host's loopback; the program can reach neither it nor the
    internet, with Python's socket module or with raw system calls."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass
    listener = threading.Thread(target=accept)
    listener.start()
    try:
        for host in ("127.0.0.1", "1.1.1.1"):
            value, detail = score(sandbox, "import socket\n"
                                  f"socket.create_connection(({host!r}, {port}), timeout=2).sendall(b'hi')")
            assert value == 0.0 and "(the sandbox has no network)" in detail, detail
        raw = ("import ctypes, socket, struct\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
               "assert fd >= 0, ctypes.get_errno()\n"
               f"address = struct.pack('!HH4s8x', socket.AF_INET, {port}, bytes([127, 0, 0, 1]))\n"
               "address = struct.pack('=H', socket.AF_INET) + address[2:]\n"
               "assert libc.connect(fd, address, len(address)) == 0, ctypes.get_errno()\n")
        value, detail = score(sandbox, raw)
        # The seccomp filter refuses the socket itself (EAFNOSUPPORT), before the network namespace
        # (which has no route: ENETUNREACH) is even reached.
        assert value == 0.0 and detail.startswith("failed: AssertionError: 97"), detail
    finally:
        listener.join()
        server.close()
    assert accepted == []


def test_unix_sockets_of_the_host_are_unreachable(sandbox: Sandbox) -> None:
    """Local services listening on a socket file (a database in /run, say) or on an abstract
    socket are as unreachable as the network."""
    name = f"xrouter-sbx-{secrets.token_hex(6)}"
    path = pathlib.Path("/run", f"{name}.sock")
    with socket.socket(socket.AF_UNIX) as on_disk, socket.socket(socket.AF_UNIX) as abstract:
        on_disk.bind(str(path))
        path.chmod(0o777)
        on_disk.listen()
        abstract.bind(f"\0{name}")
        abstract.listen()
        value, detail = score(sandbox, f"import socket\nsocket.socket(socket.AF_UNIX).connect({str(path)!r})")
        assert value == 0.0 and "No such file or directory" in detail, detail
        value, detail = score(sandbox, f"import socket\nsocket.socket(socket.AF_UNIX).connect('\\0{name}')")
        assert value == 0.0 and "ConnectionRefusedError" in detail, detail
    path.unlink()


def test_environment_secrets_are_out_of_reach(sandbox: Sandbox,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-{secrets.token_hex(12)}"
    monkeypatch.setenv("XROUTER_TEST_API_KEY", secret)
    # The hostile program passes only if it finds the secret: in its environment, or in the
    # environment of any process it can see (the service's is not even in its PID namespace).
    program = ("import os, glob\n"
               "def steal():\n"
               "    found = list(os.environ.values())\n"
               "    for path in glob.glob('/proc/[0-9]*/environ'):\n"
               "        try:\n"
               "            found.append(open(path, 'rb').read().decode(errors='replace'))\n"
               "        except OSError:\n"
               "            pass\n"
               "    print(sorted(os.environ))\n"
               "    return '\\n'.join(found)\n")
    result = sandbox.run(program + f"assert {secret!r} in steal()\n")
    assert result.status == "failed" and "AssertionError" in result.reason
    assert secret not in result.stdout + result.stderr
    assert "XROUTER_TEST_API_KEY" not in result.stdout
    assert score(sandbox, program, f"assert {secret!r} in steal()")[0] == 0.0


def test_no_privileges_left(sandbox: Sandbox) -> None:
    """No capabilities, no_new_privs, limits that cannot be raised, a root file system it cannot
    remount: the layers that keep the other guarantees from being undone from inside."""
    program = ("import ctypes, resource\n"
               "status = open('/proc/self/status').read()\n"
               "caps = {l.split(':')[0]: l.split()[1] for l in status.splitlines() if l.startswith('Cap')}\n"
               "assert caps['CapEff'] == caps['CapPrm'] == caps['CapBnd'] == '0' * 16, caps\n"
               "assert 'NoNewPrivs:\\t1' in status\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "assert libc.mount(None, b'/', None, 32 | 4096, None) == -1  # MS_REMOUNT|MS_BIND, rw\n"
               "soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)\n"
               "try:\n"
               "    resource.setrlimit(resource.RLIMIT_NPROC, (hard + 1, hard + 1))\n"
               "    raise SystemError('raised a hard limit')\n"
               "except ValueError:\n"
               "    pass\n")
    result = sandbox.run(program)
    assert result.passed, result.reason


def test_runs_in_parallel_do_not_interfere(sandbox: Sandbox) -> None:
    """Each run has its own /tmp and process count: two at once both see only their own."""
    program = ("import os, time\n"
               "open('/tmp/mine', 'w').write(str(os.getpid()))\n"
               "time.sleep(0.3)\n"
               "assert sorted(os.listdir('/tmp')) == ['main.py', 'mine'], os.listdir('/tmp')\n")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(sandbox.run(program).passed))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True, True]


def test_unusable_host_is_reported_not_scored() -> None:
    with pytest.raises(SandboxUnavailable, match="cannot start the sandbox|without a report"):
        Sandbox(LIMITS, python="/nonexistent/python").probe()
    assert "Does not hold" in GUARANTEES


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="SandboxLimits.cpu_s must be > 0"):
        SandboxLimits(cpu_s=0)
