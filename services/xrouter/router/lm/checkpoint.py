"""Checkpoints of the LM policy: a directory with the model's ``save_pretrained`` output (safetensors
weights, config) and its tokenizer (chat template included), plus a manifest (kind "lm", version,
catalog snapshot hash, data, λ range, generation settings, eval metrics, the sha256 of every file).
Loading verifies all of it — no file unlisted, none changed — before a policy is handed out."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

from xrouter.common.errors import InvalidArgument
from xrouter.router.checkpoint_manifest import MANIFEST, catalog_hash, read_verified, sha256, write_manifest
from xrouter.router.lm.charge import RouterLMPrice
from xrouter.router.lm.compatibility import TEMPLATE_FIX, check_served_weights, check_tool_support
from xrouter.router.lm.policy import DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_RESPONSE_CHARS, LMPolicy
from xrouter.router.lm.tools import TOOL_PROMPTS
from xrouter.router.policy import CallModels, EpisodeState, ModelOption

log = logging.getLogger(__name__)
KIND = "lm"


def save(directory: pathlib.Path, model: Any, tokenizer: Any, manifest: dict[str, Any]) -> pathlib.Path:
    """Write a checkpoint (the manifest last, so a half-written directory never verifies)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    write_manifest(directory, {**manifest, "kind": KIND,
                               "sha256": {str(p.relative_to(directory)): sha256(p) for p in files}})
    return directory


def read_manifest(directory: pathlib.Path) -> dict[str, Any]:
    """The verified manifest; InvalidArgument naming the file when anything does not match."""
    path = directory / MANIFEST
    manifest = read_verified(directory, KIND, "an LM policy", ())
    listed: dict[str, str] = manifest["sha256"]
    if not any(name.endswith(".safetensors") for name in listed):
        raise InvalidArgument("source", f"{path}: the manifest lists no .safetensors weights")
    for extra in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        if str(extra.relative_to(directory)) not in listed:
            # from_pretrained could pick up an unlisted file (another weights format, a config).
            raise InvalidArgument("source", f"{extra}: not listed in the manifest (remove it or re-publish)")
    return manifest


def load_policy(directory: pathlib.Path | str, catalog: list[ModelOption], generation_url: str = "",
                served_model: str = "", price: RouterLMPrice = RouterLMPrice()) -> LMPolicy:
    """Verify and load an LM checkpoint. Tokens come from transformers in this process, or from the
    OpenAI-compatible server at ``generation_url`` (vLLM serving this same directory as ``served_model``);
    each decision turn's tokens are billed at ``price``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("catalog_hash") and manifest["catalog_hash"] != catalog_hash(catalog):
        # Not refused: the LM reads each model's description and prices from its tool list, so it
        # routes over pools it was not trained on — but say so, the numbers were learned elsewhere.
        log.warning("LM policy %s was trained on another catalog (hash %s, serving %s)", manifest["version"],
                    manifest["catalog_hash"], catalog_hash(catalog))
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise InvalidArgument("source", f"{directory}: the tokenizer does not load ({error})") from None
    if not tokenizer.chat_template:
        raise InvalidArgument("source", f"{directory}: the tokenizer has no chat template; {TEMPLATE_FIX}")
    check_tool_support(tokenizer, directory)
    generation = manifest.get("generation", {})
    tool_prompt = generation.get("tool_prompt", "full")  # checkpoints from before the compact prompt
    if tool_prompt not in TOOL_PROMPTS:
        raise InvalidArgument("source", f"{directory}: manifest generation.tool_prompt={tool_prompt!r} is not one of "
                                        f"{', '.join(TOOL_PROMPTS)} (re-publish with a supported one)")
    message_tokens = generation.get("message_tokens", 0)
    if not isinstance(message_tokens, int) or isinstance(message_tokens, bool) or message_tokens < 0:
        raise InvalidArgument("source", f"{directory}: manifest generation.message_tokens={message_tokens!r} "
                                        "must be an integer >= 0 (0: whole messages)")
    if generation_url:
        from xrouter.router.lm.http_generation import CompletionsBackend

        check_served_weights(generation_url, served_model or str(directory), directory, manifest)
        backend: Any = CompletionsBackend(generation_url, served_model or str(directory), tokenizer)
    else:
        from xrouter.router.lm.generation import TransformersBackend

        try:
            model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise InvalidArgument("source", f"{directory}: the model does not load ({error})") from None
        backend = TransformersBackend(model.eval(), tokenizer)
    policy = LMPolicy(tokenizer, backend, version=str(manifest["version"]), temperature=0.0,
                      max_new_tokens=int(generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
                      max_response_chars=int(generation.get("max_response_chars", DEFAULT_MAX_RESPONSE_CHARS)),
                      price=price, tool_prompt=tool_prompt, message_tokens=message_tokens)
    policy.manifest = manifest  # type: ignore[attr-defined]
    return policy


def check_generation_server(policy: LMPolicy, directory: pathlib.Path) -> None:
    """For a policy loaded earlier whose tokens come from a server: that server must still serve its
    checkpoint. A rollback swaps back the policy object it kept, without loading anything, while the
    server may have been restarted on the newer weights since (under a fixed --served-model-name it
    would answer with them, and the router would route with the new weights while reporting the old
    version). InvalidArgument naming the fix otherwise; a no-op for in-process generation."""
    from xrouter.router.lm.http_generation import CompletionsBackend

    if isinstance(policy.backend, CompletionsBackend):
        check_served_weights(policy.backend.base_url, policy.backend.model, directory,
                             policy.manifest)  # type: ignore[attr-defined]


async def smoke_episode(policy: LMPolicy, catalog: list[ModelOption]) -> None:
    """A first decision on a synthetic request must generate and yield an action on the pool (an
    untrained LM may answer directly; a broken template, tokenizer or model fails here)."""
    state = EpisodeState([("user", "Which is heavier? A) a feather B) a brick")], list(catalog), 1.0, None, 3, 0)
    try:
        action = await policy.decide(state)
    except Exception as error:  # noqa: BLE001 - whatever breaks, the checkpoint is refused with the reason
        raise InvalidArgument("source", f"smoke episode failed: {type(error).__name__}: {error}") from None
    if isinstance(action, CallModels) and not all(state.option(c.model) for c in action.calls):
        raise InvalidArgument("source", f"smoke episode failed: first action {action!r} calls outside the pool")
    transcript = policy.transcript_of(state)
    if transcript is None or not any(transcript.generated):
        raise InvalidArgument("source", "smoke episode failed: the model generated nothing")
