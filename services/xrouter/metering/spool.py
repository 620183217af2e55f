"""A bounded, append-only, on-disk spool of ledger writes made while the database is down.

File ``pending.jsonl`` in the spool folder, one entry a line: ``<crc32 hex8> <json>\\n``. An
entry is acknowledged to the caller only after its line is flushed and fsync'ed, so a crash never
loses an acknowledged write; a torn last line (a crash mid-append) was never acknowledged and is
dropped with a warning. Entries are replayed in order, in chunks, by :meth:`Spool.drain`; the
ledger writes they carry are idempotent, so replaying an entry twice (a crash mid-drain) counts it
once. An entry the ledger refuses on replay (a changed duplicate) is moved to ``rejected.jsonl``
and logged as an error: never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import zlib
from collections.abc import Callable
from typing import Any

from xrouter.common.errors import Unavailable
from xrouter.metering import metrics

log = logging.getLogger(__name__)

Entry = dict[str, Any]


def _encode(entry: Entry) -> bytes:
    payload = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def _decode(line: bytes) -> Entry | None:
    """The entry of a complete, intact line; None for a torn or corrupt one."""
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        entry = json.loads(payload)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


class Spool:
    """Durable FIFO of pending ledger writes, bounded to ``max_entries``. Thread-safe."""

    def __init__(self, folder: pathlib.Path, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / "pending.jsonl"
        self.rejected_path = folder / "rejected.jsonl"
        self._max = max_entries
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._file = open(self.path, "ab+")  # noqa: SIM115 - open for the spool's lifetime
        self._count = self._recover()
        self._done = 0  # bytes of the file already applied by drain (in memory: a restart replays all)
        if self._count:
            log.warning("spool %s holds %d ledger writes from before a restart; they will be replayed",
                        self.path, self._count)

    def _recover(self) -> int:
        """Count the intact entries; cut a torn tail (never acknowledged) off the file."""
        self._file.seek(0)
        count, good_end = 0, 0
        for line in self._file:
            if _decode(line) is None:
                break
            count, good_end = count + 1, good_end + len(line)
        size = self._file.seek(0, os.SEEK_END)
        if good_end < size:
            log.warning("spool %s: dropping %d bytes of a torn or corrupt tail (never acknowledged)",
                        self.path, size - good_end)
            self._file.truncate(good_end)
            os.fsync(self._file.fileno())
        return count

    def __len__(self) -> int:
        return self._count

    def append(self, entry: Entry) -> None:
        """Persist ``entry`` (fsync'ed before returning); Unavailable when the spool is full."""
        self.append_many([entry])

    def append_many(self, entries: list[Entry]) -> None:
        """Persist ``entries`` in order with one fsync (a group commit); all or none: Unavailable
        when they do not fit."""
        data = b"".join(_encode(entry) for entry in entries)
        with self._lock:
            if self._count + len(entries) > self._max:
                raise Unavailable(
                    f"metering: the ledger database is unreachable and the spool is full ({self._max} writes "
                    f"in {self.path}): this write was NOT stored; retry later")
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._count += len(entries)

    def drain(self, apply: Callable[[list[Entry]], list[str | None]], chunk: int = 500) -> int:
        """Apply the entries in order, ``chunk`` at a time; when none are left, empty the file.
        ``apply`` returns, per entry, None (applied) or why the ledger refused it (the entry then
        goes to rejected.jsonl). Returns how many were applied or rejected. An exception from
        ``apply`` (the database went down again) stops the drain, leaving the rest for the next one."""
        handled = 0
        with self._drain_lock:
            while True:
                with self._lock:
                    end = self._file.seek(0, os.SEEK_END)
                    if self._done >= end:
                        self._file.truncate(0)
                        os.fsync(self._file.fileno())
                        self._done, self._count = 0, 0
                        return handled
                with open(self.path, "rb") as reader:
                    reader.seek(self._done)
                    lines = reader.read(end - self._done).splitlines(keepends=True)
                for start in range(0, len(lines), chunk):
                    part = lines[start:start + chunk]
                    entries = [_decode(line) for line in part]
                    intact = [entry for entry in entries if entry is not None]
                    refusals = iter(apply(intact) if intact else [])
                    for line, entry in zip(part, entries, strict=True):
                        if entry is None:  # cannot happen after _recover: appends are whole lines
                            self._reject(line.decode(errors="replace"), "corrupt spool line")
                        elif (refusal := next(refusals)) is not None:
                            self._reject(entry, refusal)
                    self._done += sum(len(line) for line in part)
                    handled += len(part)

    def _reject(self, entry: Entry | str, reason: str) -> None:
        log.error("spool: the ledger refused a spooled write (%s); kept in %s: %s",
                  reason, self.rejected_path, entry)
        metrics.SPOOL_REJECTED.inc()
        with open(self.rejected_path, "ab") as rejected:
            rejected.write(json.dumps({"reason": reason, "entry": entry}).encode() + b"\n")
            rejected.flush()
            os.fsync(rejected.fileno())

    def close(self) -> None:
        """Close the file (entries stay on disk for the next start)."""
        with self._lock:
            self._file.close()
