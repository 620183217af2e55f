"""What the reward service would refuse in a request's reference, refused before any call is paid for
(split from core.py, which validates the rest of the request)."""

from __future__ import annotations

from xrouter.common import bounds
from xrouter.common.errors import InvalidArgument
from xrouter.reward.core import TASK_TYPES
from xrouter.router.ports import ScoringReference

MAX_NAME_CHARS = 256  # policy specs, reference dataset and prompt ids
MAX_REFERENCE_CHARS = 100_000  # gold, rubric, each alias, the code tests
MAX_ALIASES = 100
_NEEDS_GOLD = ("multiple_choice", "exact_match", "token_f1", "math")


def check_reference(reference: ScoringReference) -> None:
    """What the reward service would refuse after the calls were paid for, refused first."""
    if reference.task_type not in TASK_TYPES:
        raise InvalidArgument("reference.task_type", f"unknown task type {bounds.shown(reference.task_type)}; use "
                              f"one of {', '.join(TASK_TYPES)}")
    for name in ("dataset", "prompt_id"):  # stored in the ledger's settled row
        if len(getattr(reference, name)) > MAX_NAME_CHARS:
            raise InvalidArgument(f"reference.{name}", f"is {len(getattr(reference, name))} characters; at most "
                                  f"{MAX_NAME_CHARS}")
        if not getattr(reference, name).isprintable():  # PostgreSQL text cannot hold NUL, logs no controls
            raise InvalidArgument(f"reference.{name}", "must be printable characters")
    texts = [("gold", reference.gold), ("rubric", reference.rubric), ("options", reference.options)]
    texts += [(f"aliases[{n}]", alias) for n, alias in enumerate(reference.aliases)]
    if reference.code is not None:
        code = reference.code
        texts += [("code", "\n".join((*code.asserts, code.setup, code.check, code.entry_point, code.prefix)))]
    for name, text in texts:
        if len(text) > MAX_REFERENCE_CHARS:
            raise InvalidArgument(f"reference.{name}", f"is {len(text)} characters; at most {MAX_REFERENCE_CHARS}")
    if len(reference.aliases) > MAX_ALIASES:
        raise InvalidArgument("reference.aliases", f"{len(reference.aliases)} aliases; at most {MAX_ALIASES}")
    if reference.task_type in _NEEDS_GOLD and not reference.gold.strip():
        raise InvalidArgument("reference.gold", f"is required for {reference.task_type}")
    if reference.task_type == "recorded_label":
        for name in ("dataset", "prompt_id"):
            if not getattr(reference, name):
                raise InvalidArgument(f"reference.{name}", "is required for recorded_label")
    if reference.task_type == "code":
        if reference.code is None:
            raise InvalidArgument("reference.code", "is required for code: set asserts or check and entry_point")
        reference.code.validate()
