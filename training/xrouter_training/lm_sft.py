"""Supervised warm start (SFT) of the LM policy from a teacher policy's episodes, before GRPO.

Why: GRPO learns only from groups whose rewards differ, and an untrained SmolLM2-135M never writes a
tool call on our prompt (0/20 greedy first turns), so every group earns 0 and nothing is learned.
A teacher that already routes (a baseline, a compact checkpoint, the kNN router) shows the LM what
a good tool call looks like, for the pools and λ it will be trained on.

How: the teacher plays episodes on train prompts through the router's own episode loop
(``ReplayEnvironment.play``) with GRPO's pool and λ sampling. Each teacher decision is written as
the reply the LM would have to emit (``<tool_call>{"name": "call_<model>", "arguments": {...}}
</tool_call>``, ``select_response``) and handed to an ``LMPolicy`` as if generated (a scripted
backend), so the transcript — chat template, tool list, tool-result messages, continuation tokens —
is exactly the one GRPO trains on and serving builds, and the serving parser must read the reply
back as the teacher's decision. The loss is the token-mean NLL of the LM's own tokens only: the
prompt, the template and the tool outputs are masked, as in GRPO (lm_grpo.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import random
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xrouter.common.errors import InvalidArgument
from xrouter.common.outcomes import ROUTERBENCH
from xrouter.router.lm.generation import Generation, GenerationBackend
from xrouter.router.lm.parsing import CLOSE, OPEN, parse_reply
from xrouter.router.lm.policy import LMPolicy
from xrouter.router.lm.tools import SELECT, tool_names
from xrouter.router.lm.transcript import SENTINEL, ChatRenderer, Transcript
from xrouter.router.policy import Action, Answer, CallModels, EpisodeState, Policy, SelectResponse
from xrouter.router.policy_store import build_policy
from xrouter_training import lm_grpo
from xrouter_training.config import ConfigError, TrainConfig
from xrouter_training.environment import Prompt, ReplayEnvironment
from xrouter_training.lm_train import Rollout, judge
from xrouter_training.train import sample_lambda, sample_pool


def render_reply(action: Action, tool_of: dict[str, str]) -> str:
    """The Hermes reply that the LM policy's parser reads as ``action``; ``tool_of`` maps model ids
    to this episode's ``call_<name>`` tools. Temperature is written only when it is not the default 0."""
    if isinstance(action, Answer):
        return action.text
    if isinstance(action, SelectResponse):
        calls = [{"name": SELECT, "arguments": {"call_index": action.call_index}}]
    else:
        calls = [{"name": tool_of[c.model], "arguments": {"system_prompt": c.system_prompt,
                                                          **({"temperature": c.temperature} if c.temperature else {})}}
                 for c in action.calls]
    return "\n".join(f"{OPEN}\n{json.dumps(c, ensure_ascii=False)}\n{CLOSE}" for c in calls)


def decision(action: Action, ordered: bool = True) -> tuple[Any, ...]:
    """What an action decides: the models called (in order, or as a set), the call selected, or the answer."""
    if isinstance(action, CallModels):
        models = [c.model for c in action.calls]
        return ("call", tuple(models if ordered else sorted(models)))
    if isinstance(action, SelectResponse):
        return ("select", action.call_index)
    return ("answer", action.text.strip())


def end_of_reply_id(renderer: ChatRenderer) -> int:
    """The token that ends an assistant reply in this chat template (SmolLM2: ``<|im_end|>``), which
    the LM must learn to emit; EOS when the template ends replies with something else."""
    tokenizer = renderer.tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": SENTINEL}],
                                         tokenize=False)
    after = tokenizer(text.split(SENTINEL, 1)[1], add_special_tokens=False)["input_ids"]
    if after and after[0] in renderer.stop_ids:
        return int(after[0])
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither an end-of-turn token after replies nor an EOS token")
    return int(tokenizer.eos_token_id)


