"""The compact learned policy: encode the query once, then decide each turn with the network."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from xrouter.router.baselines import SYSTEM_PROMPT
from xrouter.router.compact.distribution import Actions, Masks, choose, log_prob
from xrouter.router.compact.features import StateArrays, Vocabulary, encode_state
from xrouter.router.compact.network import CompactRouter
from xrouter.router.policy import Action, CallModels, EpisodeState, SelectResponse, ToolCall


@dataclasses.dataclass
class Turn:
    """One decision as the trainer needs it: inputs, the action taken, its log-prob at sampling."""

    query: np.ndarray
    arrays: StateArrays
    final: bool
    actions: Actions
    log_prob: float


class CompactPolicy:
    """Serving (greedy) or rollout (sampling, recording each turn) use of a :class:`CompactRouter`."""

    kind = "compact"
    min_turns = 2

    def __init__(self, network: CompactRouter, vocabulary: Vocabulary, embed: Callable[[str], np.ndarray],
                 version: str = "0", greedy: bool = True, seed: int | None = None) -> None:
        self.network = network.eval()
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
            self._queries[text] = self._embed(text)
            if len(self._queries) > 4096:  # bounded memory (~6 MiB of vectors)
                self._queries.popitem(last=False)
        return self._queries[text]

    async def decide(self, state: EpisodeState) -> Action:
        arrays = encode_state(state, self.vocabulary)
        query = self._query(state.prompt)
        masks = Masks(torch.from_numpy(arrays.callable_)[None], torch.from_numpy(arrays.selectable)[None],
                      torch.tensor([state.final_turn]))
        if not arrays.selectable.any() and (state.final_turn or not arrays.callable_.any()):
            return SelectResponse(-1)  # nothing to select and nothing left to call: the loop's fallback
        with torch.inference_mode():
            out = self.network(torch.from_numpy(query)[None], torch.from_numpy(arrays.global_x)[None],
                               torch.from_numpy(arrays.model_ids)[None], torch.from_numpy(arrays.model_x)[None],
                               torch.ones((1, len(arrays.models)), dtype=torch.bool), masks.selectable)
            actions = choose(out, masks, self.greedy, self._generator)
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
