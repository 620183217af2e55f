"""Prometheus metrics of the metering service (the RPC counters live in xrouter.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STORE_UP = Gauge("xrouter_metering_store_up", "1 while the ledger database answers and the spool is empty")
SPOOL_ENTRIES = Gauge("xrouter_metering_spool_entries", "Ledger writes waiting in the on-disk spool")
SPOOLED = Counter("xrouter_metering_spooled", "Ledger writes put in the spool because the database was down",
                  ["op"])
SPOOL_REJECTED = Counter("xrouter_metering_spool_rejected",
                         "Spooled writes the ledger refused on replay (kept in rejected.jsonl)")
SOFT_LIMIT_EXCEEDED = Counter("xrouter_metering_soft_limit_exceeded",
                              "Authorizations allowed past a soft budget limit", ["tenant"])
RECORD_BATCH = Histogram("xrouter_metering_record_batch_size", "Records written per transaction (group commit)",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500))
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)
SETTLE_BATCH = Histogram("xrouter_metering_settle_batch_size", "Settlements written per transaction (group commit)",
                         buckets=_SIZES)
SCORE_BATCH = Histogram("xrouter_metering_score_batch_size", "Scores written per transaction (group commit)",
                        buckets=_SIZES)
RESERVE_BATCH = Histogram("xrouter_metering_reserve_batch_size",
                          "Reservations written per transaction (group commit, in-memory budgets)", buckets=_SIZES)
AUTHORIZE_FROM_LEDGER = Counter("xrouter_metering_authorize_from_ledger",
                                "Authorizations answered by the database path in memory mode (a request_id seen before)")
RESERVED_IN_MEMORY = Counter("xrouter_metering_reserved_in_memory",
                             "Reservations held in memory only (router-generated request_id: no ledger row)")
