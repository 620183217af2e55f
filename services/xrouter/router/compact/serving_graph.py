"""The compact network's forward as one onnxruntime graph, for serving.

Why: a decision's forward is ~40 small tensor ops; through torch each pays Python and dispatcher
overhead (~0.6 ms for one decision here), which made the network most of the learned policy's
router CPU under load. Exported once when the checkpoint loads (~0.2 s), the same graph runs in
~0.15 ms. The graph is traced from the network itself, so there is one definition of the policy;
outputs agree with torch to float rounding (tests/test_compact_serving_graph.py).

Training never goes through here: the graph is a snapshot of the weights, and a forward after the
weights changed in place (an optimizer step) re-exports it rather than answering with old weights.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from xrouter.router.compact.features import GLOBAL_FEATURES, MODEL_FEATURES
from xrouter.router.compact.network import DESCRIPTOR_DIM, CompactRouter

INPUTS = ("query", "global_x", "model_ids", "model_x", "present", "selectable", "descriptors")
OUTPUTS = ("call", "select", "stop", "more", "penalty", "correct", "log_cost")
_PER_DECISION = ("stop", "more")  # [B]; the other outputs are [B, M]


def _expm1(g, x):  # type: ignore[no-untyped-def]
    # ONNX has no expm1. exp(x) − 1 differs only in relative precision near 0 (λ·cost terms ~1e-7
    # apart), far below what separates two choices.
    return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0)))


class _Outputs(torch.nn.Module):
    """The network with its dict of outputs as a tuple (what the exporter traces)."""

    def __init__(self, network: CompactRouter) -> None:
        super().__init__()
        self.network = network

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(*inputs)
        return tuple(out[name] for name in OUTPUTS)


class ServingGraph:
    """``graph(inputs) -> {output: tensor}`` for the network's serving inputs (all seven, descriptors
    included, or the first six when the policy reads no descriptors)."""

    def __init__(self, network: CompactRouter, descriptors: bool) -> None:
        self._network = network
        self._parameters = list(network.parameters())  # listed once: walking the modules costs ~0.1 ms
        self._names = INPUTS if descriptors else INPUTS[:-1]
        self._session = None
        self._weights_version = -1
        # Exported now, where the checkpoint is loaded (a worker thread when the router loads one),
        # not on the first decision: that would stall the event loop for the export (~0.2 s).
        self._export()

    def _version(self) -> int:
        # Every in-place change of a parameter (an optimizer step, load_state_dict) bumps its version.
        return sum(p._version for p in self._parameters)

    def _export(self) -> None:
        import onnxruntime

        torch.onnx.register_custom_op_symbolic("aten::expm1", _expm1, 17)
        examples = _examples(self._network, len(self._names) == len(INPUTS))
        axes = {"query": {0: "batch"}, "global_x": {0: "batch"}}
        axes |= {name: {0: "batch", 1: "models"} for name in self._names[2:]}
        axes |= {name: {0: "batch"} if name in _PER_DECISION else {0: "batch", 1: "models"} for name in OUTPUTS}
        buffer = io.BytesIO()
        was_training = self._network.training
        # The exporter traces in eval mode (no query dropout), then sets the wrapper's mode back on
        # every submodule: the network's own mode is restored below.
        wrapped = _Outputs(self._network).eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporter's notes on ops it maps: nothing to act on at load
                torch.onnx.export(wrapped, examples, buffer, input_names=list(self._names), output_names=list(OUTPUTS),
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
        finally:
            self._network.train(was_training)
        options = onnxruntime.SessionOptions()
        # One thread: a decision is microseconds of arithmetic; more threads only contend with the server.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self._weights_version = self._version()

    def __call__(self, inputs: tuple[torch.Tensor | None, ...]) -> dict[str, torch.Tensor]:
        if self._version() != self._weights_version:
            self._export()
        feed = {name: value.numpy() for name, value in zip(self._names, inputs, strict=False)}
        results = self._session.run(None, feed)  # type: ignore[attr-defined]
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUTS, results, strict=True)}


def _examples(network: CompactRouter, descriptors: bool) -> tuple[torch.Tensor, ...]:
    """Inputs of the right widths for tracing (2 decisions over 3 models; any sizes serve after)."""
    config = network.config
    batch, models = 2, 3
    generator = np.random.default_rng(0)
    example = [torch.from_numpy(generator.standard_normal((batch, config["query_dim"]), dtype=np.float32)),
               torch.zeros((batch, GLOBAL_FEATURES), dtype=torch.float32),
               torch.ones((batch, models), dtype=torch.long),
               torch.zeros((batch, models, MODEL_FEATURES + config["n_tags"]), dtype=torch.float32),
               torch.ones((batch, models), dtype=torch.bool),
               torch.zeros((batch, models), dtype=torch.bool)]
    if descriptors:
        example.append(torch.zeros((batch, models, DESCRIPTOR_DIM), dtype=torch.float32))
    return tuple(example)
