"""The reward service: domain verifiers (multiple choice, exact match, recorded labels) and the
cost-aware reward r = score * (K - min(lambda * cost_usd, cost_max)) served over gRPC."""
