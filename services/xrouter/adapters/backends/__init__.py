"""Model backends. Each turns one call into text, token counts and (when it knows it) the cost."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BackendReply:
    """What a backend returns for one call; ``cost_micro_usd`` None means: price it from the catalog."""

    text: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    finish_reason: str
    cost_micro_usd: int | None = None
    tool_calls: str = ""  # JSON array of OpenAI tool calls; "" when the model made none
    model: str = ""  # the model the backend says answered (its reply's own name); "" when it says none
