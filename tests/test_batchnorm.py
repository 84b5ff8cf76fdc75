"""BatchNorm statistics and the session's noise: the warning, and opzo.update_bn against torch's
own update_bn (torch.optim.swa_utils) on clean forward passes."""
from __future__ import annotations

import copy
import warnings

import pytest
import snntorch as snn
import snntorch.utils
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn
from torch.optim.swa_utils import update_bn as torch_update_bn

import opzo_ext as opzo
from opzo_ext.errors import HealthWarning

T = 4


def conv_bn_net(seed: int = 0) -> nn.Sequential:
    """conv-BN-LIF, conv-BN-LIF, readout: the first BN sees the image, the second the noise."""
    torch.manual_seed(seed)
    return nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), layer.BatchNorm2d(4), neuron.LIFNode(),
                         layer.Conv2d(4, 6, 3, padding=1), layer.BatchNorm2d(6), neuron.LIFNode(),
                         layer.Flatten(), layer.Linear(6 * 8 * 8, 3))


def batches(n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(8, 1, 8, 8, generator=g) * 2, torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def train(net, method: str, **options) -> list[str]:
    """A few sequences of T single steps inside a session; the health warnings raised."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opzo.train(net, method=method, seed=0, **options) as session:
            for x, y in batches():
                for _ in range(T):
                    if method == "zo":  # each sample's own loss
                        session.loss(F.cross_entropy(net(x), y, reduction="none")).backward()
                    else:
                        F.cross_entropy(net(x), y).backward()
                optimizer.step()
                optimizer.zero_grad()
                functional.reset_net(net)
    return [str(w.message) for w in caught if issubclass(w.category, HealthWarning)]


class ResetThenForward(nn.Module):
    """What torch's update_bn needs to run an SNN: the neurons reset before each batch, T steps."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        functional.reset_net(self.net)
        return [self.net(x) for _ in range(T)]


def stats(net) -> list[torch.Tensor]:
    return [t.clone() for m in net.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var, m.num_batches_tracked)]


def test_update_bn_equals_torch_update_bn_and_takes_the_noise_out():
    net = conv_bn_net()
    train(net, "opzo", alpha=0.5)
    noisy = stats(net)
    reference = copy.deepcopy(net)
    torch_update_bn(batches(3, seed=2), ResetThenForward(reference))
    assert opzo.update_bn(net, batches(3, seed=2), forward=lambda m, x: [m(x) for _ in range(T)]) == 3
    clean = stats(net)
    assert all(torch.equal(a, b) for a, b in zip(clean, stats(reference)))
    # the noise (alpha 0.5 after the first LIF layer) had widened the second BN's running variance
    assert (noisy[4] > clean[4]).all() and noisy[4].mean() > 1.5 * clean[4].mean()
    assert net.training and all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_update_bn_resets_snntorch_neurons_before_each_batch():
    """snnTorch init_hidden neurons keep their membrane between calls: update_bn resets them before
    each batch (the reference resets them itself), and leaves the model in the mode it was in."""
    def make():  # built, not deep-copied: snnTorch resets only the neurons built through __init__
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), snn.Leaky(beta=0.5, init_hidden=True),
                             nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),  # fed by the neurons' state
                             snn.Leaky(beta=0.5, init_hidden=True), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()

    net, reference = make(), make()

    class Loop(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            snn.utils.reset(self.inner)
            return [self.inner(x) for _ in range(T)]

    torch_update_bn(batches(2), Loop(reference))
    assert opzo.update_bn(net, batches(2), forward=lambda m, x: [m(x) for _ in range(T)]) == 2
    assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(reference)))
    assert not net.training  # the mode it was in


def test_update_bn_refuses_an_open_session_and_keeps_the_statistics_on_failure():
    net = conv_bn_net()
    before = stats(net)
    with opzo.train(net, method="opzo", example_input=batches(1)[0][0]):
        with pytest.raises(opzo.OpzoError, match="open opzo_ext session.*after the `with opzo.train"):
            opzo.update_bn(net, batches(1))
    with pytest.raises(opzo.OpzoError, match="no batches"):
        opzo.update_bn(net, [])

    def broken(model, x):
        model(x)
        raise RuntimeError("a data error")

    with pytest.raises(RuntimeError, match="a data error"):
        opzo.update_bn(net, batches(2), forward=broken)
    assert all(torch.equal(a, b) for a, b in zip(stats(net), before))
    assert opzo.update_bn(nn.Sequential(nn.Linear(2, 2)), batches(1)) == 0  # no BatchNorm: nothing to do


@pytest.mark.parametrize("method", ["opzo", "zo"])
def test_a_noisy_method_warns_once_about_batchnorm_after_the_noise(method):
    messages = [m for m in train(conv_bn_net(), method) if m.startswith("BatchNorm")]
    assert len(messages) == 1
    assert messages[0].startswith(f"BatchNorm layer(s) '4' come after the noise that method '{method}' injects")
    assert "opzo.update_bn(model, train_loader)" in messages[0]


def test_no_batchnorm_warning_without_noise_or_before_the_first_neuron():
    for method in ("bp", "dfa"):
        assert not [m for m in train(conv_bn_net(), method) if m.startswith("BatchNorm")]
    torch.manual_seed(0)
    first_only = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), layer.BatchNorm2d(4), neuron.LIFNode(),
                               layer.Flatten(), layer.Linear(4 * 8 * 8, 3))  # its BN sees the image
    assert not [m for m in train(first_only, "opzo") if m.startswith("BatchNorm")]
    with opzo.train(conv_bn_net(), method="opzo", example_input=batches(1)[0][0]) as session:
        assert session.topology.norms == ["4"]
