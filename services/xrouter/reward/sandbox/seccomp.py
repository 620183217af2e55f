"""A seccomp filter for the sandboxed processes: a small classic-BPF program installed with
``prctl(PR_SET_SECCOMP)`` through ctypes.

Why hand-written BPF and not a binding (``pyseccomp`` installs, but wraps libseccomp): the filter is
installed by ``boot.py``, which runs under ``python -I -S`` with only the standard library, inside
a root that holds no site-packages; a dozen instructions need no library.

Why a deny list on top of the namespaces rather than an allow list: what a Python program needs
from the kernel shifts with every glibc and CPython release (``clone3``, ``rseq``, ``statx``, ...);
an allow list that misses one breaks honest answers. The namespaces, the chroot, no capabilities
and the rlimits already decide what a program can touch; the filter removes the kernel interfaces
that none of them cover and that no code answer needs -- the usual ways to attack the kernel or
reach outside:

- other machines: ``socket``/``socketpair`` of any family but ``AF_UNIX`` (EAFNOSUPPORT);
- other processes: ``ptrace``, ``process_vm_readv/writev``, ``kcmp``, ``pidfd_getfd``,
  ``pidfd_send_signal``; ``kill`` of PID 1 (the sandbox's supervisor) or of the tests' process
  (the judge), of a process group or of every process; ``tkill``/``tgkill`` of those two;
- new namespaces or mounts: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag,
  ``clone3`` (answered ENOSYS, so glibc falls back to ``clone``, whose flags the filter can read),
  ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API;
- kernel attack surface: ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, the key
  ring, modules, ``kexec``, ``open_by_handle_at``, ``personality``, clock and host-name setters.

Everything else is allowed. x86_64 only (the numbers are the x86_64 ABI); another architecture's
or the x32 ABI's system calls kill the process. On other machines ``supported()`` is False and the
sandbox says so in its description.
"""

from __future__ import annotations

import ctypes
import platform

AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_KILL_PROCESS, RET_ALLOW, RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97
AF_UNIX = 1
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET (CLONE_NEWTIME exists only for clone3, which is refused whole).
CLONE_NEW_ANY = 0x7E020000

# BPF opcodes.
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_NR, _ARCH = 0, 4
_ARG0 = 16  # low 32 bits of the first argument (little-endian)

DENIED = {  # x86_64 system call numbers, refused with EPERM
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "pidfd_send_signal": 424, "pidfd_getfd": 438,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "mount_setattr": 442,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "add_key": 248, "request_key": 249,
    "keyctl": 250, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168,
    "acct": 163, "quotactl": 179, "syslog": 103, "settimeofday": 164, "clock_settime": 227,
    "adjtimex": 159, "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "personality": 135, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "lookup_dcookie": 212, "vhangup": 153,
}
SOCKET, SOCKETPAIR, CLONE, CLONE3, KILL, TKILL, TGKILL = 41, 53, 56, 435, 62, 200, 234


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def supported() -> bool:
    return platform.machine() == "x86_64"


def _when(number: int, block: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """``block`` (which must end every path in a return) runs when the call is ``number``."""
    return [(_JEQ, 0, len(block), number), *block]


def _deny_if(tests: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """Load the first argument; refuse when any (opcode, constant) test holds, else allow."""
    block = [(_LD_ABS, 0, 0, _ARG0)]
    for number, (code, k) in enumerate(tests):
        block.append((code, len(tests) - number, 0, k))  # to the final deny
    return block + [(_RET, 0, 0, RET_ALLOW), (_RET, 0, 0, RET_ERRNO | EPERM)]


def program(protect: tuple[int, ...] = (1,)) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jump-if-true, jump-if-false, constant) instructions. ``protect``:
    pids no signal may reach (PID 1, and the tests' process for the answer's filter)."""
    deny, allow = (_RET, 0, 0, RET_ERRNO | EPERM), (_RET, 0, 0, RET_ALLOW)
    unix_only = [(_LD_ABS, 0, 0, _ARG0), (_JEQ, 0, 1, AF_UNIX), allow,
                 (_RET, 0, 0, RET_ERRNO | EAFNOSUPPORT)]
    rules = [
        (_LD_ABS, 0, 0, _ARCH), (_JEQ, 1, 0, AUDIT_ARCH_X86_64), (_RET, 0, 0, RET_KILL_PROCESS),
        (_LD_ABS, 0, 0, _NR), (_JGE, 0, 1, 0x40000000), (_RET, 0, 0, RET_KILL_PROCESS),
    ]
    for number in sorted(DENIED.values()):
        rules += [(_JEQ, 0, 1, number), deny]
    rules += _when(CLONE3, [(_RET, 0, 0, RET_ERRNO | ENOSYS)])
    rules += _when(SOCKET, unix_only)
    rules += _when(SOCKETPAIR, unix_only)
    rules += _when(CLONE, [(_LD_ABS, 0, 0, _ARG0), (_JSET, 1, 0, CLONE_NEW_ANY), allow, deny])
    # kill: of a protected pid, of the caller's process group (0), of every process (-1), of a
    # group (< -1); tkill/tgkill: of a protected pid.
    rules += _when(KILL, _deny_if([(_JEQ, 0), *((_JEQ, pid) for pid in protect), (_JGE, 0x80000000)]))
    for call in (TKILL, TGKILL):
        rules += _when(call, _deny_if([(_JEQ, pid) for pid in protect]))
    return rules + [allow]


def install(protect: tuple[int, ...] = (1,)) -> None:
    """Install the filter on this thread and every process it starts; irreversible. Needs
    no_new_privs (set by ``boot.drop_privileges``) and must run before any other thread exists."""
    rules = program(protect)
    instructions = (_Instruction * len(rules))(*(_Instruction(*rule) for rule in rules))
    fprog = _Program(len(rules), instructions)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        import os
        raise OSError(ctypes.get_errno(), f"seccomp filter: {os.strerror(ctypes.get_errno())}")
