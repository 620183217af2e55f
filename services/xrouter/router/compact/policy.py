"""The compact learned policy: encode the query once, then decide each turn with the network."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.compact.batch import DecisionBatch, pad_decisions
from xrouter.router.compact.distribution import Actions, Masks, choose, choose_greedy, log_prob
from xrouter.router.compact.features import StateArrays, Vocabulary, descriptor_text, encode_state
from xrouter.router.compact.memory import CALIBRATION, EVIDENCE, OutcomeMemory
from xrouter.router.compact.network import CompactRouter
from xrouter.router.compact.serving_graph import ServingGraph
from xrouter.router.policy import Action, CallModels, EpisodeState, ModelOption, SelectResponse, ToolCall


@dataclasses.dataclass
class Turn:
    """One decision as the trainer needs it: inputs, the action taken, its log-prob at sampling."""

    query: np.ndarray
    arrays: StateArrays  # descriptors are looked up by model id when batched (grpo.batch_turns)
    final: bool
    actions: Actions
    log_prob: float


class CompactPolicy:
    """Serving (greedy) or rollout (sampling, recording each turn) use of a :class:`CompactRouter`."""

    kind = "compact"
    min_turns = 2

    def __init__(self, network: CompactRouter, vocabulary: Vocabulary, embed: Callable[[str], np.ndarray],
                 version: str = "0", greedy: bool = True, seed: int | None = None, lambda_top: float = math.inf,
                 use_descriptors: bool = True, use_query: bool = True, parallel_calls: bool = True,
                 answer_checks: bool = True, memory: OutcomeMemory | None = None,
                 serving_graph: bool = False) -> None:
        """``lambda_top``: the top of the trained λ range; a larger λ is decided as this one. The
        switches (on by default; off in ablations): read each model's catalog description, read the
        query's embedding, call two models in one turn, check an answer before returning it.
        ``memory``: recorded outcomes looked up by query similarity (memory.py; None: none).
        ``serving_graph``: run forwards that record nothing through onnxruntime (serving_graph.py; a
        loaded checkpoint's policy), not through torch op by op."""
        self.network = network.eval()
        self._graph = ServingGraph(network, use_descriptors) if serving_graph else None
        self.memory = memory
        self._memory_x: collections.OrderedDict[tuple[str, tuple[str, ...]], np.ndarray] = collections.OrderedDict()
        self.lambda_top = lambda_top
        self.use_descriptors, self.use_query, self.parallel_calls = use_descriptors, use_query, parallel_calls
        self.answer_checks = answer_checks
        self._descriptors: dict[str, np.ndarray] = {}
        self._pools: dict[tuple[str, ...], np.ndarray] = {}
        self._batcher: _Batcher | None = None
        self.vocabulary = vocabulary
        self.version = version
        self.greedy = greedy
        self._embed = embed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.recorder: list[Turn] | None = None
        self._queries: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()

    def _query(self, text: str) -> np.ndarray:
        # The query is encoded once per episode, not once per turn.
        if text not in self._queries:
            self._keep_query(text, self._embed(text))
        return self._queries[text]

    def reuse_encodings(self, other: CompactPolicy) -> None:
        """Share ``other``'s cache of query vectors (a candidate built from the same checkpoint,
        same encoder: a simulation's candidates would otherwise encode the same prompts again)."""
        if other.use_query == self.use_query:
            self._queries = other._queries

    def _keep_query(self, text: str, vector: np.ndarray) -> None:
        self._queries[text] = vector if self.use_query else np.zeros_like(vector)
        if len(self._queries) > 4096:  # bounded memory (~6 MiB of vectors)
            self._queries.popitem(last=False)

    async def prepare(self, state: EpisodeState) -> None:
        """Encode the request's query on a worker thread, ahead of the first decision. The router
        runs this while metering answers Authorize, so the encoder (4 ms for a short prompt, ~60 ms
        at its 256-token limit, here) overlaps that round trip and never blocks the event loop that
        serves every other request meanwhile (onnxruntime releases the GIL). Decisions then find the
        vector cached; a policy used without ``prepare`` (training, evaluation) encodes on first use."""
        text, models = state.prompt, tuple(o.id for o in state.pool)
        need_query = text not in self._queries
        need_memory = self.memory is not None and (text, models) not in self._memory_x
        if not (need_query or need_memory):
            return

        cached = None if need_query else self._queries[text]

        def work() -> tuple[np.ndarray, np.ndarray | None]:
            # The memory's neighbour search (~1 ms over the bundled 7,471 rows) goes too. Nothing
            # here writes a cache: the workers share none of the policy's state but the read-only
            # encoder session and memory (serving never adds rows).
            vector = self._embed(text) if cached is None else cached
            # (The ablation without the query caches zeros; the memory still reads the text's vector.)
            query = vector if self.use_query else self._embed(text)
            memory_x = self.memory.features(query, text, models) if need_memory else None  # type: ignore[union-attr]
            return vector, memory_x

        vector, memory_x = await asyncio.to_thread(work)
        if need_query:
            self._keep_query(text, vector)  # on the loop's thread, like every other cache write
        if memory_x is not None:
            self._keep_memory(text, models, memory_x)

    def query_vector(self, text: str) -> np.ndarray:
        """The encoder's vector of ``text`` (even in the ablation that hides it from the network)."""
        return self._query(text) if self.use_query else self._embed(text)  # encoded once per episode either way

    def memory_features(self, text: str, models: Sequence[str]) -> np.ndarray | None:
        """[M, MEMORY_FEATURES] what the outcome memory holds on each model for prompts like ``text`` (once per episode)."""
        if self.memory is None:
            return None
        key = (text, tuple(models))
        if key not in self._memory_x:
            self._keep_memory(text, key[1], self.memory.features(self.query_vector(text), text, models))
        return self._memory_x[key]

    def _keep_memory(self, text: str, models: tuple[str, ...], features: np.ndarray) -> None:
        self._memory_x[(text, models)] = features
        if len(self._memory_x) > 4096:
            self._memory_x.popitem(last=False)

    def record_verdicts(self, text: str, pool: Sequence[ModelOption], outcomes: Mapping[str, float]) -> None:
        """Add served verdicts ({model: score in [0, 1]} on the prompt ``text``, models of ``pool``) to
        the outcome memory. A verdict on a model the memory holds recorded rows of is local evidence,
        as a recorded row is: the model is known, and what traffic adds is where it is right (a new
        kind of prompt). A verdict on a model it holds none of goes in with the network's own
        prediction (before the memory's say), so that its residual calibrates that model: a new
        model's few verdicts are scattered, and what they can show is how far its prior is off."""
        if self.memory is None:
            raise ValueError("this policy has no outcome memory to learn verdicts into")
        new = [o for o in pool if o.id in outcomes and not self.memory.recorded_rows_of(o.id)]
        new_ids = {o.id for o in new}
        local = {model: score for model, score in outcomes.items() if model not in new_ids}
        vector = self.query_vector(text)
        if local:
            self.memory.add(text, vector, local)
        if new:
            predicted = dict(zip((o.id for o in new), self.network_prediction(text, new), strict=True))
            self.memory.add(text, vector, {o.id: outcomes[o.id] for o in new}, predicted)
        self.forget_memory_cache()

    def network_prediction(self, text: str, pool: Sequence[ModelOption]) -> list[float]:
        """The network's probability that each model of ``pool`` answers ``text`` right, from the
        query, the catalog and the memory's neighbourhood, without its local evidence or calibration."""
        out = self._first_decision(text, pool, without_memory_say=True)
        return torch.sigmoid(out["correct"][0, :len(pool)]).tolist()

    def predicted_costs(self, text: str, pool: Sequence[ModelOption]) -> list[float]:
        """The network's predicted cost (USD) of calling each model of ``pool`` on ``text``."""
        out = self._first_decision(text, pool)
        return (torch.expm1(out["log_cost"][0, :len(pool)].clamp(min=0, max=30)) / 1e6).tolist()

    def _first_decision(self, text: str, pool: Sequence[ModelOption],
                        without_memory_say: bool = False) -> dict[str, torch.Tensor]:
        state = EpisodeState([("user", text)], list(pool), 0.0, None, 2, 0)
        memory_x = self.memory_features(text, [o.id for o in pool])
        if memory_x is not None and without_memory_say:
            memory_x = memory_x.copy()
            memory_x[:, [EVIDENCE, CALIBRATION]] = 0.0
        arrays = encode_state(state, self.vocabulary, self.lambda_top, self.answer_checks, memory_x)
        batch = pad_decisions([self._query(text)], [arrays], [False], len(self.vocabulary.tags),
                              None if not self.use_descriptors else [self.descriptors(list(pool))])
        with torch.inference_mode():
            return self._forward(batch)

    def forget_memory_cache(self) -> None:
        """After the memory gained rows: lookups already made are stale."""
        self._memory_x.clear()

    def descriptors(self, pool: list[ModelOption]) -> np.ndarray | None:
        """[M, 384] catalog-description embeddings of a pool, each encoded once per description."""
        if not self.use_descriptors:
            return None
        key = tuple(descriptor_text(option) for option in pool)
        if key in self._pools:
            return self._pools[key]
        rows = []
        for option in pool:
            text = descriptor_text(option)
            if text not in self._descriptors:
                self._descriptors[text] = self._embed(text)
            rows.append(self._descriptors[text])
        if len(self._pools) > 1024:  # bounded: pools are few in serving, many only in random training pools
            self._pools.clear()
        self._pools[key] = np.stack(rows)
        return self._pools[key]

    async def decide(self, state: EpisodeState) -> Action:
        if self._batcher is not None:
            return await self._batcher.submit(state)
        return self.decide_many([state])[0]

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Within this block, decisions of concurrently running episodes (asyncio tasks of one loop)
        that are asked for in the same loop iteration go through one network forward."""
        self._batcher = _Batcher(self)
        try:
            yield
        finally:
            self._batcher = None

    def decide_many(self, states: Sequence[EpisodeState]) -> list[Action]:
        """One decision for each state, the network run once over all of them."""
        actions: list[Action | None] = [None] * len(states)
        arrays = [encode_state(s, self.vocabulary, self.lambda_top, self.answer_checks,
                               self.memory_features(s.prompt, [o.id for o in s.pool])) for s in states]
        rows = []
        for i, (state, item) in enumerate(zip(states, arrays, strict=True)):
            if not item.selectable.any() and (state.final_turn or not item.callable_.any()):
                actions[i] = SelectResponse(-1)  # nothing to select and nothing left to call: the loop's fallback
            else:
                rows.append(i)
        if not rows:
            return actions  # type: ignore[return-value]
        queries = [self._query(states[i].prompt) for i in rows]
        descriptors = None if not self.use_descriptors else [self.descriptors(states[i].pool) for i in rows]
        batch = pad_decisions(queries, [arrays[i] for i in rows], [states[i].final_turn for i in rows],
                              len(self.vocabulary.tags), descriptors)
        with torch.inference_mode():
            out = self._forward(batch)
            if self.greedy and self.recorder is None:  # serving: every decision of the batch at once
                chosen = choose_greedy(out, batch.masks, self.parallel_calls)
                for position, i in enumerate(rows):
                    actions[i] = _action(states[i], arrays[i], chosen, position)
                return actions  # type: ignore[return-value]
            for position, i in enumerate(rows):
                one = {key: value[position:position + 1] for key, value in out.items()}
                masks = Masks(batch.masks.callable_[position:position + 1], batch.masks.selectable[position:position + 1],
                              batch.masks.final[position:position + 1])
                chosen = choose(one, masks, self.greedy, self._generator, self.parallel_calls)
                if self.recorder is not None:
                    logp, _ = log_prob(one, masks, chosen)
                    self.recorder.append(Turn(queries[position], arrays[i], states[i].final_turn, chosen, float(logp[0])))
                actions[i] = _action(states[i], arrays[i], chosen)
        return actions  # type: ignore[return-value]

    def _forward(self, batch: DecisionBatch) -> dict[str, torch.Tensor]:
        # A rollout being recorded for the trainer runs torch itself: its log-probabilities must be
        # exactly those the update recomputes.
        if self._graph is not None and self.recorder is None:
            return self._graph(batch.inputs())
        return batch.forward(self.network)


def _action(state: EpisodeState, arrays: StateArrays, chosen: Actions, row: int = 0) -> Action:
    """The action of decision ``row`` of ``chosen``."""
    if bool(chosen.stop[row]):
        model = arrays.models[int(chosen.select[row])]
        return SelectResponse(max(c.index for c in state.calls if c.model == model and c.ok))
    calls = [arrays.models[int(chosen.first[row])]]
    if int(chosen.second[row]) >= 0:
        calls.append(arrays.models[int(chosen.second[row])])
    # A single call made when only the selecting turn remains and nothing else succeeded is the one
    # answer the policy can return: it may stream to the user as it is generated.
    final = len(calls) == 1 and state.turn + 1 >= state.max_turns and not any(c.ok for c in state.calls)
    return CallModels(tuple(ToolCall(model, SYSTEM_PROMPT) for model in calls), final=final)


class _Batcher:
    """Collects the decisions asked for in one event-loop iteration and answers them together."""

    def __init__(self, policy: CompactPolicy) -> None:
        self._policy = policy
        self._pending: list[tuple[EpisodeState, asyncio.Future[Action]]] = []

    async def submit(self, state: EpisodeState) -> Action:
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)  # runs after every task already runnable in this iteration
        future: asyncio.Future[Action] = loop.create_future()
        self._pending.append((state, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            actions = self._policy.decide_many([state for state, _ in pending])
        except Exception as error:  # every waiting episode gets the failure, none hangs
            for _, future in pending:
                future.set_exception(error)
            return
        for (_, future), action in zip(pending, actions, strict=True):
            future.set_result(action)
