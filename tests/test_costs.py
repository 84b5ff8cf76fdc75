"""opzo_ext.costs: the paper's table 5 (error-backward memory and operations on neuromorphic hardware),
checked against hand-computed counts and against the feedback matrices a session allocates."""
import pytest
import snntorch as snn
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import opzo_ext as opzo
from opzo_ext.costs import METHODS, backward_costs
from opzo_ext.models import nf_resnet18


def snn_4_6_5_3():
    """4-6-5-3 snnTorch MLP ending in an output neuron layer (the readout is tapped at its input)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.5, init_hidden=True),
                         nn.Linear(6, 5), snn.Leaky(beta=0.5, init_hidden=True),
                         nn.Linear(5, 3), snn.Leaky(beta=0.5, init_hidden=True))


def sj_conv():
    """2x5x5 -> conv 4C3 -> LIF -> conv 4C3 -> LIF -> avgpool 1x1 -> Linear(4, 3)."""
    torch.manual_seed(0)
    return nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(),
                         layer.Conv2d(4, 4, 3, padding=1), neuron.LIFNode(),
                         layer.AdaptiveAvgPool2d(1), layer.Flatten(1), layer.Linear(4, 3))


def test_fc_matches_table5_by_hand():
    costs = backward_costs(snn_4_6_5_3(), torch.rand(2, 4))
    assert [lay.name for lay in costs.layers] == ["1", "3"] and costs.outputs == 3
    assert [lay.neurons for lay in costs.layers] == [6, 5]
    # bp: the transposes of the synapses each layer feeds: 5x6 into layer 1, 3x5 (m n_N) into layer 3
    assert [lay.backward for lay in costs.layers] == [("2",), ("4",)]
    assert [lay.memory["bp"] for lay in costs.layers] == [30, 15]
    assert [lay.operations["bp"] for lay in costs.layers] == [30, 15]
    # dfa / opzo: n_l m; zo_sp: n_l
    for method in ("dfa", "opzo"):
        assert [lay.memory[method] for lay in costs.layers] == [18, 15]
        assert [lay.operations[method] for lay in costs.layers] == [18, 15]
    assert [lay.memory["zo_sp"] for lay in costs.layers] == [6, 5]
    assert costs.totals == {"bp": (45, 45), "dfa": (33, 33), "zo_sp": (11, 11), "opzo": (33, 33)}
    assert costs.update("opzo") == 33 and costs.update("dfa") == costs.update("bp") == 0
    assert costs.parallel == {"bp": False, "dfa": True, "zo_sp": True, "opzo": True}
    assert costs.synapses == {"0": (24, 24), "2": (30, 30), "4": (15, 15)} and costs.forward == (69, 69)


def test_uniform_fc_equals_the_paper_formulas():
    """N hidden layers of n neurons, m outputs: exactly (N-1)n^2 + mn, Nmn, Nn, Nmn."""
    N, n, m = 3, 7, 2
    mods = [nn.Linear(5, n), snn.Leaky(beta=0.9, init_hidden=True)]
    for _ in range(N - 1):
        mods += [nn.Linear(n, n), snn.Leaky(beta=0.9, init_hidden=True)]
    costs = backward_costs(nn.Sequential(*mods, nn.Linear(n, m)), torch.rand(4, 5))
    bp, nmn = (N - 1) * n * n + m * n, N * m * n
    assert costs.totals == {"bp": (bp, bp), "dfa": (nmn, nmn), "zo_sp": (N * n, N * n), "opzo": (nmn, nmn)}


def test_totals_are_the_sums_of_the_layers():
    costs = backward_costs(sj_conv(), torch.rand(3, 2, 5, 5))
    for method in METHODS:
        assert costs.memory(method) == sum(lay.memory[method] for lay in costs.layers)
        assert costs.operations(method) == sum(lay.operations[method] for lay in costs.layers)
    # every synapse after the first spiking layer is a backward connection of exactly one layer
    back = [s for lay in costs.layers for s in lay.backward]
    assert sorted(back) == ["2", "6"]
    assert costs.memory("bp") == sum(costs.synapses[s][0] for s in back)


def test_conv_weights_and_macs_from_shapes():
    costs = backward_costs(sj_conv(), torch.rand(3, 2, 5, 5))
    # conv 2->4 3x3 on 5x5 (padding 1): 72 weights, 25 positions x 4 channels x 2 x 9 MACs
    assert costs.synapses["0"] == (72, 1800)
    assert costs.synapses["2"] == (144, 3600) and costs.synapses["6"] == (12, 12)
    assert [lay.neurons for lay in costs.layers] == [100, 100] and costs.outputs == 3
    assert [(lay.memory["bp"], lay.operations["bp"]) for lay in costs.layers] == [(144, 3600), (12, 12)]
    assert costs.totals["opzo"] == (600, 600) and costs.totals["zo_sp"] == (200, 200)
    channel = backward_costs(sj_conv(), torch.rand(3, 2, 5, 5), feedback_matrix="channel")
    assert [lay.rows for lay in channel.layers] == [4, 4]
    assert channel.totals["dfa"] == channel.totals["opzo"] == (24, 24)
    assert channel.totals["bp"] == costs.totals["bp"] and channel.totals["zo_sp"] == (200, 200)


def test_multistep_counts_per_sample_and_step():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(), layer.Linear(6, 5), neuron.LIFNode(),
                        layer.Linear(5, 3))
    single = backward_costs(net, torch.rand(2, 4))
    functional.set_step_mode(net, "m")
    multi = backward_costs(net, torch.rand(3, 2, 4))  # [T, B, features]
    assert multi.totals == single.totals == {"bp": (45, 45), "dfa": (33, 33), "zo_sp": (11, 11), "opzo": (33, 33)}
    assert multi.synapses == single.synapses


@pytest.mark.parametrize("layout", ["dense", "channel"])
@pytest.mark.parametrize("method", ["opzo", "dfa"])
def test_feedback_memory_is_the_sessions_feedback_matrices(method, layout):
    x = torch.rand(2, 2, 5, 5)
    costs = backward_costs(sj_conv(), x, feedback_matrix=layout)
    net = sj_conv()
    with opzo.train(net, method=method, example_input=x, feedback_matrix=layout, max_feedback_gb=1.0) as session:
        matrices = session.feedback
    assert {n: tuple(M.shape) for n, M in matrices.items()} == {
        lay.name: (lay.rows, costs.outputs) for lay in costs.layers}
    assert costs.memory(method) == sum(M.numel() for M in matrices.values())


def test_bp_has_no_feedback_matrix():
    x = torch.rand(2, 4)
    net = snn_4_6_5_3()
    with opzo.train(net, method="bp", example_input=x) as session:
        assert session.feedback == {}
    costs = backward_costs(net, x)
    weights = {name: m.weight.numel() for name, m in net.named_modules() if isinstance(m, nn.Linear)}
    assert costs.memory("bp") == weights["2"] + weights["4"]  # backward connections, not [n_l, m]


def test_nf_resnet_bp_keeps_every_synapse_but_the_stem():
    net = nf_resnet18(num_classes=10)
    costs = backward_costs(net, torch.rand(1, 3, 32, 32))
    weights = {n: m.weight.numel() for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {n: w for n, (w, _) in costs.synapses.items()} == weights
    assert costs.memory("bp") == sum(weights.values()) - weights["conv1"]
    assert len(costs.layers) == 16 and costs.outputs == 10
    assert costs.memory("opzo") == 10 * sum(lay.neurons for lay in costs.layers)
    assert costs.layers[-1].backward == ("layer4.1.conv2", "fc")


def test_markdown_and_model_untouched():
    net = snn_4_6_5_3()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    costs = backward_costs(net, (torch.rand(2, 4),))
    text = str(costs)
    assert text == costs.to_markdown()
    assert "| **total** | 11 | 45 / 45 | 33 / 33 | 11 / 11 | 33 / 33 |" in text
    assert "| bp | O((N-1)n^2 + mn) | no | 45 | 45 | 0 |" in text
    assert "| opzo | O(Nmn) | yes | 33 | 33 | 33 |" in text
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="feedback_matrix"):
        backward_costs(snn_4_6_5_3(), torch.rand(2, 4), feedback_matrix="lowrank")
    costs = backward_costs(snn_4_6_5_3(), torch.rand(2, 4))
    with pytest.raises(ValueError, match="method"):
        costs.memory("dkp")
    with pytest.raises(opzo.OpzoError, match="no hidden spiking layer"):
        backward_costs(nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.5, init_hidden=True)), torch.rand(2, 4))
