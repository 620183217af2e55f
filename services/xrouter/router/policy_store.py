"""The serving policy, swapped atomically: a baseline spec or a checkpoint directory is verified
(hashes, catalog compatibility, a smoke episode) before it replaces the current one, and the
previous policy is kept for rollback."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib

from xrouter.common.errors import InvalidArgument
from xrouter.router.baselines import make_baseline
from xrouter.router.policy import ModelOption, Policy

log = logging.getLogger(__name__)
ROLLBACK = "rollback"


async def build_policy(source: str, catalog: list[ModelOption]) -> Policy:
    """A verified policy for ``source`` (raises InvalidArgument naming the problem)."""
    if not source:
        raise InvalidArgument("source", "name a baseline (cheapest, cascade, fixed:<model>) or a checkpoint directory")
    if not pathlib.Path(source).is_dir():
        return make_baseline(source, {o.id for o in catalog})
    if checkpoint_kind(pathlib.Path(source)) == "lm":
        from xrouter.router.lm import checkpoint as lm  # transformers only when needed

        lm_policy = await asyncio.to_thread(lm.load_policy, source, catalog)
        await lm.smoke_episode(lm_policy, catalog)
        return lm_policy
    from xrouter.router.compact.checkpoint import load_policy, smoke_episode  # torch only when needed

    policy = await asyncio.to_thread(load_policy, source, catalog)
    await smoke_episode(policy, catalog)
    return policy


def checkpoint_kind(directory: pathlib.Path) -> str:
    """The manifest's ``kind``; "" when there is no readable manifest (the compact loader, which
    handles every other case, then names the problem)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return str(manifest.get("kind", "")) if isinstance(manifest, dict) else ""


class PolicyStore:
    """Holds what serves; ``core.policy`` is read per request, so one assignment swaps it."""

    def __init__(self, core, source: str) -> None:  # type: ignore[no-untyped-def]
        self._core = core
        self.source = source
        self._previous: tuple[Policy, str] | None = None
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> Policy:
        """The policy serving now."""
        return self._core.policy

    async def load(self, source: str) -> Policy:
        async with self._lock:
            if source == ROLLBACK:
                if self._previous is None:
                    raise InvalidArgument("source", "no previous policy to roll back to")
                policy, source = self._previous
            else:
                policy = await build_policy(source, list(self._core.catalog.values()))
            if source != self.source:  # reloading what serves (a publish seen twice) keeps the rollback target
                self._previous = (self._core.policy, self.source)
            self._core.policy, self.source = policy, source
            log.info("serving policy now %s@%s from %s", policy.kind, policy.version, source)
            return policy
