"""The LM decision-latency benchmark's report (bench/lm_decision_latency.py) and how it finds vLLM:
grouping by backend, pool and turn, nearest-rank percentiles, and a missing vLLM named, not faked."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

from bench.lm_decision_latency import Turn, summarize
from xrouter_training.vllm_server import find_vllm_python


def test_turns_are_summarised_per_backend_pool_and_turn() -> None:
    first = [Turn("vllm", "3_models", "first", ms, 1000, 50, tool_call=ms < 300) for ms in (100, 200, 300, 400, 1000)]
    later = [Turn("vllm", "3_models", "later", 80, 1200, 40, tool_call=True)]
    other = [Turn("transformers", "11_models", "first", 2000, 2400, 0, tool_call=False)]
    report = summarize(first + later + other)
    assert list(report) == ["vllm", "transformers"] and list(report["vllm"]["3_models"]) == ["first", "later"]
    row = report["vllm"]["3_models"]["first"]
    # Nearest rank over 5 values: p50 is the 3rd, p95 the 5th (round(0.95 * 4) = 4).
    assert (row["n"], row["p50_ms"], row["p95_ms"], row["mean_ms"]) == (5, 300.0, 1000.0, 400.0)
    assert row["ms_per_generated_token"] == 2000 / 250 and row["tool_call_share"] == 0.4
    assert report["vllm"]["3_models"]["later"]["mean_prompt_tokens"] == 1200
    nothing = report["transformers"]["11_models"]["first"]["ms_per_generated_token"]
    assert nothing != nothing  # NaN: no tokens generated, no rate claimed


def test_a_missing_vllm_is_named_not_faked(tmp_path: pathlib.Path) -> None:
    absent = str(tmp_path / "no-python")
    assert find_vllm_python(absent) == ("", f"{absent} is not an executable")
    if importlib.util.find_spec("vllm") is None:  # the project's venv: vLLM cannot be installed there
        assert find_vllm_python(sys.executable) == ("", f"{sys.executable} cannot import vllm")
