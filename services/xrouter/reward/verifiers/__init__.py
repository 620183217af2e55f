"""Domain verifiers: plain functions that judge one answer (and :func:`verify_batch` for many),
usable without gRPC. Each returns a :class:`Verdict`: a score in [0, 1] and a short reason.

| module | task types |
| --- | --- |
| ``choice`` | multiple_choice: the option letter a free-text answer picks |
| ``math`` | math: final-answer extraction, symbolic equivalence (math-verify) |
| ``code`` | code: MBPP asserts / HumanEval check in the sandbox |
| ``qa`` | exact_match, token_f1: SQuAD normalisation |
| ``recorded`` | recorded_label: the labels a replay data set recorded |
| ``judge`` | judge: a rubric prompt to a judge model through the adapters |
"""

from xrouter.reward.verifiers.base import Verdict, verify_batch
from xrouter.reward.verifiers.choice import extract_choice, multiple_choice
from xrouter.reward.verifiers.code import CodeTests, build_program, extract_code, verify_code
from xrouter.reward.verifiers.math import MathVerifier, extract_final_answer, verify_math
from xrouter.reward.verifiers.qa import exact_match, f1_score, normalize_answer, token_f1
from xrouter.reward.verifiers.recorded import RecordedLabels

__all__ = ["CodeTests", "MathVerifier", "RecordedLabels", "Verdict", "build_program", "exact_match",
           "extract_choice", "extract_code", "extract_final_answer", "f1_score", "multiple_choice",
           "normalize_answer", "token_f1", "verify_batch", "verify_code", "verify_math"]
