"""Deployment noise (opzo.noisy) and the size check of the feedback matrices."""
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import opzo_ext as opzo
from opzo_ext.models import nf_resnet34


def small():
    torch.manual_seed(0)
    return nn.Sequential(layer.Linear(4, 8), neuron.LIFNode(), layer.Linear(8, 8), neuron.LIFNode(), layer.Linear(8, 3))


def test_noisy_adds_gaussian_noise_before_every_neuron_and_goes_away():
    net = small().eval()
    seen = []
    x = torch.rand(4000, 4)
    with torch.no_grad():
        clean = net[0](x)
        with opzo.noisy(net, sigma=0.1, seed=0):
            hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0].clone()))  # after noisy's
                     for m in net.modules() if isinstance(m, neuron.LIFNode)]
            net(x)
            for h in hooks:
                h.remove()
        functional.reset_net(net)
        after = [net[0](x)]
    assert len(seen) == 2  # both neurons
    diff = seen[0] - clean
    assert abs(diff.std().item() - 0.1) < 0.003 and abs(diff.mean().item()) < 0.003
    assert all(not m._forward_pre_hooks for m in net.modules())  # nothing left behind
    assert torch.equal(after[0], clean)
    with pytest.raises(ValueError, match="sigma"):
        with opzo.noisy(net, sigma=-1):
            pass


def test_noisy_after_every_convolution_of_a_residual_network():
    """site='conv' (table 4's "after convolutional operations"): every conv output of NF-ResNet-34,
    stem and both convolutions of every block, gets sigma * N(0, 1); nothing stays behind."""
    net = nf_resnet34(num_classes=10).eval()
    convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    clean, noisy_out = [], []
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        hooks = [m.register_forward_hook(lambda mod, a, out: clean.append(out.clone())) for m in convs]
        net(x)
        for h in hooks:
            h.remove()
        functional.reset_net(net)
        with opzo.noisy(net, sigma=0.5, seed=0, site="conv"):
            hooks = [m.register_forward_hook(lambda mod, a, out: noisy_out.append(out.clone())) for m in convs]
            net(x)  # the later hooks see noisy's output; the first conv's input is clean
            for h in hooks:
                h.remove()
        functional.reset_net(net)
    assert len(convs) == 1 + 2 * 16 + 3 and len(clean) == len(noisy_out) == len(convs)  # stem, blocks, shortcuts
    diff = noisy_out[0] - clean[0]
    assert abs(diff.std().item() - 0.5) < 0.01
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="site='conv'.*no convolution"):
        with opzo.noisy(small(), sigma=0.1, site="conv"):
            pass
    with pytest.raises(ValueError, match="site='bias' is not valid"):
        with opzo.noisy(small(), sigma=0.1, site="bias"):
            pass


def test_feedback_size_is_checked_before_allocating():
    net = small()
    with pytest.raises(opzo.OpzoError, match=r"0\.00 GB \(48 entries.*more than the 0\.00 GB.*channel"):
        opzo.train(net, method="opzo", max_feedback_gb=1e-10, example_input=torch.rand(2, 4)).open()
    with opzo.train(net, method="bp", max_feedback_gb=1e-10, example_input=torch.rand(2, 4)):
        pass  # bp has no feedback matrices


def test_nf_resnet34_dense_M_size_at_224():
    """2,935,296 hidden neurons x 1000 classes = 2.94e9 entries, 11.74 GB in float32: the message
    says so; the default limit on a 24 GB device is 6 GB (a quarter), so "auto" shares rows there."""
    net = nf_resnet34(num_classes=1000)
    with pytest.raises(opzo.OpzoError, match=r"11\.74 GB \(2,935,296,000 entries"):
        opzo.train(net, method="opzo", max_feedback_gb=4, feedback_matrix="dense",
                   example_input=torch.rand(1, 3, 224, 224)).open()
    with pytest.warns(UserWarning, match=r"11\.74 GB.*one row per channel"):  # the default: auto
        with opzo.train(net, method="opzo", max_feedback_gb=4, example_input=torch.rand(1, 3, 224, 224)) as s:
            assert sum(m.numel() for m in s.feedback.values()) == 7_104_000
