"""Authorize in memory mode: the budget check from the in-memory totals (``totals.py``), the
reservation written by group commit before the answer goes out — or, for a request_id the router
generated (the client sent none, so no retry can ever carry it), held in memory only: no
transaction at all on the request's way in.

New work (the common case: a fresh request_id) costs no budget query and no row lock: the totals
decide, and the reservation row joins the next batched transaction, which also proves the id new
(``INSERT ... ON CONFLICT DO NOTHING``). A request_id seen before (a retry) is answered by the
database path (``budgets.authorize``), which says what the earlier request is doing; so is one
the totals would refuse, after a unique-key lookup finds it seen (a retry is never refused for
budget).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from xrouter.common.errors import ResourceExhausted
from xrouter.metering import metrics
from xrouter.metering.batching import GroupCommit
from xrouter.metering.budgets import Authorization
from xrouter.metering.durability import StoreGuard
from xrouter.metering.ledger import validate_authorize
from xrouter.metering.totals import BudgetTotals, Held


class MemoryAdmission:
    """Authorize from ``guard.totals`` (which must be set)."""

    def __init__(self, guard: StoreGuard) -> None:
        if guard.totals is None:
            raise ValueError("memory admission needs a guard with in-memory totals")
        self._guard = guard
        self._totals: BudgetTotals = guard.totals
        self._reservations: GroupCommit[Held, bool] = GroupCommit(guard.reserve_many, metrics.RESERVE_BATCH)

    async def authorize(self, request_id: str, tenant: str, estimate: int, models: Sequence[str],
                        generated: bool = False) -> Authorization:
        """Reserve ``estimate`` or raise ResourceExhausted naming the budget it would pass (see
        ``Ledger.authorize`` for the states of a request_id seen before). ``generated``: the router
        made the id up, so no retry can carry it: the reservation is held in memory only, and the
        answer needs no transaction (the hot path's common case)."""
        validate_authorize(request_id, tenant, estimate, models)
        self._guard.require_complete()
        if self._totals.holds(request_id):  # in flight here: the database path says what it is doing
            return await self._from_ledger(request_id, tenant, estimate, models)
        now = self._guard.ledger.now()
        held = Held(str(uuid.uuid4()), request_id, tenant, estimate, frozenset(models), now,
                    now + self._guard.ledger.reservation_ttl, durable=not generated)
        try:
            granted = self._totals.admit(held, now)
        except ResourceExhausted:
            # A request_id seen before is never refused for budget (its retry gets the stored
            # answer or its state): only a new one is. Refusals alone pay this lookup.
            if not generated and await asyncio.to_thread(self._guard.call, self._guard.ledger.seen, request_id):
                return await self._from_ledger(request_id, tenant, estimate, models)
            raise
        if generated:
            metrics.RESERVED_IN_MEMORY.inc()
            return granted
        try:
            new = await self._reservations.submit(held)
        except Exception:
            self._totals.forget(held)  # not written (a cancelled caller's write is settled by the writer)
            raise
        return granted if new else await self._from_ledger(request_id, tenant, estimate, models)

    async def _from_ledger(self, request_id: str, tenant: str, estimate: int, models: Sequence[str]) -> Authorization:
        metrics.AUTHORIZE_FROM_LEDGER.inc()
        granted = await asyncio.to_thread(self._guard.call, self._guard.ledger.authorize, request_id, tenant,
                                          estimate, list(models))
        if granted.state == "new":  # reserved by the database path after all (a race of retries): hold it
            ttl = self._guard.ledger.reservation_ttl
            self._totals.confirm(Held(granted.reservation_id, request_id, tenant, estimate, frozenset(models),
                                      granted.expires_at - ttl, granted.expires_at))
        return granted
