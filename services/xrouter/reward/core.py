"""The reward service's domain core: pick the verifier a reference asks for, then apply the
cost-aware reward. No gRPC here; the servicer only converts protos to these types and back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from xrouter.common.errors import InvalidArgument
from xrouter.reward import verifiers
from xrouter.reward.formula import RewardConfig, check_cost, cost_aware_reward
from xrouter.reward.verifiers import RecordedLabels, Verdict

TASK_TYPES = ("multiple_choice", "exact_match", "recorded_label")


@dataclasses.dataclass(frozen=True)
class Reference:
    """What an answer is checked against (mirrors ``reward.v1.Reference``; empty means unset)."""

    task_type: str
    gold: str = ""
    dataset: str = ""
    prompt_id: str = ""


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Correctness in [0, 1], the cost-aware reward, and the verifier's reason."""

    score: float
    reward: float
    detail: str


class Scorer:
    """Scores answers against references with the verifiers and the configured reward."""

    def __init__(self, recorded: Mapping[str, RecordedLabels],
                 config: RewardConfig = RewardConfig()) -> None:
        self._recorded = dict(recorded)
        self.config = config

    @property
    def datasets(self) -> list[str]:
        """Names of the recorded-label datasets this scorer knows."""
        return sorted(self._recorded)

    def score(self, prompt: str, response: str, reference: Reference, cost_usd: float,
              cost_lambda: float) -> ScoreResult:
        """Verify ``response`` against ``reference`` and turn the verdict into the reward.

        ``prompt`` is not needed by today's verifiers (the reference pins the question) but is part
        of the contract so that verifiers which read it (e.g. code tests) fit the same call.
        """
        # Cost inputs are checked first so a malformed request fails the same way whatever its
        # answer, instead of a NOT_FOUND from a recorded label hiding the bad cost.
        check_cost(cost_usd, cost_lambda)
        verdict = self._verify(response, reference)
        reward = cost_aware_reward(verdict.score, cost_usd, cost_lambda, self.config)
        return ScoreResult(score=verdict.score, reward=reward, detail=verdict.detail)

    def _verify(self, response: str, reference: Reference) -> Verdict:
        task = reference.task_type
        if task == "multiple_choice":
            return verifiers.multiple_choice(response, self._gold(reference, task))
        if task == "exact_match":
            return verifiers.exact_match(response, self._gold(reference, task))
        if task == "recorded_label":
            return self._recorded_label(response, reference)
        raise InvalidArgument("reference.task_type",
                              f"unknown task type {task!r}; use one of {', '.join(TASK_TYPES)}")

    @staticmethod
    def _gold(reference: Reference, task: str) -> str:
        if not reference.gold.strip():
            what = "the correct option letter" if task == "multiple_choice" else "the gold answer"
            raise InvalidArgument("reference.gold", f"is required for {task}: set it to {what}")
        return reference.gold

    def _recorded_label(self, response: str, reference: Reference) -> Verdict:
        labels = self._recorded.get(reference.dataset)
        if labels is None:
            known = ", ".join(self.datasets) or "none are loaded"
            raise InvalidArgument("reference.dataset",
                                  f"unknown dataset {reference.dataset!r} for recorded_label; "
                                  f"known datasets: {known}")
        if not reference.prompt_id:
            raise InvalidArgument("reference.prompt_id",
                                  f"is required for recorded_label: set it to the prompt's id in "
                                  f"{reference.dataset!r}")
        return labels.verdict(reference.prompt_id, response)
