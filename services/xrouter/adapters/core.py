"""The adapters' core: validate a call, run it on the model's backend within its deadline, and
account for it (tokens, exact cost, latency). Plain Python; the gRPC servicer only converts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from xrouter.adapters.backends import BackendReply
from xrouter.adapters.catalog import ModelSpec
from xrouter.common.errors import DeadlineExceeded, InvalidArgument, NotFound

ROLES = frozenset({"system", "user", "assistant"})


class Backend(Protocol):
    async def invoke(self, spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
                     max_tokens: int) -> BackendReply: ...


@dataclasses.dataclass(frozen=True)
class Invocation:
    """The accounted result of one model call."""

    model: str
    text: str
    input_tokens: int
    output_tokens: int
    tokens_estimated: bool
    cost_micro_usd: int
    latency_ms: float
    finish_reason: str


class AdapterCore:
    """Calls catalog models on their backends (``backends`` maps a model's backend/dataset key)."""

    def __init__(self, catalog: Mapping[str, ModelSpec], backends: Mapping[str, Backend]) -> None:
        self.catalog = dict(catalog)
        self._backends = dict(backends)
        for spec in self.catalog.values():
            if backend_key(spec) not in self._backends:
                raise ValueError(f"model {spec.id!r}: no backend {backend_key(spec)!r} configured")

    async def invoke(self, model: str, messages: Sequence[tuple[str, str]], temperature: float = 0.0,
                     max_tokens: int = 0, timeout: float | None = None) -> Invocation:
        spec = self.catalog.get(model)
        if spec is None:
            raise NotFound(f"model: {model!r} is not in the catalog")
        _validate(spec, messages, temperature, max_tokens)
        started = time.perf_counter()
        try:
            reply = await asyncio.wait_for(
                self._backends[backend_key(spec)].invoke(spec, messages, temperature, max_tokens), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"model {model!r} did not answer within {timeout:.3f}s") from None
        latency_ms = (time.perf_counter() - started) * 1000
        cost = reply.cost_micro_usd
        if cost is None:
            cost = spec.cost_micro_usd(reply.input_tokens, reply.output_tokens)
        return Invocation(model, reply.text, reply.input_tokens, reply.output_tokens,
                          reply.tokens_estimated, cost, latency_ms, reply.finish_reason)


def backend_key(spec: ModelSpec) -> str:
    return f"replay:{spec.dataset}" if spec.backend == "replay" else spec.backend


def _validate(spec: ModelSpec, messages: Sequence[tuple[str, str]], temperature: float,
              max_tokens: int) -> None:
    if not messages:
        raise InvalidArgument("messages", "at least one message is required")
    for number, (role, content) in enumerate(messages):
        if role not in ROLES:
            raise InvalidArgument(f"messages[{number}].role", f"{role!r} is not one of {sorted(ROLES)}")
        if not content:
            raise InvalidArgument(f"messages[{number}].content", "must not be empty")
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument("temperature", f"must be within [0, 2], got {temperature}")
    if max_tokens < 0 or max_tokens > spec.max_output_tokens:
        raise InvalidArgument(
            "max_tokens", f"must be within [0, {spec.max_output_tokens}] for {spec.id}, got {max_tokens}")
