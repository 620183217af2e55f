"""The reward service's domain core: pick the verifier a reference asks for, then apply the
cost-aware reward. No gRPC here; the servicer only converts protos to these types and back.

The cheap verifiers (letters, exact match, F1, recorded labels) run inline; the ones that wait or
burn CPU run off the event loop: math in killable worker processes (or a thread when no pool is
given), code in the sandbox from a thread, the judge as a gRPC call to the adapters.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping

from xrouter.common import bounds
from xrouter.common.errors import InvalidArgument, Unavailable
from xrouter.reward.formula import RewardConfig, check_cost, cost_aware_reward
from xrouter.reward.sandbox import Sandbox, SandboxUnavailable
from xrouter.reward.verifiers import (CodeTests, MathVerifier, RecordedLabels, Verdict, exact_match,
                                      multiple_choice, token_f1, verify_code, verify_math)
from xrouter.reward.verifiers.judge import Judge
from xrouter.reward.verifiers.math import gold_problem

TASK_TYPES = ("multiple_choice", "exact_match", "token_f1", "math", "code", "judge", "recorded_label")
# The reference fields each verifier reads; any other one set is refused, not silently ignored.
_READS = {"multiple_choice": {"gold", "options"}, "exact_match": {"gold", "aliases"},
          "token_f1": {"gold", "aliases"}, "math": {"gold"}, "code": {"code"}, "judge": {"rubric", "gold"},
          "recorded_label": {"dataset", "prompt_id"}}


@dataclasses.dataclass(frozen=True)
class Reference:
    """What an answer is checked against (mirrors ``reward.v1.Reference``; empty means unset)."""

    task_type: str
    gold: str = ""
    dataset: str = ""
    prompt_id: str = ""
    aliases: tuple[str, ...] = ()
    code: CodeTests | None = None
    rubric: str = ""
    options: str = ""


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Correctness in [0, 1], the cost-aware reward, the verifier's reason, and whether the score
    is only a placeholder (``flagged``: no verdict could be reached)."""

    score: float
    reward: float
    detail: str
    flagged: bool = False


