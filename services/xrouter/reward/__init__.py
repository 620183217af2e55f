"""The reward service: domain verifiers (multiple choice, math, code in a sandbox, QA, recorded
labels, LLM judge) and the cost-aware reward r = score * (K - min(lambda * cost_usd, cost_max))
served over gRPC. Layout: ``verifiers/`` (plain functions), ``sandbox/`` (code isolation),
``workers.py`` (killable worker processes for math), ``formula.py``, ``core.py`` (dispatch),
``server.py`` (gRPC), ``proof/`` (the verifiers checked on real benchmark data)."""
