"""LLM judge (for chat): a rubric prompt sent through the adapters to a judge model, read strictly.

The judge must end its reply with one line ``SCORE: <0-10>``. Anything else (no such line, two of
them, a grade out of range, a reply cut off by the token limit) is *flagged*, never guessed: a
trainer that learned from a guessed grade would learn the parser's bias, not the judge's.
"""

from __future__ import annotations

import re

import grpc

from xrouter.api.adapters.v1 import adapters_pb2, adapters_pb2_grpc
from xrouter.api.common.v1 import common_pb2
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from xrouter.reward.verifiers.base import Verdict, clip

DEFAULT_RUBRIC = ("Grade how well the answer serves the user's request: correct, complete, relevant, "
                  "clear, and honest about uncertainty. A wrong, evasive or harmful answer gets a low "
                  "grade however well it is written.")

JUDGE_SYSTEM = """You are a strict, impartial grader. You get a rubric, a user's request, possibly a \
reference answer, and an answer to grade. Reason briefly, then end your reply with exactly one line
SCORE: <an integer from 0 to 10>
and nothing after it."""

_SCORE = re.compile(r"SCORE:[ \t]*(\d{1,2})")
# Lines that look like an attempt at a grade line, however spelled: counted to refuse ambiguity.
_SCORE_LIKE = re.compile(r"^[\s*#_`]*(?:score|grade|rating)\s*[:=]", re.IGNORECASE)


def judge_messages(prompt: str, response: str, rubric: str = "",
                   reference: str = "") -> list[tuple[str, str]]:
    """The (role, content) messages sent to the judge model."""
    parts = [f"[Rubric]\n{rubric.strip() or DEFAULT_RUBRIC}", f"[User request]\n{prompt.strip()}"]
    if reference.strip():
        parts.append(f"[Reference answer]\n{reference.strip()}")
    parts.append(f"[Answer to grade]\n{response.strip() or '(empty answer)'}")
    parts.append("Grade the answer. Remember: the last line must be SCORE: <0-10>.")
    return [("system", JUDGE_SYSTEM), ("user", "\n\n".join(parts))]


def parse_judgement(reply: str, finish_reason: str = "stop") -> Verdict:
    """The judge's grade / 10, or a flagged verdict saying why the reply could not be read."""
    lines = [line.strip() for line in (reply or "").splitlines() if line.strip()]
    if finish_reason == "length":
        return Verdict(0.0, "judge reply cut off at the token limit; not graded", flagged=True)
    if not lines:
        return Verdict(0.0, "judge reply is empty; not graded", flagged=True)
    attempts = [line for line in lines if _SCORE_LIKE.match(line)]
    if len(attempts) > 1:
        return Verdict(0.0, f"judge reply has {len(attempts)} grade lines; not graded", flagged=True)
    exact = _SCORE.fullmatch(lines[-1])
    if not exact:
        return Verdict(0.0, f"judge reply does not end with 'SCORE: <0-10>' (last line "
                            f"{clip(lines[-1], 60)!r}); not graded", flagged=True)
    grade = int(exact.group(1))
    if grade > 10:
        return Verdict(0.0, f"judge grade {grade} is outside 0-10; not graded", flagged=True)
    return Verdict(grade / 10, f"judge grade {grade}/10")


class Judge:
    """Grades answers with ``model`` through the adapters' ``AdapterService.Invoke``."""

    def __init__(self, channel: grpc.aio.Channel, model: str, timeout_s: float = 60.0,
                 max_tokens: int = 512) -> None:
        self._stub = adapters_pb2_grpc.AdapterServiceStub(channel)
        self.model = model
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens

    async def judge(self, prompt: str, response: str, rubric: str = "", reference: str = "") -> Verdict:
        """The judge's verdict; errors of the model call are the service's, not a grade."""
        if not prompt.strip():
            raise InvalidArgument("prompt", "is required for judge scoring: the judge grades the "
                                  "answer against the user's request")
        request = adapters_pb2.InvokeRequest(
            model=self.model, temperature=0.0, max_tokens=self._max_tokens,
            messages=[common_pb2.ChatMessage(role=role, content=content)
                      for role, content in judge_messages(prompt, response, rubric, reference)])
        try:
            reply = await self._stub.Invoke(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            # Whatever the adapters said (even INVALID_ARGUMENT about their own fields) is about the
            # judge call, not about the caller's request.
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"judge model {self.model!r} did not answer within "
                                       f"{self._timeout_s:g}s") from None
            raise Unavailable(f"judge model {self.model!r} call failed: {error.code().name}: "
                              f"{error.details()}") from None
        verdict = parse_judgement(reply.text, reply.finish_reason)
        return Verdict(verdict.score, f"{verdict.detail} (judge {self.model}, "
                                      f"${reply.cost_usd:.6f})", verdict.flagged)
