"""The compact learned policy: a small torch network over a query encoding, per-model features and
the cost preference λ, deciding one turn at a time (call, escalate, or select)."""
