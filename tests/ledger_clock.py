"""A settable clock for ledger tests: expiry and calendar periods without sleeping."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc
NOON = dt.datetime(2025, 3, 15, 12, 0, tzinfo=UTC)


class Clock:
    """Returns ``now``; tests move it."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now
