"""The sandbox's first process: PID 1 of fresh PID, network and mount namespaces (made by
``unshare``). It locks the file system down, starts the untrusted code with its privileges dropped,
its limits set and a seccomp filter installed, and reports how it ended on a pipe to the host.

Standard library only, never imports xrouter: it runs under ``python -I -S``, and loads its sibling
files (``wire``, ``answer``, ``judge``, ``seccomp``) by path before the root changes. The host
(``host.py``) sends one JSON object on stdin: ``program`` (source), ``nonce``, ``report_fd``,
``uid`` and ``tests_uid`` (used when real root, else 0), ``limits``, ``tests``.

Without ``tests`` the program runs to its end in one process (``Sandbox.run``: not a verdict).
With ``tests`` (``Sandbox.judge``) the verdict comes from a process the answer cannot reach: the
answer runs in a fresh interpreter (``answer.py``, exec'd, so it holds no copy of this process's
memory and never sees the tests), the tests run in a second process (``judge.py``) that holds none
of the answer's code and reaches it only through plain values (``wire.py``); the tests' exit status
is the verdict. The tests' process is not dumpable and has its own uid on a root host, so the
answer can neither read nor write its memory; the filter takes ptrace and process_vm_* away too.

Why PID 1 is a separate, trusted process: when it exits the kernel kills every process left in the
namespace (however they daemonised), and it outlives the program to report how it died. The
program cannot signal it: PID 1 of a namespace gets only the signals it handles (none: SIGINT is
reset below), the filter refuses kill(1), and it runs under another uid or with more capabilities.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import json
import os
import resource
import signal
import sys
import sysconfig
import traceback

WORKDIR = "/tmp"  # inside the new root
NEW_ROOT = "/tmp"  # where the new root is built, over the host's /tmp (hidden from then on)
PROGRAM = WORKDIR + "/main.py"

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 0x20, 0x400, 0x800, 0x1000
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
# Flags a remount must repeat: in a user namespace the kernel refuses to clear locked ones.
_KEPT = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
         "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 24, 28, 38
# noroot, no_setuid_fixup, keep_caps and no_cap_ambient_raise, each with its lock bit.
SECUREBITS_LOCKED_DOWN = 0xFF
CAPABILITY_VERSION_3 = 0x20080522

PR_SET_DUMPABLE = 4
HERE = os.path.dirname(os.path.abspath(__file__))
# The interpreter the answer's fresh process runs (the real file, not a venv's link to it).
PYTHON = os.path.realpath(sys.executable)

_libc = ctypes.CDLL(None, use_errno=True)


def _load(name: str):  # type: ignore[no-untyped-def]
    """A sibling module by path (``-I`` leaves this directory off sys.path)."""
    spec = importlib.util.spec_from_file_location(f"xrouter_sandbox_{name}", os.path.join(HERE, f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wire = _load("wire")
seccomp = _load("seccomp")
judge = _load("judge")
with open(os.path.join(HERE, "answer.py"), encoding="utf-8") as _file:
    # The answer's process runs the wire format, then its loop, as one `python -c` text.
    with open(os.path.join(HERE, "wire.py"), encoding="utf-8") as _wire:
        ANSWER_RUNNER = _wire.read() + "\n" + _file.read()


class SetupError(Exception):
    """The sandbox could not be locked down; nothing untrusted has run yet."""


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(error)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags),
                       encode(data)), f"mount {target}")


def _mount_points() -> list[tuple[str, list[str]]]:
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            # Paths are octal-escaped (a space is \040).
            target = fields[4].encode().decode("unicode_escape").encode("latin-1").decode()
            points.append((target, fields[5].split(",")))
    return points


def lock_file_system() -> None:
    """Every mount of the inherited tree read-only: a second wall behind the new root, in case a
    way out of it is ever found."""
    for target, options in _mount_points():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= _KEPT.get(option, 0)
        try:
            _mount(None, target, None, flags, None)
        except SetupError:
            # A mount hidden under a later one cannot be reached by path and so cannot be written
            # either; anything reachable that stays writable is a failure.
            if os.path.ismount(target) and os.access(target, os.W_OK) and not _read_only(target):
                raise


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _bind_read_only(source: str, target: str, devices: bool = False) -> None:
    _mount(source, target, None, MS_BIND, None)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (0 if devices else MS_NODEV)
    _mount(None, target, None, flags, None)


def build_root(tmp_bytes: int, uid: int, tests_uid: int) -> None:
    """Change root to a fresh tmpfs holding only what a Python program needs, read-only: the
    system's /usr and /lib*, the interpreter's library directories (at their own paths), four
    devices, a new /proc, and a size-capped /tmp owned by the program. The host's /etc, /home,
    /root, /run (and the sockets there), /var, /sys and the service's own files are not in it."""
    new = NEW_ROOT
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    exposed = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    exposed += [p for p in sys.path if os.path.isdir(p) and not p.startswith("/usr/")]
    for path in exposed:
        if os.path.islink(path):  # usrmerge: /bin -> usr/bin
            os.makedirs(os.path.dirname(new + path), exist_ok=True)
            os.symlink(os.readlink(path), new + path)
        elif os.path.isdir(path):
            os.makedirs(new + path, mode=0o755, exist_ok=True)
            _bind_read_only(path, new + path)
    # The interpreter and its shared library, when they live outside /usr (pyenv, a custom build):
    # the answer's process is a fresh interpreter started inside the root. Files, not folders.
    library = os.path.join(sysconfig.get_config_var("LIBDIR") or "/usr/lib",
                           sysconfig.get_config_var("INSTSONAME") or "")
    for path in (PYTHON, library):
        if os.path.isfile(path) and not path.startswith("/usr/") and not os.path.exists(new + path):
            os.makedirs(os.path.dirname(new + path), mode=0o755, exist_ok=True)
            open(new + path, "w").close()
            _bind_read_only(path, new + path)
    os.makedirs(new + "/dev", mode=0o755)
    for device in ("null", "zero", "random", "urandom"):
        open(f"{new}/dev/{device}", "w").close()
        _bind_read_only(f"/dev/{device}", f"{new}/dev/{device}", devices=True)
    os.makedirs(new + "/proc", mode=0o555)
    _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.makedirs(new + WORKDIR)
    _mount("tmpfs", new + WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV,
           # The tests' process may read what the answer wrote (its group), never write there.
           f"size={tmp_bytes},mode=0750,uid={uid},gid={tests_uid}")
    os.chroot(new)
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges(uid: int) -> None:
    """Lose every capability for good: switch to ``uid`` (real root on the host), or, inside a user
    namespace where only root is mapped, clear the capability sets and lock root's special rules."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such cap
            _check(-1, f"drop capability {cap} from the bounding set")
    if uid:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # clears all capabilities
    else:
        _check(_libc.prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN, 0, 0, 0), "set securebits")
        empty = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(_CapHeader(CAPABILITY_VERSION_3, 0)), empty), "capset")
    # No setuid binary can give any of it back.
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")


def set_limits(limits: dict[str, int]) -> None:
    """Hard limits (equal to the soft ones but for CPU), so the program cannot raise them."""
    cpu = limits["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    for name, key in (("RLIMIT_AS", "memory_bytes"), ("RLIMIT_NPROC", "processes"),
                      ("RLIMIT_FSIZE", "file_bytes"), ("RLIMIT_NOFILE", "open_files")):
        resource.setrlimit(getattr(resource, name), (limits[key], limits[key]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _failure_summary(error: BaseException) -> dict[str, object]:
    """The exception and the program line it came from (the assert that failed, usually)."""
    line = None
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename == PROGRAM:
            line = {"number": frame.lineno, "source": (frame.line or "")[:300]}
            break
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return {"error": text[:1000], "line": line}


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def run_program(source: str, nonce: str, report: int) -> None:
    """Run the program in this process; write the nonce only once it has run to its end."""
    with open(PROGRAM, "w", encoding="utf-8") as file:
        file.write(source)
    sys.argv = [PROGRAM]
    sys.path.insert(0, WORKDIR)
    namespace = {"__name__": "__main__", "__file__": PROGRAM, "__builtins__": __builtins__}
    program_pid = os.getpid()
    try:
        exec(compile(source, PROGRAM, "exec"), namespace)  # noqa: S102 - the sandbox's purpose
    except BaseException as error:  # SystemExit too: leaving before the end is not passing
        _flush()
        # Only the program's own process reports; processes it forked just end.
        if os.getpid() == program_pid:
            os.write(report, json.dumps(_failure_summary(error)).encode())
        os._exit(1)
    _flush()
    if os.getpid() == program_pid:
        os.write(report, json.dumps({"done": nonce}).encode())
    os._exit(0)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def confine(limits: dict[str, int], uid: int, protect: tuple[int, ...] = (1,)) -> None:
    """What every untrusted process gets before its first line runs: its own session (so a signal
    to its group reaches only its own processes), the limits, no privileges, the seccomp filter
    (no signal to the pids in ``protect``)."""
    os.setsid()
    set_limits(limits)
    drop_privileges(uid)
    if seccomp.supported():
        seccomp.install(protect)
    # Default signal dispositions, as for any fresh process (Python set SIGPIPE etc. to ignore).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def _keep_only(fds: dict[int, int]) -> None:
    """Move ``fds`` (current -> wanted number, all above 2) into place and close every other fd
    above 2, so no process holds a pipe it has no business with."""
    parked = {fcntl.fcntl(fd, fcntl.F_DUPFD, 100): wanted for fd, wanted in fds.items()}
    os.closerange(3, 100)
    for fd, wanted in parked.items():
        os.dup2(fd, wanted)
    os.closerange(100, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _setup_failed(fd: int, error: BaseException) -> None:
    os.write(fd, json.dumps({"setup_error": f"{type(error).__name__}: {error}"}).encode())
    os._exit(70)


def start_answer(config: dict, requests: int, replies: int, setup: int, tests: int) -> int:  # type: ignore[type-arg]
    """Fork the answer's process: a fresh interpreter (exec) running ``answer.py`` on fds 3/4;
    its filter refuses signals to PID 1 and to the tests' process (pid ``tests``)."""
    with open(PROGRAM, "w", encoding="utf-8") as file:
        file.write(config["program"])
    os.chown(PROGRAM, config["uid"], config["uid"])
    pid = os.fork()
    if pid:
        return pid
    try:
        _keep_only({requests: 3, replies: 4, setup: 5})
        confine(config["limits"], config["uid"], protect=(1, tests))
        os.chdir(WORKDIR)
        os.set_inheritable(5, False)  # kept for a failed exec's report, closed by a good one
        os.execve(PYTHON, [PYTHON, "-I", "-S", "-u", "-c", ANSWER_RUNNER], dict(os.environ))
    except BaseException as error:  # noqa: BLE001 - the answer has not run: set-up failed
        _setup_failed(5, error)
    raise AssertionError("unreachable")


