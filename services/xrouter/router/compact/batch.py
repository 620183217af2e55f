"""Decisions padded into one batch for one network forward: the trainer's updates, the warm start,
and concurrent episodes (``CompactPolicy.batched``) all go through here, so the network sees the
same tensors whether a decision is served alone, evaluated in a batch, or trained on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from xrouter.router.compact.distribution import Masks
from xrouter.router.compact.features import MODEL_FEATURES, StateArrays
from xrouter.router.compact.network import DESCRIPTOR_DIM, CompactRouter


@dataclasses.dataclass
class DecisionBatch:
    """B decisions, pools padded to the largest (M): query [B, Q], global_x [B, G], model_ids [B, M],
    model_x [B, M, F], present [B, M], masks, descriptors [B, M, 384] or None."""

    query: torch.Tensor
    global_x: torch.Tensor
    model_ids: torch.Tensor
    model_x: torch.Tensor
    present: torch.Tensor
    masks: Masks
    descriptors: torch.Tensor | None

    def inputs(self) -> tuple[torch.Tensor | None, ...]:
        """The network's inputs in its argument order."""
        return (self.query, self.global_x, self.model_ids, self.model_x, self.present, self.masks.selectable,
                self.descriptors)

    def forward(self, network: CompactRouter) -> dict[str, torch.Tensor]:
        return network(*self.inputs())


def pad_decisions(queries: Sequence[np.ndarray], arrays: Sequence[StateArrays], finals: Sequence[bool], n_tags: int,
                  descriptors: Sequence[np.ndarray] | None = None) -> DecisionBatch:
    """Stack decisions; ``descriptors`` holds each decision's [M_i, 384] pool descriptions (or None)."""
    size = max(len(a.models) for a in arrays)
    count = len(arrays)
    model_x = np.zeros((count, size, MODEL_FEATURES + n_tags), dtype=np.float32)
    model_ids = np.zeros((count, size), dtype=np.int64)
    present = np.zeros((count, size), dtype=bool)
    callable_ = np.zeros((count, size), dtype=bool)
    selectable = np.zeros((count, size), dtype=bool)
    desc = None if descriptors is None else np.zeros((count, size, DESCRIPTOR_DIM), dtype=np.float32)
    for row, item in enumerate(arrays):
        m = len(item.models)
        model_x[row, :m] = item.model_x
        model_ids[row, :m] = item.model_ids
        present[row, :m] = True
        callable_[row, :m] = item.callable_
        selectable[row, :m] = item.selectable
        if desc is not None:
            desc[row, :m] = descriptors[row]
    return DecisionBatch(
        torch.from_numpy(np.stack(queries)), torch.from_numpy(np.stack([a.global_x for a in arrays])),
        torch.from_numpy(model_ids), torch.from_numpy(model_x), torch.from_numpy(present),
        Masks(torch.from_numpy(callable_), torch.from_numpy(selectable), torch.tensor(list(finals))),
        None if desc is None else torch.from_numpy(desc))
