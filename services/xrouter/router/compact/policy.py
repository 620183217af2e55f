"""The compact learned policy: encode the query once, then decide each turn with the network."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.compact.distribution import Actions, Masks, choose, log_prob
from xrouter.router.compact.features import StateArrays, Vocabulary, descriptor_text, encode_state
from xrouter.router.compact.network import CompactRouter
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
                 answer_checks: bool = True) -> None:
        """``lambda_top``: the top of the trained λ range; a larger λ is decided as this one. The
        switches (on by default; off in ablations): read each model's catalog description, read the
        query's embedding, call two models in one turn, check an answer before returning it."""
        self.network = network.eval()
        self.lambda_top = lambda_top
        self.use_descriptors, self.use_query, self.parallel_calls = use_descriptors, use_query, parallel_calls
        self.answer_checks = answer_checks
        self._descriptors: dict[str, np.ndarray] = {}
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
            vector = self._embed(text)
            self._queries[text] = vector if self.use_query else np.zeros_like(vector)
            if len(self._queries) > 4096:  # bounded memory (~6 MiB of vectors)
                self._queries.popitem(last=False)
        return self._queries[text]

    def descriptors(self, pool: list[ModelOption]) -> np.ndarray | None:
        """[M, 384] catalog-description embeddings of a pool, each encoded once per description."""
        if not self.use_descriptors:
            return None
        rows = []
        for option in pool:
            text = descriptor_text(option)
            if text not in self._descriptors:
                self._descriptors[text] = self._embed(text)
            rows.append(self._descriptors[text])
        return np.stack(rows)

    async def decide(self, state: EpisodeState) -> Action:
        arrays = encode_state(state, self.vocabulary, self.lambda_top, self.answer_checks)
        query = self._query(state.prompt)
        descriptors = self.descriptors(state.pool)
        masks = Masks(torch.from_numpy(arrays.callable_)[None], torch.from_numpy(arrays.selectable)[None],
                      torch.tensor([state.final_turn]))
        if not arrays.selectable.any() and (state.final_turn or not arrays.callable_.any()):
            return SelectResponse(-1)  # nothing to select and nothing left to call: the loop's fallback
        with torch.inference_mode():
            out = self.network(torch.from_numpy(query)[None], torch.from_numpy(arrays.global_x)[None],
                               torch.from_numpy(arrays.model_ids)[None], torch.from_numpy(arrays.model_x)[None],
                               torch.ones((1, len(arrays.models)), dtype=torch.bool), masks.selectable,
                               None if descriptors is None else torch.from_numpy(descriptors)[None])
            actions = choose(out, masks, self.greedy, self._generator, self.parallel_calls)
            if self.recorder is not None:
                logp, _ = log_prob(out, masks, actions)
                self.recorder.append(Turn(query, arrays, state.final_turn, actions, float(logp[0])))
        if bool(actions.stop[0]):
            model = arrays.models[int(actions.select[0])]
            return SelectResponse(max(c.index for c in state.calls if c.model == model and c.ok))
        calls = [arrays.models[int(actions.first[0])]]
        if int(actions.second[0]) >= 0:
            calls.append(arrays.models[int(actions.second[0])])
        return CallModels(tuple(ToolCall(model, SYSTEM_PROMPT) for model in calls))
