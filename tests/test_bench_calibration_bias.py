"""bench/calibration_bias.py: every served verdict lands in its model's chosen or explored split,
and each model gets its true bias over the validation prompts."""

from __future__ import annotations

import asyncio
import math

from test_generalisation import tiny_bundle  # noqa: F401 - the fixture


def test_served_verdicts_are_split_by_how_the_first_call_was_chosen(tiny_bundle) -> None:  # noqa: F811
    from bench.calibration_bias import measure

    report = asyncio.run(measure(tiny_bundle, "arena", requests=8, seed=1, validation_prompts=5))
    models = report["models"]
    assert models and report["validation_prompts"] == 5
    assert all(math.isfinite(row["true_bias"]) and -1 <= row["true_bias"] <= 1 for row in models.values())
    served = sum(row["chosen"]["n"] + row["explored"]["n"] for row in models.values())
    assert 0 < served <= 8  # one verdict per answered request
    for row in models.values():
        for part in ("chosen", "explored"):
            assert (part_mean := row[part]["mean_residual"]) is None or -1 <= part_mean <= 1
            assert (part_mean is None) == (row[part]["n"] == 0)