def start_tests(config: dict, requests: int, replies: int, report: int) -> int:  # type: ignore[type-arg]
    """Fork the tests' process (the judge); its exit status is the verdict."""
    pid = os.fork()
    if pid:
        return pid
    try:
        _keep_only({requests: 3, replies: 4, report: 5})
        confine(config["limits"], config["tests_uid"])
        # Not dumpable: its memory and /proc files stay closed to the answer even under one uid.
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "clear dumpable")
        os.chdir(WORKDIR)  # where the answer's files are, as in one program (never on sys.path)
    except BaseException as error:  # noqa: BLE001
        _setup_failed(5, error)
    judge.run(wire, config["tests"], 3, 4, 5)
    os._exit(1)  # judge.run exits by itself; anything else is a failure


def run_judged(config: dict) -> dict:  # type: ignore[type-arg]
    """Start both processes, wait for the tests' verdict, then end the answer's process group."""
    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    report_read, report_write = os.pipe()
    # The tests first: the answer's filter is told their pid, so no signal of its reaches them.
    tests = start_tests(config, requests_write, replies_read, report_write)
    answer = start_answer(config, requests_read, replies_write, report_write, tests)
    for fd in (requests_read, requests_write, replies_read, replies_write, report_write):
        os.close(fd)
    _, status = os.waitpid(tests, 0)
    done, answer_status = os.waitpid(answer, os.WNOHANG)
    record: dict[str, object] = {"status": os.waitstatus_to_exitcode(status)}
    if done:  # it ended by itself (a limit, an exit): its fate explains a failure
        record["answer_status"] = os.waitstatus_to_exitcode(answer_status)
    else:
        os.killpg(answer, signal.SIGKILL)
        os.waitpid(answer, 0)
    raw = _read_all(report_read)
    # A set-up failure is plain JSON; the tests' report is one wire frame (4-byte length first).
    for text in (raw, raw[4:]):
        try:
            record["tests"] = json.loads(text) if text else None
            break
        except ValueError:
            record["tests"] = {"garbled": raw[:200].decode("utf-8", "replace")}
    return record


