"""The serving policy, swapped atomically: a baseline spec or a checkpoint directory is verified
(hashes, catalog compatibility, a smoke episode) before it replaces the current one, and the
previous policy is kept for rollback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.router.baselines import make_baseline
from xrouter.router.policy import ModelOption, Policy
from xrouter.router.checkpoint_manifest import MANIFEST
from xrouter.router.lm.charge import RouterLMPrice

log = logging.getLogger(__name__)
ROLLBACK = "rollback"
# The compact policy the embedded default serves (`xrouter up`, `make run`): trained on the four
# bundled outcome sets by training/configs/mixed.yaml, shipped small (its manifest says how it was made).
BUNDLED_POLICY = pathlib.Path(__file__).resolve().parent.parent / "data" / "policy"


@dataclasses.dataclass(frozen=True)
class LMGeneration:
    """Where an LM checkpoint's tokens come from: ``url`` empty → transformers in this process;
    otherwise the OpenAI-compatible completions server there (vLLM serving the checkpoint).
    ``served_model`` is the name the server knows it by; empty → the checkpoint directory itself,
    which is vLLM's name for ``--model DIR``, so a router can only ever use the weights it verified
    (a server serving another checkpoint answers 404 and the smoke episode refuses the swap).
    ``{version}`` in it becomes the manifest's version (for ``--served-model-name VERSION``).
    ``price``: what those tokens cost, billed per decision turn (router/lm/charge.py)."""

    url: str = ""
    served_model: str = ""
    price: RouterLMPrice = RouterLMPrice()


async def build_policy(source: str, catalog: list[ModelOption], lm_generation: LMGeneration = LMGeneration()) -> Policy:
    """A verified policy for ``source`` (raises InvalidArgument naming the problem)."""
    if not source:
        raise InvalidArgument("source", "name a baseline (cheapest, cascade, fixed:<model>) or a checkpoint directory")
    if not pathlib.Path(source).is_dir():
        return make_baseline(source, {o.id for o in catalog})
    policy = await asyncio.to_thread(load_checkpoint, pathlib.Path(source), catalog, lm_generation)
    if policy.kind == "lm":
        from xrouter.router.lm.checkpoint import smoke_episode as lm_smoke

        try:
            await lm_smoke(policy, catalog)  # type: ignore[arg-type]
        except BaseException:
            await policy.backend.aclose()  # type: ignore[attr-defined]  # a refused policy keeps no session or thread
            raise
    else:
        from xrouter.router.compact.checkpoint import smoke_episode

        await smoke_episode(policy, catalog)  # type: ignore[arg-type]
    return policy


def load_checkpoint(directory: pathlib.Path, catalog: list[ModelOption],
                    lm_generation: LMGeneration = LMGeneration()) -> Policy:
    """The policy of a checkpoint directory of either kind, verified (hashes, catalog) but not yet
    smoke-tested; InvalidArgument naming the problem. Blocking: it reads and hashes the weights."""
    if checkpoint_kind(directory) == "lm":
        from xrouter.router.lm import checkpoint as lm  # transformers only when needed

        served = lm_generation.served_model
        if lm_generation.url and "{version}" in served:
            served = served.replace("{version}", str(lm.read_manifest(directory)["version"]))
        return lm.load_policy(directory, catalog, lm_generation.url, served, lm_generation.price)
    from xrouter.router.compact.checkpoint import load_policy  # torch only when needed

    return load_policy(directory, catalog)


def read_checkpoint_manifest(directory: pathlib.Path) -> dict[str, Any]:
    """The verified manifest of a checkpoint of either kind (every file's sha256 checked); raises
    InvalidArgument naming the problem."""
    if checkpoint_kind(directory) == "lm":
        from xrouter.router.lm.checkpoint import read_manifest as read_lm

        return read_lm(directory)
    from xrouter.router.compact.checkpoint import read_manifest

    return read_manifest(directory)


def checkpoint_kind(directory: pathlib.Path) -> str:
    """The manifest's ``kind``; "" when there is no readable manifest (the compact loader, which
    handles every other case, then names the problem)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    return str(manifest.get("kind", "")) if isinstance(manifest, dict) else ""


class PolicyStore:
    """Holds what serves; ``core.policy`` is read per request, so one assignment swaps it."""

    def __init__(self, core, source: str, lm_generation: LMGeneration = LMGeneration()) -> None:  # type: ignore[no-untyped-def]
        self._core = core
        self.source = source
        self.lm_generation = lm_generation
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
                if policy.kind == "lm":
                    from xrouter.router.lm.checkpoint import check_generation_server

                    await asyncio.to_thread(check_generation_server, policy, pathlib.Path(source))  # type: ignore[arg-type]
            else:
                policy = await build_policy(source, list(self._core.catalog.values()), self.lm_generation)
            if source != self.source:  # reloading what serves (a publish seen twice) keeps the rollback target
                self._previous = (self._core.policy, self.source)
            self._core.policy, self.source = policy, source
            log.info("serving policy now %s@%s from %s", policy.kind, policy.version, source)
            return policy
