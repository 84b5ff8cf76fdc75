"""feedback_matrix='channel': one feedback row per channel of a convolutional layer."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import opzo_ext as opzo

T, B, ALPHA = 3, 4, 0.3


def conv_net():
    torch.manual_seed(0)
    sg = surrogate.Sigmoid(alpha=4.0)
    net = nn.Sequential(layer.Conv2d(1, 3, 3, padding=1), neuron.LIFNode(surrogate_function=sg),
                        layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(surrogate_function=sg),
                        layer.Flatten(), layer.Linear(4 * 5 * 5, 2))
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[2].weight.mul_(4)
    return net


def data():
    g = torch.Generator().manual_seed(2)
    return torch.rand(T, B, 1, 5, 5, generator=g) * 3, torch.tensor([0, 1, 1, 0])


def test_dfa_channel_rows_equal_dense_rows_repeated_over_positions():
    x, y = data()
    grads = {}
    for mode in ("channel", "dense"):
        net = conv_net()
        with opzo.train(net, method="dfa", feedback_matrix=mode, example_input=x[0], seed=1) as s:
            if mode == "channel":
                shared = {k: v.clone() for k, v in s.feedback.items()}
                assert {k: tuple(v.shape) for k, v in shared.items()} == {"1": (3, 2), "3": (4, 2)}
            else:  # the same feedback, written out per neuron
                state = s.state_dict()
                state["feedback"]["matrices"] = {k: v.repeat_interleave(25, dim=0) for k, v in shared.items()}
                s.load_state_dict(state)
            for t in range(T):
                F.cross_entropy(net(x[t]), y).backward()
        grads[mode] = {n: p.grad.clone() for n, p in net.named_parameters()}
        functional.reset_net(net)
    for n in grads["dense"]:
        torch.testing.assert_close(grads["channel"][n], grads["dense"][n], rtol=1e-5, atol=1e-6, msg=n)
    assert grads["channel"]["0.weight"].abs().max() > 0


def test_opzo_channel_update_averages_noise_over_positions():
    x, y = data()
    net, lam = conv_net(), 0.5
    before, after, outs = {}, {}, []
    for i in (1, 3):
        net[i].register_forward_hook(lambda m, a, out, i=i: before.setdefault(i, []).append(out.detach().clone()))
    with opzo.train(net, method="opzo", feedback_matrix="channel", example_input=x[0], alpha=ALPHA,
                    momentum=lam, seed=1, feedback_scale="paper") as s:
        for i in (1, 3):
            net[i].register_forward_hook(lambda m, a, out, i=i: after.setdefault(i, []).append(out.detach().clone()))
        net[5].register_forward_hook(lambda m, a, out: outs.append(out.detach().clone()))
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
        final = {k: v.clone() for k, v in s.feedback.items()}
    for i, name in ((1, "1"), (3, "3")):
        m = torch.zeros_like(final[name])
        for t in range(T):
            z = (after[i][t] - before[i][t]) / ALPHA  # [B, C, 5, 5]
            m = lam * m + (1 - lam) * z.mean((2, 3)).t() @ outs[t] / B
        torch.testing.assert_close(final[name], m, rtol=1e-5, atol=1e-7)
    assert all(p.grad.abs().max() > 0 for p in net.parameters())


def test_channel_size_for_nf_resnet34_at_224():
    """Per-channel rows: 1000 classes x the channels of the 32 spiking layers."""
    from opzo_ext.models import nf_resnet34

    with opzo.train(nf_resnet34(num_classes=1000), method="opzo", feedback_matrix="channel",
                    example_input=torch.rand(1, 3, 224, 224)) as s:
        entries = sum(m.numel() for m in s.feedback.values())
        # sn1 sees the block input, sn2 its planes: 64*6 + (64+128*7) + (128+256*11) + (256+512*5) = 7104
        assert len(s.feedback) == 32 and entries == 7_104_000  # 28.4 MB in float32 (dense: 11.74 GB)
    with pytest.raises(opzo.ConfigError, match="feedback_matrix='channel' is for method"):
        opzo.TrainConfig(method="zo", feedback_matrix="channel")
