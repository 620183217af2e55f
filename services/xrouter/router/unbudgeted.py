"""Which tenants have no hard budget on a pool, as metering said a moment ago.

Authorize is a round trip to metering on every request (~2 ms on the path at c=1 here, and a third
of the gRPC calls a request makes). For a request whose id the router made up (no retry can carry
it) and a tenant with no hard budget on the models it may call, there is nothing to check and no
earlier attempt to find: metering holds the reservation in memory only, and it would say yes. So
when an Authorize answers "no hard limit" (remaining −1), the router remembers that for ``ttl_s`` and
admits such requests without asking again. Every request is still settled (with its calls) before
its answer goes out: the ledger and metering's totals see all of it.

The bound this trades: a hard budget set on a tenant (or on a model of the pool) that had none is
enforced by each router process at most ``ttl_s`` later; requests admitted in that window were not
checked against it. Their spend is counted when they settle, so the first refusal comes at most
``ttl_s`` late. ``ttl_s`` 0 asks metering every time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

MAX_ENTRIES = 10_000  # tenant × pool pairs remembered; past it, forget them all (they are re-learned)


class UnbudgetedTenants:
    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._until: dict[tuple[str, frozenset[str]], float] = {}

    def admits(self, tenant: str, models: Iterable[str]) -> bool:
        """Whether metering said, less than ``ttl_s`` ago, that no hard budget applies here."""
        if self.ttl_s <= 0:
            return False
        until = self._until.get((tenant, frozenset(models)))
        return until is not None and until > self._clock()

    def note(self, tenant: str, models: Iterable[str], remaining_micro_usd: int, soft_limit_exceeded: bool) -> None:
        """What an Authorize answered (``remaining_micro_usd`` −1: no hard limit applies). A passed
        soft limit is not remembered as "nothing to check": metering counts every request past it
        (xrouter_metering_soft_limit_exceeded), so those requests keep asking."""
        key = (tenant, frozenset(models))
        if remaining_micro_usd != -1 or soft_limit_exceeded or self.ttl_s <= 0:
            self._until.pop(key, None)
            return
        if len(self._until) >= MAX_ENTRIES:
            self._until.clear()
        self._until[key] = self._clock() + self.ttl_s
