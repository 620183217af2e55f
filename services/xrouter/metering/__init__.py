"""The metering service: a SQL cost ledger of model calls, budget reservations and usage."""
