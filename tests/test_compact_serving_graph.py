"""Serving the compact policy through onnxruntime and deciding a batch at once must not change a
single decision: the graph's outputs equal the torch network's, the batched greedy choice equals
the row-by-row one, and a graph never answers with weights that have since changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrouter.router.compact.distribution import Masks, choose, choose_greedy
from xrouter.router.compact.features import GLOBAL_FEATURES, LAMBDA_COLUMN, MODEL_FEATURES
from xrouter.router.compact.network import DESCRIPTOR_DIM, CompactRouter
from xrouter.router.compact.serving_graph import ServingGraph

N_MODELS, N_TAGS = 5, 3


def network(seed: int = 0) -> CompactRouter:
    torch.manual_seed(seed)
    net = CompactRouter(N_MODELS, N_TAGS, hidden=32, dropout=0.2)
    with torch.no_grad():  # non-zero residual heads, so every output path is exercised
        for head in (net.call_head, net.select_head, net.stop_head[-1]):
            head.weight.normal_(0, 0.5)
            head.bias.normal_(0, 0.5)
    return net.eval()


def inputs(batch: int, models: int, seed: int, descriptors: bool = True) -> tuple[torch.Tensor | None, ...]:
    rng = np.random.default_rng(seed)
    global_x = rng.uniform(0, 1, (batch, GLOBAL_FEATURES)).astype(np.float32)
    global_x[:, LAMBDA_COLUMN] = rng.uniform(0, 2.5, batch)  # λ from ~0 to ~3e6
    model_x = rng.uniform(0, 1, (batch, models, MODEL_FEATURES + N_TAGS)).astype(np.float32)
    present = rng.uniform(0, 1, (batch, models)) < 0.8
    present[:, 0] = True
    return (torch.from_numpy(rng.standard_normal((batch, 384)).astype(np.float32)), torch.from_numpy(global_x),
            torch.from_numpy(rng.integers(0, N_MODELS + 1, (batch, models))), torch.from_numpy(model_x),
            torch.from_numpy(present), torch.from_numpy(rng.uniform(0, 1, (batch, models)) < 0.4),
            torch.from_numpy(rng.standard_normal((batch, models, DESCRIPTOR_DIM)).astype(np.float32))
            if descriptors else None)


@pytest.mark.parametrize("descriptors", [True, False])
@pytest.mark.parametrize(("batch", "models"), [(1, 2), (1, 7), (16, 3), (5, 11)])
def test_the_graph_computes_what_the_network_computes(batch: int, models: int, descriptors: bool) -> None:
    net = network()
    graph = ServingGraph(net, descriptors)
    x = inputs(batch, models, seed=batch * 100 + models, descriptors=descriptors)
    with torch.inference_mode():
        expected = net(*x)
    got = graph(x if descriptors else x[:-1])
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=2e-5, msg=name)


def test_a_graph_follows_the_weights_after_they_change() -> None:
    net = network()
    graph = ServingGraph(net, descriptors=True)
    x = inputs(4, 3, seed=1)
    before = graph(x)["call"].clone()
    with torch.no_grad():  # in place, as an optimizer step writes
        net.trunk[0].weight.mul_(1.5)
        net.call_head.bias.add_(0.7)
    with torch.inference_mode():
        expected = net(*x)["call"]
    assert torch.isfinite(expected).all() and not torch.allclose(before, expected)
    torch.testing.assert_close(graph(x)["call"], expected, rtol=1e-5, atol=2e-5)
    net.load_state_dict(network(seed=1).state_dict())  # a reload copies into the same tensors
    with torch.inference_mode():
        torch.testing.assert_close(graph(x)["call"], net(*x)["call"], rtol=1e-5, atol=2e-5)


def test_a_graph_exported_from_a_network_in_training_mode_has_no_dropout_and_leaves_the_mode() -> None:
    net = network().train()  # dropout 0.2 on the query
    x = inputs(8, 3, seed=3, descriptors=False)[:-1]
    got = ServingGraph(net, descriptors=False)(x)["call"]
    assert net.training
    with torch.inference_mode():
        torch.testing.assert_close(got, net.eval()(*x)["call"], rtol=1e-5, atol=2e-5)


def random_outputs(batch: int, models: int, seed: int) -> tuple[dict[str, torch.Tensor], Masks]:
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 3

    out = {"call": normal(batch, models), "select": normal(batch, models), "stop": normal(batch),
           "more": normal(batch), "penalty": normal(batch, models).abs()}
    callable_ = torch.rand(batch, models, generator=generator) < 0.6
    selectable = ~callable_ & (torch.rand(batch, models, generator=generator) < 0.7)
    selectable[0] = False  # a first turn: nothing answered yet
    callable_[0, 0] = True
    final = torch.rand(batch, generator=generator) < 0.25
    final[0] = False
    final = final & selectable.any(-1)  # a final turn always has an answer to select
    return out, Masks(callable_, selectable, final)


@pytest.mark.parametrize("parallel_calls", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_the_batched_greedy_choice_is_the_row_by_row_choice(seed: int, parallel_calls: bool) -> None:
    out, masks = random_outputs(64, 6, seed)
    together = choose_greedy(out, masks, parallel_calls)
    fields = ("stop", "first", "more", "second", "select")
    kinds = {field: set() for field in fields}
    for row in range(64):
        one = {key: value[row:row + 1] for key, value in out.items()}
        alone = choose(one, Masks(masks.callable_[row:row + 1], masks.selectable[row:row + 1], masks.final[row:row + 1]),
                       greedy=True, generator=None, parallel_calls=parallel_calls)
        for field in fields:
            value = int(getattr(alone, field)[0])
            assert int(getattr(together, field)[row]) == value, (row, field)
            kinds[field].add(value)
    # The sample covers stopping and calling, with and without a second call.
    assert kinds["stop"] == {0, 1}
    assert kinds["more"] == ({-1, 0, 1} if parallel_calls else {-1})