class ScriptedBackend:
    """A generation backend that "generates" the ids it was given (the teacher's reply), cut at
    ``max_new_tokens`` as real generation would be. With ``probe`` set, the real backend first
    decodes greedily from the same context, and that reply is kept in ``probed``."""

    def __init__(self, probe: GenerationBackend | None = None) -> None:
        self.next_ids: list[int] | None = None
        self.probe = probe
        self.probed: Generation | None = None

    async def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float) -> Generation:
        if self.next_ids is None:
            raise RuntimeError("ScriptedBackend: no reply was scripted for this turn")
        ids, self.next_ids = self.next_ids, None
        self.probed = await self.probe.generate(prompt_ids, max_new_tokens, 0.0) if self.probe else None
        if len(ids) > max_new_tokens:
            return Generation(tuple(ids[:max_new_tokens]), None, "length")
        return Generation(tuple(ids), None, "stop")

    async def aclose(self) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Probe:
    """The LM's own greedy reply at one teacher decision: a well-formed tool call (parsed, not
    truncated) or not, and whether it decides what the teacher decided (the same models, as a set,
    or the same selected call); ``teacher_calls``: the teacher called models here (a routing choice)."""

    tool_call: bool
    matches_teacher: bool
    teacher_calls: bool


class TeacherForcedPolicy:
    """Plays the teacher, but every decision goes through the LM policy as the scripted reply, so
    the episode is the one the LM would have had, had it generated those tokens."""

    kind = "teacher-forced"

    def __init__(self, teacher: Policy, lm: LMPolicy, backend: ScriptedBackend) -> None:
        self.teacher, self.lm, self.backend = teacher, lm, backend
        self.version, self.min_turns = teacher.version, teacher.min_turns
        self.end_id = end_of_reply_id(lm.renderer)
        self.probes: list[Probe] = []

    async def decide(self, state: EpisodeState) -> Action:
        wanted = await self.teacher.decide(state)
        tool_of = {model: name for name, model in tool_names([o.id for o in state.pool]).items()}
        text = render_reply(wanted, tool_of)
        self.backend.next_ids = list(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.end_id]
        action = await self.lm.decide(state)
        transcript = self.lm.transcript_of(state)
        assert transcript is not None
        reply = transcript.replies[-1]
        # A reply the parser refuses (a call on the last turn, where no call tool is offered) or
        # that is too long marks the episode failed; the collector drops it. Anything else must
        # round-trip, or the rendering above is wrong.
        if not reply.error and reply.finish_reason == "stop" and decision(action) != decision(wanted):
            raise RuntimeError(f"the teacher's {wanted!r} rendered as {text!r} parses as {action!r}")
        if self.backend.probed is not None:
            probed = self.backend.probed
            parsed = parse_reply(self.lm.tokenizer.decode(list(probed.token_ids), skip_special_tokens=True),
                                 transcript.toolset.models)
            tool_call = (probed.finish_reason == "stop" and parsed.action is not None
                         and not isinstance(parsed.action, Answer))
            same = tool_call and decision(parsed.action, False) == decision(wanted, False)  # type: ignore[arg-type]
            self.probes.append(Probe(tool_call, same, isinstance(wanted, CallModels)))
        return action


async def build_teacher(spec: str, env: ReplayEnvironment, config: TrainConfig, progress: bool = True) -> Policy:
    """The teacher policy a config names (see ``TrainConfig.sft_teacher``)."""
    from xrouter_training.eval_baselines import KnnPolicy, KnnRouter, OraclePolicy, OutcomeTable

    if spec in ("knn", "oracle"):
        data = ROUTERBENCH if config.data == "routerbench" else pathlib.Path(config.data)
        table = OutcomeTable.from_file(data, env.options)
        if spec == "oracle":
            return OraclePolicy(table)
        from xrouter_training.evaluate import default_embedder

        embed = default_embedder(progress)
        train = [p for p in env.split("train") if p.prompt_id in table.scores]
        router = KnnRouter(embed(train), table, sorted(env.options), None, config.eval_lambdas)
        return KnnPolicy(router, embed(env.split("all")), table)
    try:
        return await build_policy(spec, list(env.options.values()))
    except InvalidArgument as error:
        raise ConfigError(f"sft_teacher={spec!r}: {error.message}") from None


def reply_log_probs(model: Any, transcripts: Sequence[Transcript], pad_id: int) -> torch.Tensor:
    """log π(token | context) of every token the policy generated in ``transcripts``, flat [N]:
    the prompt, the template's tokens and the tool outputs are context only, as in GRPO."""
    batch = lm_grpo.pad_transcripts(transcripts, [0.0] * len(transcripts), pad_id).to(next(model.parameters()).device)
    log_probs, _ = lm_grpo.token_log_probs(model, batch)
    return log_probs[lm_grpo.kept_mask(batch)]


