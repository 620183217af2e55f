"""Episodes on recorded outcomes: the adapters' replay core answers the calls (real recorded answers
and costs) and the reward service's recorded-label verifier scores the answer. The episode itself is
the router's own loop (``run_episode``), so training and evaluation see exactly what serving does."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Sequence

from xrouter.adapters.backends.replay import ReplayBackend
from xrouter.adapters.catalog import ModelSpec, load_catalog
from xrouter.adapters.core import AdapterCore, backend_key
from xrouter.adapters.settings import DEFAULT_CATALOG
from xrouter.common.errors import NotFound, XRouterError
from xrouter.common.outcomes import ROUTERBENCH, read_outcomes, source, split_of
from xrouter.reward.formula import RewardConfig, cost_aware_reward
from xrouter.reward.verifiers import RecordedLabels
from xrouter.router.episode import EpisodeResult, run_episode
from xrouter.router.lm.charge import charge_router
from xrouter.router.policy import CallOutcome, CallStatus, EpisodeState, ModelOption, Policy, ToolCall


@dataclasses.dataclass(frozen=True)
class Prompt:
    prompt_id: str
    task: str
    text: str
    source: str = ""  # the outcome set it comes from (MixedEnvironment); "" for a single set


@dataclasses.dataclass(frozen=True)
class Episode:
    """One played episode and its outcome (``result`` is None when it ended without an answer)."""

    prompt: Prompt
    cost_lambda: float
    pool: tuple[str, ...]
    result: EpisodeResult | None
    calls: list[CallOutcome]
    score: float
    cost_usd: float
    reward: float


def option_of(spec: ModelSpec) -> ModelOption:
    return ModelOption(spec.id, float(spec.input_usd_per_mtok), float(spec.output_usd_per_mtok),
                       spec.description, spec.tags, spec.context_tokens)


class ReplayEnvironment:
    """An outcome set as an environment: prompts by split, the catalog as the pool, replayed calls."""

    def __init__(self, data: pathlib.Path | str = ROUTERBENCH, catalog: pathlib.Path | str = DEFAULT_CATALOG,
                 reward: RewardConfig = RewardConfig()) -> None:
        specs = load_catalog(catalog)
        dataset = {spec.dataset for spec in specs.values()}
        backend = ReplayBackend(",".join(sorted(dataset)), data)
        self.adapters = AdapterCore(specs, {backend_key(spec): backend for spec in specs.values()})
        self.options = {spec.id: option_of(spec) for spec in specs.values()}
        self.labels = RecordedLabels.from_file(data)
        self.reward_config = reward
        self.prompts: dict[str, Prompt] = {}
        self.answered: dict[str, set[str]] = {}  # prompt id → models with a recorded answer
        self.scores: dict[str, dict[str, float]] = {}  # prompt id → model → recorded score
        self.costs: dict[str, dict[str, float]] = {}  # prompt id → model → recorded cost (USD)
        # Rows of models the catalog does not list: not played, and said so (train prints and records them).
        self.uncatalogued: dict[str, int] = {}
        for row in read_outcomes(data):
            self.prompts.setdefault(row.prompt_id, Prompt(row.prompt_id, row.task, row.prompt))
            if row.model not in self.options:
                self.uncatalogued[row.model] = self.uncatalogued.get(row.model, 0) + 1
            # A row with a score but no text is routable: the replay answers it with a marked placeholder.
            if row.model in self.options:
                self.answered.setdefault(row.prompt_id, set()).add(row.model)
                self.scores.setdefault(row.prompt_id, {})[row.model] = float(row.score)
                self.costs.setdefault(row.prompt_id, {})[row.model] = float(row.cost_usd or 0.0)

    def split(self, name: str, fold: int = 0) -> list[Prompt]:
        """Prompts of one split ('train', 'validation' or 'all'; ``fold``: which validation fifth,
        ``split_of``), in a stable order."""
        return [p for key, p in sorted(self.prompts.items()) if name == "all" or split_of(key, fold) == name]

    async def invoke(self, call: ToolCall, messages: list[tuple[str, str]], index: int, turn: int) -> CallOutcome:
        outcome = CallOutcome(index, turn, call.model, call.system_prompt, call.temperature, CallStatus.OK,
                              attempted=True)
        try:
            reply = await self.adapters.invoke(call.model, messages, call.temperature)
        except XRouterError as error:
            outcome.status, outcome.error = CallStatus.ERROR, error.message
            return outcome
        outcome.text, outcome.cost_micro_usd = reply.text, reply.cost_micro_usd
        outcome.input_tokens, outcome.output_tokens = reply.input_tokens, reply.output_tokens
        outcome.tokens_estimated, outcome.finish_reason = reply.tokens_estimated, reply.finish_reason
        return outcome

    async def play(self, policy: Policy, prompt: Prompt, pool: Sequence[str], cost_lambda: float,
                   max_turns: int = 3) -> Episode:
        """Run one episode; unfinished episodes and unscorable answers score 0 (as the paper)."""
        state = EpisodeState([("user", prompt.text)], [self.options[m] for m in pool], cost_lambda, None,
                             max_turns, 0)
        result: EpisodeResult | None = None
        score = 0.0
        try:
            result = await run_episode(policy, state, self.invoke)
            score = self.labels.verdict(prompt.prompt_id, result.answer).score
        except (NotFound, XRouterError):
            pass
        # A generative router's own tokens are priced calls here as on the bill (router/core.py), so
        # its evaluation is not cheaper than serving it; other policies have none.
        charge_router(policy, state)
        cost = sum(c.cost_micro_usd for c in state.calls) / 1e6
        reward = cost_aware_reward(score, cost, cost_lambda, self.reward_config)
        return Episode(prompt, cost_lambda, tuple(pool), result, state.calls, score, cost, reward)


class MixedEnvironment:
    """Several bundled outcome sets as one environment. Sources share no prompts, so a prompt's pool
    is always drawn from its own source's models; prompt ids are ``<source>/<id>``. The interface is
    ReplayEnvironment's, so the trainer and the warm start run on either."""

    def __init__(self, sources: Iterable[str], reward: RewardConfig = RewardConfig(),
                 exclude_models: Iterable[str] = (), exclude_tasks: Iterable[str] = ()) -> None:
        """``exclude_tasks``: "<source>/<task>" families whose prompts are left out of every split."""
        excluded, left_out_tasks = set(exclude_models), set(exclude_tasks)
        self.envs: dict[str, ReplayEnvironment] = {}
        self.options: dict[str, ModelOption] = {}
        self.prompts: dict[str, Prompt] = {}
        self.answered: dict[str, set[str]] = {}
        self.scores: dict[str, dict[str, float]] = {}
        self.costs: dict[str, dict[str, float]] = {}
        self.reward_config = reward
        self._source_of_text: dict[str, str] = {}
        self.tasks: dict[str, set[str]] = {}  # source → its task families, the excluded ones included
        for name in sources:
            bundled = source(name)
            env = self.envs[name] = ReplayEnvironment(bundled.data, bundled.catalog, reward)
            for model, option in env.options.items():
                if model not in excluded:
                    self.options.setdefault(model, option)
            # A model in two sources' catalogs is one model: every episode describes it the same way.
            env.options = {model: self.options.get(model, option) for model, option in env.options.items()}
            self.tasks[name] = {prompt.task for prompt in env.prompts.values()}
            for raw, prompt in env.prompts.items():
                key = f"{name}/{raw}"
                models = env.answered.get(raw, set()) - excluded
                if not models or f"{name}/{prompt.task}" in left_out_tasks:
                    continue
                self.prompts[key] = dataclasses.replace(prompt, prompt_id=key, source=name)
                self.answered[key] = models
                self.scores[key], self.costs[key] = env.scores[raw], env.costs[raw]
                self._source_of_text.setdefault(prompt.text, name)

    def split(self, name: str, fold: int = 0) -> list[Prompt]:
        """Prompts of one split of every source (each source split by its own prompt ids)."""
        return [p for key, p in sorted(self.prompts.items())
                if name == "all" or split_of(key.split("/", 1)[1], fold) == name]

    def _inner(self, prompt: Prompt) -> Prompt:
        return dataclasses.replace(prompt, prompt_id=prompt.prompt_id.split("/", 1)[1])

    async def invoke(self, call: ToolCall, messages: list[tuple[str, str]], index: int, turn: int) -> CallOutcome:
        text = next((content for role, content in reversed(messages) if role == "user"), "")
        return await self.envs[self._source_of_text[text]].invoke(call, messages, index, turn)

    async def play(self, policy: Policy, prompt: Prompt, pool: Sequence[str], cost_lambda: float,
                   max_turns: int = 3) -> Episode:
        episode = await self.envs[prompt.source].play(policy, self._inner(prompt), pool, cost_lambda, max_turns)
        return dataclasses.replace(episode, prompt=prompt)
