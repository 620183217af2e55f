"""Request checks beyond the core's own bounds: the scoring reference (refused before any call is
paid for) and the generation options (which models may honour them, which policies may serve them)."""

from __future__ import annotations

from xrouter.common import bounds
from xrouter.common.call_options import CallOptions, check_options
from xrouter.common.errors import InvalidArgument
from xrouter.reward.core import TASK_TYPES
from xrouter.router.policy import ModelOption, Policy
from xrouter.router.ports import ScoringReference

MAX_NAME_CHARS = 256  # policy specs, reference dataset and prompt ids
MAX_REFERENCE_CHARS = 100_000  # gold, rubric, each alias, the code tests
MAX_ALIASES = 100
_NEEDS_GOLD = ("multiple_choice", "exact_match", "token_f1", "math")


def pool_for_options(pool: list[ModelOption], options: CallOptions, policy: Policy) -> list[ModelOption]:
    """The models of ``pool`` whose backends honour every option set: a request that sets a stop
    sequence is routed among the models that can stop at it, never answered by one that ignored
    it. None left is a 400 naming the option; so are tools or a response format under a policy
    that compares or rewrites answers (a tool call or a schema-shaped answer cannot be compared
    as text, and a rewrite would break the shape)."""
    check_options(options)
    structured = options.structured()
    if structured and not getattr(policy, "one_answer", False):
        raise InvalidArgument(structured[0], f"the {policy.kind} policy compares or rewrites answers, so it cannot "
                              "return a model's tool calls or schema-shaped answer unchanged; name a catalog model "
                              "as the model (or use policy fixed:<model> or cheapest)")
    pinned = getattr(policy, "model", None)  # fixed:<model>: only its own backend's options count
    if pinned is not None and options.used():
        pool = [option for option in pool if option.id == pinned] or pool
    for name in options.used():
        if not any(name in option.options for option in pool):
            raise InvalidArgument(name, f"none of the models this request may call honours it ("
                                  f"{', '.join(o.id for o in pool[:8])}{', ...' if len(pool) > 8 else ''}); models "
                                  "on an OpenAI-compatible backend honour every option")
    kept = [option for option in pool if set(options.used()) <= option.options]
    if not kept:
        used = options.used()
        raise InvalidArgument(used[0], f"no model this request may call honours all of {', '.join(used)} together")
    return kept


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