def mean_reply_nll(model: Any, transcripts: Sequence[Transcript], pad_id: int, batch_size: int = 4) -> float:
    """The token-mean NLL of the generated tokens (what the warm start minimises), without gradients."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(transcripts), batch_size):
            picked = reply_log_probs(model, transcripts[start:start + batch_size], pad_id)
            total, count = total - float(picked.sum()), count + picked.numel()
    return total / max(count, 1)


class SupervisedWarmStart:
    """Teacher episodes → LM transcripts → NLL steps, and the probe that measures what they taught."""

    def __init__(self, config: TrainConfig, env: ReplayEnvironment, model: Any, tokenizer: Any,
                 progress: bool = True) -> None:
        self.config, self.env, self.model, self.tokenizer, self.progress = config, env, model, tokenizer, progress
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _bar(self, iterable: Any = None, **kwargs: Any) -> Any:
        """A progress bar on stderr (redrawn at most every 5 s into a log file)."""
        return tqdm(iterable, disable=not self.progress, file=sys.stderr,
                    mininterval=0.2 if sys.stderr.isatty() else 5.0, **kwargs)

    def _forced(self, teacher: Policy, probe: GenerationBackend | None = None) -> TeacherForcedPolicy:
        backend = ScriptedBackend(probe)
        lm = LMPolicy(self.tokenizer, backend, temperature=0.0, max_new_tokens=self.config.max_new_tokens,
                      tool_prompt=self.config.lm_tool_prompt, message_tokens=self.config.lm_message_tokens)
        return TeacherForcedPolicy(teacher, lm, backend)

    async def _play(self, forced: TeacherForcedPolicy, prompt: Prompt, rng: random.Random) -> Rollout | None:
        """One teacher-forced episode; None when the teacher could not decide even its first turn
        (``fixed:<model>`` on a pool without that model), so there is nothing to imitate."""
        pool, cost_lambda = sample_pool(self.env, prompt, self.config, rng), sample_lambda(self.config, rng)
        forced.lm.recorder = []
        episode = await self.env.play(forced, prompt, pool, cost_lambda, self.config.max_turns)
        if not forced.lm.recorder:
            return None
        (transcript,) = forced.lm.recorder
        return judge(self.env, episode, transcript, self.config.router_price())

    async def collect(self, teacher: Policy, prompts: Sequence[Prompt], episodes: int,
                      rng: random.Random) -> list[Rollout]:
        """Up to ``episodes`` teacher episodes over ``prompts`` (shuffled, cycled), each with its own
        pool and λ; episodes whose first decision the teacher could not make are left out."""
        forced, order, rollouts = self._forced(teacher), list(prompts), []
        for i in self._bar(range(episodes), desc="teacher episodes", unit="episode"):
            if i % len(order) == 0:
                rng.shuffle(order)
            rollout = await self._play(forced, order[i % len(order)], rng)
            if rollout is not None:
                rollouts.append(rollout)
        return rollouts

    async def probe(self, teacher: Policy, prompts: Sequence[Prompt], seed: int) -> dict[str, float]:
        """The LM's greedy replies at each teacher decision of one episode per prompt (pools and λ
        from ``seed``, so probes before and after training see the same states)."""
        from xrouter.router.lm.generation import TransformersBackend

        real = TransformersBackend(self.model, self.tokenizer)
        forced, rng = self._forced(teacher, probe=real), random.Random(seed)
        try:
            for prompt in self._bar(prompts, desc="probe", unit="episode"):
                await self._play(forced, prompt, rng)
        finally:
            await real.aclose()
        probes = forced.probes
        calls = [p for p in probes if p.teacher_calls]
        return {"decisions": float(len(probes)),
                "tool_call_rate": sum(p.tool_call for p in probes) / max(len(probes), 1),
                "teacher_match_rate": sum(p.matches_teacher for p in probes) / max(len(probes), 1),
                "call_decisions": float(len(calls)),  # where the teacher chose models (vs selected an answer)
                "call_match_rate": sum(p.matches_teacher for p in calls) / max(len(calls), 1)}

    def keep(self, rollouts: Sequence[Rollout]) -> list[Rollout]:
        """The demonstrations worth imitating: ended properly, and reward above the threshold."""
        return [r for r in rollouts if not r.failure and r.reward > self.config.sft_reward_above]

    def fit(self, transcripts: Sequence[Transcript], rng: random.Random) -> list[dict[str, float]]:
        """``sft_epochs`` passes of token-mean NLL over the transcripts' generated tokens, one
        optimizer step per ``lm_micro_batch`` transcripts; one row per epoch."""
        config = self.config
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.sft_lr, weight_decay=0.0)
        size = config.lm_micro_batch
        order, rows = list(range(len(transcripts))), []
        was_training = self.model.training
        self.model.train()
        with self._bar(total=config.sft_epochs * math.ceil(len(order) / size), desc="SFT", unit="step") as bar:
            for epoch in range(1, config.sft_epochs + 1):
                rng.shuffle(order)
                nll_sum, tokens = 0.0, 0
                for start in range(0, len(order), size):
                    picked = reply_log_probs(self.model, [transcripts[i] for i in order[start:start + size]],
                                             self.pad_id)
                    loss = -picked.mean()
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    optimizer.step()
                    nll_sum, tokens = nll_sum - float(picked.detach().sum()), tokens + picked.numel()
                    bar.update()
                    bar.set_postfix(epoch=epoch, nll=f"{float(loss.detach()):.3f}")
                rows.append({"epoch": epoch, "nll": nll_sum / tokens, "tokens": float(tokens)})
        self.model.train(was_training)
        return rows

    async def run(self, train: Sequence[Prompt], probe_prompts: Sequence[Prompt], rng: random.Random,
                  out: pathlib.Path | None = None) -> dict[str, Any]:
        """Teacher, probe, collect, keep, fit, probe again; the summary (also ``out/sft.json``)."""
        config = self.config
        teacher = await build_teacher(config.sft_teacher, self.env, config, self.progress)
        before = await self.probe(teacher, probe_prompts, config.seed) if probe_prompts else None
        rollouts = await self.collect(teacher, train, config.sft_episodes, rng)
        if not rollouts:
            raise ConfigError(f"sft_teacher={config.sft_teacher!r} could not decide the first turn of any of "
                              f"{config.sft_episodes} episodes (is its model in the sampled pools?); choose another "
                              "teacher or raise sft_episodes")
        kept = self.keep(rollouts)
        failed = sum(bool(r.failure) for r in rollouts)
        print(f"SFT: teacher {config.sft_teacher} played {len(rollouts)} episodes: reward "
              f"{np.mean([r.reward for r in rollouts]):.3f}, accuracy {np.mean([r.episode.score for r in rollouts]):.3f}, "
              f"{failed} not ended properly; kept {len(kept)} with reward > {config.sft_reward_above:g}", flush=True)
        if not kept:
            raise ConfigError(f"sft_teacher={config.sft_teacher!r}: none of its {len(rollouts)} episodes ended properly "
                              f"with reward > {config.sft_reward_above:g}; lower sft_reward_above, raise sft_episodes "
                              "or max_new_tokens (replies cut at max_new_tokens fail), or choose another teacher")
        epochs = self.fit([r.transcript for r in kept], rng)
        after = await self.probe(teacher, probe_prompts, config.seed) if probe_prompts else None
        summary = {"teacher": config.sft_teacher, "episodes": len(rollouts), "kept": len(kept),
                   "not_ended_properly": failed, "teacher_reward": float(np.mean([r.reward for r in rollouts])),
                   "teacher_accuracy": float(np.mean([r.episode.score for r in rollouts])),
                   "reply_tokens_per_episode": float(np.mean([sum(r.transcript.generated) for r in kept])),
                   "epochs": epochs, "probe_prompts": len(probe_prompts), "probe_split": "validation",
                   "probe_before": before, "probe_after": after}
        for name, row in (("before", before), ("after", after)):
            if row is not None:
                print(f"SFT probe {name}: {row['tool_call_rate']:.2f} tool calls, {row['teacher_match_rate']:.2f} "
                      f"teacher's decision, over {row['decisions']:.0f} decisions; {row['call_match_rate']:.2f} "
                      f"the teacher's models where it called ({row['call_decisions']:.0f})", flush=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "sft.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
