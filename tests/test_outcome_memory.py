"""The outcome memory (router/compact/memory.py): what it says about each model for a query, that a
prompt never sees its own outcomes, that added rows count at once, and that a saved memory loads
back to the same answers."""

from __future__ import annotations

import numpy as np
import pytest

from xrouter.router.compact.memory import (
    CLOSENESS, EVIDENCE, GLOBAL_COUNT, GLOBAL_MEAN, KNOWN, LOCAL_MEAN, MEMORY_FEATURES, OutcomeMemory)


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


VECTORS = {"maths one": _unit(1, 0, 0), "maths two": _unit(0.95, 0.05, 0), "poetry": _unit(0, 1, 0)}
SCORES = {"maths one": {"small": 0.0, "big": 1.0}, "maths two": {"small": 0.0, "big": 1.0},
          "poetry": {"small": 1.0, "big": 1.0}}


def _memory(k: int = 2) -> OutcomeMemory:
    texts = list(VECTORS)
    return OutcomeMemory.from_outcomes(texts, [SCORES[t] for t in texts], VECTORS.__getitem__, k=k)


def test_a_query_reads_the_scores_of_its_nearest_prompts_weighted_by_similarity() -> None:
    features = _memory().features(_unit(1, 0.02, 0), "a new maths question", ["small", "big"])
    assert features.shape == (2, MEMORY_FEATURES)
    small, big = features
    # Both nearest prompts are maths (poetry is far): small fails them, big solves them.
    assert small[0] == pytest.approx(0.0, abs=1e-6) and big[0] == pytest.approx(1.0, abs=1e-6)
    assert small[2] == big[2] == 1.0 and small[1] > 0.9  # known, and the neighbours are close


def test_a_prompt_never_reads_its_own_outcomes() -> None:
    memory = _memory(k=1)
    # "poetry" asked again: its own row is left out, so the nearest is a maths prompt (small fails).
    assert memory.features(VECTORS["poetry"], "poetry", ["small"])[0, 0] == pytest.approx(0.0, abs=1e-6)
    # The same vector under another text does read the poetry row (small succeeds there).
    assert memory.features(VECTORS["poetry"], "a poem, please", ["small"])[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_a_model_the_memory_knows_nothing_of_reads_zeros() -> None:
    features = _memory().features(_unit(1, 0, 0), "q", ["brand-new", "big"])
    assert features[0].tolist() == [0.0] * MEMORY_FEATURES and features[1, KNOWN] == 1.0


def test_added_rows_count_at_the_next_lookup() -> None:
    memory = _memory()
    assert memory.features(_unit(0, 0, 1), "q", ["brand-new"])[0, 2] == 0.0
    memory.add("a served request", _unit(0, 0.1, 1), {"brand-new": 0.8, "big": 0.0})
    features = memory.features(_unit(0, 0, 1), "q", ["brand-new", "big"])
    assert features[0, 2] == 1.0 and features[0, 0] == pytest.approx(0.8, abs=1e-6)
    assert len(memory) == 4 and memory.scores.shape == (4, 3)


def test_saved_memory_loads_back_to_the_same_answers(tmp_path) -> None:
    memory = _memory()
    memory.add("served", _unit(0.2, 0.3, 0.9), {"small": 0.5})
    loaded = OutcomeMemory.load(memory.save(tmp_path))
    query = _unit(0.6, 0.5, 0.1)
    # int8 vectors: similarities move by < 0.01, so the weighted means barely move.
    np.testing.assert_allclose(loaded.features(query, "q", ["small", "big"]),
                               memory.features(query, "q", ["small", "big"]), atol=0.02)
    # Leave-one-out keys survive: "poetry" still skips its own row (which would read 1.0).
    assert loaded.features(VECTORS["poetry"], "poetry", ["small"])[0, 0] == pytest.approx(
        memory.features(VECTORS["poetry"], "poetry", ["small"])[0, 0], abs=0.01) and \
        memory.features(VECTORS["poetry"], "poetry", ["small"])[0, 0] < 0.6


def test_inconsistent_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="memory shapes disagree"):
        OutcomeMemory(np.zeros((2, 3), np.float32), [b"12345678"], ["m"], np.zeros((2, 1), np.float32))


def test_the_whole_memory_gives_each_model_its_mean_and_count_without_the_prompt_itself() -> None:
    memory = _memory()
    small = memory.features(_unit(1, 0, 0), "a new question", ["small"])[0]
    assert small[GLOBAL_MEAN] == pytest.approx(1 / 3) and small[GLOBAL_COUNT] == pytest.approx(np.log1p(3) / 10)
    # Asked again, "poetry" (small: 1.0) is not counted in its own model's mean either.
    assert memory.features(VECTORS["poetry"], "poetry", ["small"])[0, GLOBAL_MEAN] == pytest.approx(0.0)


