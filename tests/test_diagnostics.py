"""Firing rates and synaptic operations counted exactly on tiny networks."""
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from opzo_ext.diagnostics import activity


def test_firing_rate_and_linear_synops():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(4, 6), neuron.IFNode(), layer.Linear(6, 3))
    spikes = []
    net[1].register_forward_hook(lambda m, a, out: spikes.append(out.detach()))
    x = torch.rand(5, 4) * 4
    with activity(net) as act, torch.no_grad():
        for _ in range(3):
            net(x)
    functional.reset_net(net)
    s = torch.stack(spikes)  # [3, 5, 6]
    assert act.firing_rates() == {"1": pytest.approx(s.mean().item())}
    # every spike into Linear(6, 3) reaches 3 targets; the analog input of layer 0 is not counted
    assert act.synops() == {"2": pytest.approx(3 * s.sum().item() / (3 * 5))}
    assert s.sum() > 0
    assert len(net[1]._forward_hooks) == 1 and not net[2]._forward_hooks  # only the test's own hook is left


def test_conv_fan_out_counts_borders_and_stride():
    conv = layer.Conv2d(1, 2, 3, padding=1)
    net = nn.Sequential(conv)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1  # the centre reaches 2 channels x 9 positions
    with activity(net) as act, torch.no_grad():
        net(x)
    assert act.synops() == {"0": 18.0}
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1  # a corner reaches 2 x 4
    with activity(net) as act, torch.no_grad():
        net(x)
    assert act.synops() == {"0": 8.0}
    strided = nn.Sequential(layer.Conv2d(1, 1, 2, stride=2))
    x = torch.ones(1, 1, 4, 4)  # each input pixel belongs to exactly one 2x2 window
    with activity(strided) as act, torch.no_grad():
        strided(x)
    assert act.synops() == {"0": 16.0}