class Scorer:
    """Scores answers against references with the verifiers and the configured reward.

    ``sandbox`` enables ``code``, ``judge`` enables ``judge``; ``math`` runs math in worker
    processes (without it, math runs in a thread, unbounded: fine for trusted answers only).
    """

    def __init__(self, recorded: Mapping[str, RecordedLabels], config: RewardConfig = RewardConfig(),
                 *, sandbox: Sandbox | None = None, math: MathVerifier | None = None,
                 judge: Judge | None = None) -> None:
        self._recorded = dict(recorded)
        self.config = config
        self._sandbox = sandbox
        self._math = math
        self._judge = judge

    @property
    def datasets(self) -> list[str]:
        """Names of the recorded-label datasets this scorer knows."""
        return sorted(self._recorded)

    async def score(self, prompt: str, response: str, reference: Reference, cost_usd: float,
                    cost_lambda: float, *, router_cost_usd: float = 0.0,
                    failure: str = "") -> ScoreResult:
        """Verify ``response`` against ``reference`` and turn the verdict into the reward.

        ``failure`` (why the episode did not end properly) makes the reward 0; the verdict is still
        computed and reported. A flagged verdict's reward is 0 as well.
        """
        # Cost inputs are checked first so a malformed request fails the same way whatever its
        # answer, instead of a NOT_FOUND from a recorded label hiding the bad cost.
        check_cost(cost_usd, cost_lambda, router_cost_usd)
        verdict = await self._verify(prompt, response, reference)
        reward = cost_aware_reward(verdict.score, cost_usd, cost_lambda, self.config,
                                   router_cost_usd=router_cost_usd,
                                   failure=failure or ("flagged" if verdict.flagged else ""))
        detail = f"{verdict.detail}; episode failed ({failure.strip()}): reward 0" \
            if failure.strip() else verdict.detail
        return ScoreResult(score=verdict.score, reward=reward, detail=detail, flagged=verdict.flagged)

    def check(self, reference: Reference) -> None:
        """Refuse, before any answer exists, a reference that ``score`` would refuse whatever the
        answer: an unknown or disabled verifier, a missing or malformed gold, code tests that do
        not validate, a recorded-label dataset or prompt this service does not hold. The router
        asks this before it calls a model (``CheckReference``): refused after the calls, the
        request was paid for and failed anyway."""
        task = reference.task_type
        if task not in TASK_TYPES:
            raise InvalidArgument("reference.task_type", f"unknown task type {bounds.shown(task)}; use one of "
                                  f"{', '.join(TASK_TYPES)}")
        _refuse_unread(reference)
        if task == "multiple_choice":
            multiple_choice("", self._gold(reference), reference.options or "ABCDE")  # checks gold and options
        elif task in ("exact_match", "token_f1"):
            self._gold(reference)
        elif task == "math":
            self._math_gold(reference)
        elif task == "code":
            self._code_tests(reference)
        elif task == "judge":
            self._judge_enabled()
        else:
            labels = self._labels(reference)
            if reference.prompt_id not in labels:
                raise InvalidArgument("reference.prompt_id", f"{reference.prompt_id!r} is not a recorded prompt in "
                                      f"dataset {reference.dataset!r}")

    async def _verify(self, prompt: str, response: str, reference: Reference) -> Verdict:
        task = reference.task_type
        _refuse_unread(reference)
        if task == "multiple_choice":
            return multiple_choice(response, self._gold(reference), reference.options or "ABCDE")
        if task == "exact_match":
            return exact_match(response, self._gold(reference), reference.aliases)
        if task == "token_f1":
            return token_f1(response, self._gold(reference), reference.aliases)
        if task == "math":
            gold = self._math_gold(reference)
            if self._math is not None:
                return await asyncio.to_thread(self._math.verify, response, gold)
            return await asyncio.to_thread(verify_math, response, gold)
        if task == "code":
            return await self._code(response, reference)
        if task == "judge":
            return await self._judge_enabled().judge(prompt, response, reference.rubric, reference.gold)
        if task == "recorded_label":
            return self._recorded_label(response, reference)
        raise InvalidArgument("reference.task_type",
                              f"unknown task type {bounds.shown(task)}; use one of {', '.join(TASK_TYPES)}")

    def _judge_enabled(self) -> Judge:
        if self._judge is None:
            raise InvalidArgument("reference.task_type", "'judge' is not enabled on this reward "
                                  "service: it needs XROUTER_REWARD_JUDGE_MODEL and "
                                  "XROUTER_REWARD_ADAPTERS_TARGET")
        return self._judge

    def _code_tests(self, reference: Reference) -> tuple[CodeTests, Sandbox]:
        if reference.code is None:
            raise InvalidArgument("reference.code", "is required for code: set asserts (MBPP style) "
                                  "or check and entry_point (HumanEval style)")
        reference.code.validate()  # before waiting for a sandbox slot
        if self._sandbox is None:
            raise InvalidArgument("reference.task_type", "'code' is not enabled on this reward "
                                  "service: its sandbox is off or this host cannot build it "
                                  "(see the service's start-up log)")
        return reference.code, self._sandbox

    async def _code(self, response: str, reference: Reference) -> Verdict:
        code, sandbox = self._code_tests(reference)
        try:
            return await asyncio.to_thread(verify_code, response, code, sandbox)
        except SandboxUnavailable as error:  # the host failed before the answer ran: not a score
            raise Unavailable(f"code sandbox: {error}") from None

    @staticmethod
    def _gold(reference: Reference) -> str:
        if not reference.gold.strip():
            what = {"multiple_choice": "the correct option letter", "math": "the final answer"}
            raise InvalidArgument("reference.gold", f"is required for {reference.task_type}: set it "
                                  f"to {what.get(reference.task_type, 'the gold answer')}")
        return reference.gold

    @classmethod
    def _math_gold(cls, reference: Reference) -> str:
        gold = cls._gold(reference)
        problem = gold_problem(gold)
        if problem is not None:
            raise InvalidArgument("reference.gold", f"{problem}; set it to the final answer, e.g. 42 or \\frac{{1}}{{2}}")
        return gold

    def _labels(self, reference: Reference) -> RecordedLabels:
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
        return labels

    def _recorded_label(self, response: str, reference: Reference) -> Verdict:
        return self._labels(reference).verdict(reference.prompt_id, response)


def _refuse_unread(reference: Reference) -> None:
    """A field the task's verifier does not read, set anyway: refused naming it (the caller meant
    something by it that would not happen)."""
    reads = _READS.get(reference.task_type)
    if reads is None:
        return
    for name in ("gold", "dataset", "prompt_id", "aliases", "code", "rubric", "options"):
        if name not in reads and getattr(reference, name):
            raise InvalidArgument(f"reference.{name}", f"is not read by the {reference.task_type} verifier "
                                  f"(it reads {', '.join(sorted(reads))}); leave it out")
