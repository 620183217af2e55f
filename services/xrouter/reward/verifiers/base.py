"""What every verifier returns, and the one helper that runs a verifier over a batch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A verifier's judgement: ``score`` in [0, 1] and why (``detail``).

    ``flagged`` means no verdict could be reached (a judge reply that does not parse): the score is
    0 only as a placeholder, and a trainer must drop the item rather than learn from it.
    """

    score: float
    detail: str
    flagged: bool = False


def verify_batch(verifier: Callable[..., Verdict], responses: Sequence[str],
                 *columns: Iterable[Any], parallel: int = 1) -> list[Verdict]:
    """``verifier(response, *row)`` for every response and the matching items of ``columns``, in
    order; ``parallel`` > 1 runs that many at once in threads (for the sandbox, which waits)."""
    rows = list(zip(responses, *columns, strict=True))
    if parallel <= 1:
        return [verifier(*row) for row in rows]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda row: verifier(*row), rows))


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis, for details."""
    return text if len(text) <= limit else text[:limit] + "..."