def test_evidence_is_the_kernel_weight_of_the_neighbours_so_far_rows_weigh_little() -> None:
    memory = OutcomeMemory.from_outcomes(["near", "far"], [{"m": 1.0}, {"m": 0.0}],
                                         {"near": _unit(1, 0.1, 0), "far": _unit(0, 1, 0)}.__getitem__,
                                         k=2, temperature=0.5)
    features = memory.features(_unit(1, 0, 0), "q", ["m"])[0]
    near, far = float(_unit(1, 0.1, 0) @ _unit(1, 0, 0)), 0.0
    weights = np.exp((np.array([near, far]) - 1) / 0.5)
    assert features[EVIDENCE] == pytest.approx(weights.sum(), rel=1e-4)
    assert features[LOCAL_MEAN] == pytest.approx(weights[0] / weights.sum(), rel=1e-4)
    assert features[CLOSENESS] == pytest.approx((near + far) / 2, rel=1e-4)


def test_served_verdicts_calibrate_their_model_by_their_mean_residual_offline_rows_do_not() -> None:
    from xrouter.router.compact.memory import CALIBRATION, CALIBRATION_PRIOR_ROWS, CALIBRATION_Z

    memory = _memory()
    assert memory.features(_unit(1, 0, 0), "q", ["small", "big"])[:, CALIBRATION].tolist() == [0.0, 0.0]
    # The network predicted 0.2 for "small" on two served prompts it then answered right.
    memory.add("served one", _unit(0, 0, 1), {"small": 1.0}, {"small": 0.2})
    memory.add("served two", _unit(0, 0.2, 1), {"small": 1.0}, {"small": 0.2})
    calibration = memory.features(_unit(1, 0, 0), "q", ["small", "big"])[:, CALIBRATION]
    # Mean residual 0.8 over 2 + the prior rows, kept in part: t² = 2·0.8² / variance, the variance
    # from the prior rows alone (the two residuals agree): 4·0.25 / (1 + 4).
    t_squared = 2 * 0.8 ** 2 / (CALIBRATION_PRIOR_ROWS * 0.25 / (1 + CALIBRATION_PRIOR_ROWS))
    assert calibration[0] == pytest.approx(1.6 / (2 + CALIBRATION_PRIOR_ROWS) * (1 - CALIBRATION_Z ** 2 / t_squared))
    assert calibration[1] == 0.0
    # A served prompt asked again does not read its own residual: one verdict alone is not told
    # apart from noise (t² = 0.8² / 0.25 < Z²).
    assert memory.features(_unit(0, 0, 1), "served one", ["small"])[0, CALIBRATION] == 0.0
    assert memory.rows_of("small") == 5 and memory.rows_of("never-seen") == 0


def test_a_served_verdict_counts_once_through_calibration_never_as_local_evidence() -> None:
    from xrouter.router.compact.memory import CALIBRATION

    memory = _memory()
    query = _unit(0, 0.1, 1)
    before = memory.features(query, "q", ["small"])[0].copy()
    # Served, right next to the query: the network said 0.2, the verdict is 1 (three times).
    for name in ("served", "served again", "served a third time"):
        memory.add(name, _unit(0, 0.1, 1), {"small": 1.0}, {"small": 0.2})
    after = memory.features(query, "q", ["small"])[0]
    assert after[EVIDENCE] == pytest.approx(before[EVIDENCE]) and after[LOCAL_MEAN] == pytest.approx(before[LOCAL_MEAN])
    assert after[CALIBRATION] > 0
    # The same verdict recorded as an outcome (no prediction: a reference-scored row, as offline data)
    # is local evidence, and calibrates nothing.
    recorded = _memory()
    recorded.add("recorded", _unit(0, 0.1, 1), {"small": 1.0})
    as_outcome = recorded.features(query, "q", ["small"])[0]
    assert as_outcome[EVIDENCE] > before[EVIDENCE] + 0.5 and as_outcome[CALIBRATION] == 0.0


def test_a_calibration_waits_for_a_bias_the_noise_of_the_verdicts_cannot_explain() -> None:
    """A model whose predictions were right gets verdicts scattered around them: no calibration.
    One whose predictions were all 0.3 too low gets nearly the whole shift once the verdicts show it."""
    from xrouter.router.compact.memory import CALIBRATION, CALIBRATION_PRIOR_ROWS

    rng = np.random.default_rng(0)
    unbiased, biased = _memory(), _memory()
    for i in range(60):
        vector = _unit(0, rng.uniform(-1, 1), 1)
        right = float(i % 2)  # answered right half of the time, predicted 0.5 (+ a little noise)
        unbiased.add(f"p{i}", vector, {"small": right}, {"small": 0.5 + rng.normal(0, 0.03)})
        biased.add(f"p{i}", vector, {"small": float(rng.random() < 0.8)}, {"small": 0.5})
    assert unbiased.features(_unit(1, 0, 0), "q", ["small"])[0, CALIBRATION] == 0.0
    shift = biased.features(_unit(1, 0, 0), "q", ["small"])[0, CALIBRATION]
    mean = float(np.nanmean(biased.residuals[:, biased.column["small"]]))
    assert 0.8 * mean * 60 / (60 + CALIBRATION_PRIOR_ROWS) < shift < mean * 60 / (60 + CALIBRATION_PRIOR_ROWS)
    # The same bias seen on 3 verdicts is not yet told apart from noise.
    early = _memory()
    for i in range(3):
        early.add(f"p{i}", _unit(0, i / 3, 1), {"small": float(i != 1)}, {"small": 0.5})
    assert early.features(_unit(1, 0, 0), "q", ["small"])[0, CALIBRATION] == 0.0