def main() -> None:
    """PID 1: set up, start the untrusted code, wait for it, report to the host."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 handling no signal ignores them all
    config = json.loads(sys.stdin.buffer.read())
    report_fd = config["report_fd"]
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        lock_file_system()
        build_root(config["limits"]["tmp_bytes"], config["uid"], config["tests_uid"])
    except (SetupError, OSError) as error:
        os.write(report_fd, json.dumps({"setup_error": str(error)}).encode())
        os._exit(70)
    if config.get("tests") is not None:
        record = run_judged(config)
    else:
        record = run_plain(config)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    record.update(cpu_s=usage.ru_utime + usage.ru_stime, max_rss_kib=usage.ru_maxrss)
    os.write(report_fd, json.dumps(record).encode())
    # Exiting kills whatever the program left behind in the namespace.
    os._exit(0)


def run_plain(config: dict) -> dict:  # type: ignore[type-arg]
    """One process runs the program to its end (no verdict: see the module's docstring)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.close(config["report_fd"])
        try:
            confine(config["limits"], config["uid"])
            os.chdir(WORKDIR)
            os.environ["HOME"] = WORKDIR
        except (SetupError, OSError, ValueError) as error:
            _setup_failed(write_end, error)
        run_program(config["program"], config["nonce"], write_end)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    record: dict[str, object] = {"status": os.waitstatus_to_exitcode(status)}
    # The program's descendants may still hold the pipe open: take what is there now, no waiting.
    raw = _read_all(read_end)
    try:
        record["program"] = json.loads(raw) if raw else None
    except ValueError:
        record["program"] = {"garbled": raw[:200].decode("utf-8", "replace")}
    return record


if __name__ == "__main__":
    main()
