"""The metering service with its database time measured, for bench/router_profile.py: every psycopg
``execute``/``executemany``/``commit``/``rollback`` the ledger makes is timed (wall clock start, and
duration), and the list is written as JSON to ``$XROUTER_BENCH_DB_TIMES`` when the service exits.
The profile counts the calls that started inside its measured window. Bench-only: the service
itself is unchanged (this wraps psycopg's classes, then runs the real entry point).

    XROUTER_BENCH_DB_TIMES=/tmp/db.json python -m bench.metering_db_timing
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

_TIMES: list[tuple[float, float]] = []  # (time.time() at start, seconds)
_LOCK = threading.Lock()  # the ledger runs its transactions in worker threads


def _timed(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, started = time.time(), time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - started
            with _LOCK:
                _TIMES.append((wall, elapsed))
    return wrapper


def _dump(path: str) -> None:
    with _LOCK:
        text = json.dumps(_TIMES)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)


def main() -> None:
    path = os.environ["XROUTER_BENCH_DB_TIMES"]
    for cls, names in ((psycopg.Cursor, ("execute", "executemany")), (psycopg.Connection, ("commit", "rollback"))):
        for name in names:
            setattr(cls, name, _timed(getattr(cls, name)))
    atexit.register(_dump, path)
    from xrouter.metering.server import main as serve

    serve()


if __name__ == "__main__":
    main()
