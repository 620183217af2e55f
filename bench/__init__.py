"""Benchmarks (``make bench`` → ``python -m bench.run``); results land in bench-results/*.json."""
