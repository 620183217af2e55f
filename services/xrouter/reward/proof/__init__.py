"""Proof of the verifiers on real benchmark data (``python -m xrouter.reward.proof``)."""
