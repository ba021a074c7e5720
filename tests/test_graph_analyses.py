"""The graph analyses behind ``Model``, each on its own (no ONNX file, no loader).

``xplain.graph.model.Model`` is a facade over these modules; the model-level tests (layer names,
transformers, modern models, the method contract) cover them through it. Here each is built
directly on a traced 8×8 network, so a wrong cut, layout, census or cache shows up in the module
that owns it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import fx, nn

from xplain.graph.knowledge import GraphKnowledge
from xplain.graph.layers import FeatureLayers, cut_layers, find_bias_layers
from xplain.graph.layouts import NCHW, TOKENS, Layout, Layouts
from xplain.graph.nonlinear import Nonlinearities
from xplain.graph.requirements import requirement_problem
from xplain.graph.signal import SignalGraph
from xplain.graph.surgery import Surgery


class _Net(nn.Module):
    """conv → ReLU6 → conv → BN → LeakyReLU → residual add with the first map → pool → linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU6()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act2 = nn.LeakyReLU(0.1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        a = self.act1(self.conv1(x))
        b = self.act2(self.bn(self.conv2(a)))
        return self.fc(torch.flatten(self.pool(a + b), 1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    module = _Net().eval()
    module.bn.running_mean.uniform_(-1, 1)
    module.bn.running_var.uniform_(0.5, 2)
    return fx.symbolic_trace(module)


def _signal(graph, calls=None):
    def example():
        if calls is not None:
            calls.append(1)
        return torch.randn(1, 3, 8, 8)

    return SignalGraph(graph, example)


def test_signal_graph_cuts_and_shapes(net):
    signal = _signal(net)
    assert signal.shape("act1") == (1, 4, 8, 8)
    assert signal.shape("pool") == (1, 4, 4, 4)
    # conv1's and act1's outputs are cuts; conv2..act2 run beside the residual branch (a is
    # still live), so they are not; the add joins the branches and is one again
    cuts = [n.name for n in signal.cuts]
    assert cuts[:2] == ["conv1", "act1"]
    assert "conv2" not in cuts and "act2" not in cuts
    assert {"add", "pool", "flatten", "fc"} <= set(cuts)
    add = next(n for n in net.graph.nodes if n.name == "add")
    assert [n.name for n in signal.signal_inputs(add)] == ["act1", "act2"]


def test_layouts_of_maps_and_tokens(net):
    layouts = Layouts(_signal(net), 8, 8)
    assert layouts.by_node["act1"] == Layout(NCHW, 4, (8, 8))
    assert layouts.by_node["pool"] == Layout(NCHW, 4, (4, 4))
    assert "fc" not in layouts.by_node  # B×K is no grid
    assert layouts.grids == {(8, 8), (4, 4)}
    # 17 tokens on a graph with a 4×4 grid: one prefix token; 15 fit no grid of this graph
    assert layouts.token_layout(17, 6) == Layout(TOKENS, 6, (4, 4), 1)
    assert layouts.token_layout(15, 6) is None


def test_token_layout_round_trip():
    layout = Layout(TOKENS, 3, (2, 2), prefix=1)
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    s = layout.to_spatial(t)
    assert s.shape == (2, 3, 2, 2)
    assert torch.equal(s[1, :, 0, 1], t[1, 2])  # token 1 + (0·2 + 1) is cell (0, 1)
    assert torch.equal(layout.from_spatial(s, like=t), t)
    assert torch.equal(layout.from_spatial(s)[:, 0], torch.zeros(2, 3))


def test_nonlinearities_census_and_bounds(net):
    nonlinear = Nonlinearities(_signal(net))
    kinds = {a.name: (a.kind, a.bounds, a.rectifier) for a in nonlinear.activations}
    assert kinds == {
        "act1": ("relu6", (0.0, 6.0), True),
        "act2": ("leaky_relu", None, True),
    }
    assert nonlinear.by_kind() == {"relu6": ["act1"], "leaky_relu": ["act2"]}


def test_requirement_sentences_by_hand():
    kinds = {"relu": ["a"], "gelu": ["b", "c"], "gate": ["d"], "softplus": ["e"]}
    assert (
        requirement_problem("rectifiers", kinds, [])
        == "needs rectifier activations; this model uses GELU (2), Softplus (1)"
    )
    assert requirement_problem("lrp-rules", kinds, []) == "has no LRP rule for Softplus (1)"
    assert requirement_problem("rectifiers", {"relu": ["a"], "gate": ["d"]}, []) is None
    assert requirement_problem("attention", kinds, []).startswith("needs attention layers")
    with pytest.raises(ValueError, match="unknown requirement"):
        requirement_problem("nonsense", kinds, [])


def test_bias_layers_fold_batchnorm(net):
    layers = {b.layer: b for b in find_bias_layers(_signal(net))}
    bn = net.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    # conv2 has no bias: its effective bias is the BatchNorm's shift, at the BN's output
    assert layers["conv2"].node == "bn"
    torch.testing.assert_close(layers["conv2"].bias.flatten(), shift.detach())
    torch.testing.assert_close(layers["conv1"].bias.flatten(), net.conv1.bias)
    assert layers["fc"].kind == "linear" and layers["fc"].bias.shape == (5,)


def test_feature_layers_default_and_bottleneck(net):
    signal = _signal(net)
    layouts = Layouts(signal, 8, 8)
    features = FeatureLayers(signal, layouts, [], 8, 8)
    assert [f.name for f in features.all] == [f.name for f in cut_layers(signal, layouts)]
    assert features.default is not None and features.default.name == "pool"
    # 4×4 is half of 8×8, so at 1/2 the coarsest grid is the pool's; at 0.6 only 8×8 is fine
    # enough, and the last layer on it is the residual add
    assert features.bottleneck(1 / 2).name == "pool"
    assert features.bottleneck(0.6).name == "add"
    node = next(n for n in net.graph.nodes if n.name == "act2")
    assert features.named(node).cut is False  # a spatial map beside the residual: no cut


def test_knowledge_runs_shape_propagation_once(net):
    calls: list[int] = []
    known = GraphKnowledge(net, 8, 8, lambda: torch.randn(1, 3, 8, 8))
    known.signal = _signal(net, calls)
    first = known.features.all
    assert known.layouts.by_node and known.nonlinear.by_node is known.nonlinear.by_node
    assert known.attention == [] and known.features.all is first
    assert calls == [1]


def test_surgery_restores_after_an_exception(net):
    nodes = {n.name: n for n in net.graph.nodes}
    host = SimpleNamespace(graph=net, node=nodes.__getitem__, device=torch.device("cpu"))
    surgery = Surgery(host)
    code, act = net.code, net.act1
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    with pytest.raises(RuntimeError, match="inside"):
        with (
            surgery.swap_modules({"act1": nn.ReLU()}),
            surgery.insert_after({"conv1": nn.Identity()}),
        ):
            assert net.act1 is not act and "xplain_inserted" in net.code
            raise RuntimeError("inside")
    assert net.act1 is act and net.code == code
    torch.testing.assert_close(net(x), before)
