"""A small pool of worker processes with a hard deadline per call.

For verifiers that may run away on hostile input in code that cannot be interrupted (sympy on
``9^{9^{9^{9}}}``): the call's worker is killed at the deadline and a fresh one takes its place, so
one answer can neither hang the service nor take its memory. ``concurrent.futures`` cannot kill a
single worker, hence this. Workers are started with ``spawn`` (safe in a threaded gRPC server) and
run each call on their main thread, where the verifier's own ``signal.alarm`` bounds also work.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import resource
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)


class WorkerTimeout(Exception):
    """The call overran its deadline; its worker was killed."""


class WorkerFailed(Exception):
    """The call raised in the worker, or the worker died; the message says which."""


class WorkerStartFailed(WorkerFailed):
    """No worker could be started: the pool, not the call, is broken."""


def _serve(conn: Connection, target: Callable[..., Any], prepare: Callable[[], Any] | None,
           memory_bytes: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if prepare is not None:
        prepare()
    conn.send("ready")
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        try:
            result = (True, target(*args))
        except Exception as error:  # noqa: BLE001 - sent back to the caller, who raises it
            result = (False, f"{type(error).__name__}: {error}")
        conn.send(result)


class _Worker:
    def __init__(self, context: Any, target: Callable[..., Any], prepare: Callable[[], Any] | None,
                 memory_bytes: int | None) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, target, prepare, memory_bytes),
                                       daemon=True, name="xrouter-reward-worker")
        self.process.start()
        child.close()

    def wait_ready(self, timeout: float) -> None:
        try:
            if self.conn.poll(timeout) and self.conn.recv() == "ready":
                return
        except (EOFError, OSError):
            pass
        self.kill()
        raise WorkerStartFailed(f"a worker did not start within {timeout:g}s "
                           f"(exit code {self.process.exitcode})")

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class WorkerPool:
    """Runs ``target(*args)`` in up to ``workers`` processes, each call bounded by ``deadline_s``.

    ``target`` and ``prepare`` (run once per worker, e.g. to import heavy modules) must be
    module-level functions. Thread-safe; a call waits for a free worker.
    """

    def __init__(self, target: Callable[..., Any], workers: int, deadline_s: float,
                 prepare: Callable[[], Any] | None = None, memory_bytes: int | None = None,
                 startup_s: float = 120.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = deadline_s
        self._startup_s = startup_s
        self._workers = workers
        self._spec = (target, prepare, memory_bytes)
        self._context = multiprocessing.get_context("spawn")
        self._slots = threading.BoundedSemaphore(workers)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._closed = False

    def call(self, *args: Any) -> Any:
        """The target's result; :class:`WorkerTimeout` or :class:`WorkerFailed` otherwise."""
        with self._slots:
            if self._closed:
                raise WorkerFailed("the worker pool is closed")
            worker = self._take()
            try:
                worker.conn.send(args)
                if not worker.conn.poll(self.deadline_s):
                    worker.kill()
                    raise WorkerTimeout(f"no result within {self.deadline_s:g}s; the worker was killed")
                ok, value = worker.conn.recv()
            except (EOFError, OSError) as error:
                worker.kill()
                raise WorkerFailed(f"the worker died ({worker.process.exitcode=}): {error}") from None
            self._idle.put(worker)
        if not ok:
            raise WorkerFailed(value)
        return value

    def _take(self) -> _Worker:
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                worker = _Worker(self._context, *self._spec)
                worker.wait_ready(self._startup_s)
                return worker
            if worker.process.is_alive():
                return worker
            worker.kill()

    def start(self) -> None:
        """Start every worker now (they start in parallel) instead of on first use."""
        fresh = [_Worker(self._context, *self._spec) for _ in range(self._workers)]
        for worker in fresh:
            worker.wait_ready(self._startup_s)
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the idle workers; calls in flight finish, later calls fail."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return
