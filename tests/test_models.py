"""The paper's networks (opzo_ext.models) train inside opzo.train like any user model; their layout
matches the paper / OTTT; OTTT checkpoints load with a report of what did not fit.

Random inputs hardly make deep layers of a freshly initialised weight-standardised network spike
(the firing rate falls layer by layer), and NF-ResNets start with ``fc.weight = 0`` and
``skipinit_gain = 0`` (every block is the identity, no error reaches the hidden layers). To check
that *every* parameter gets a nonzero gradient, :func:`activate` raises the WS gains to 3, sets
the skip gains to 1 and gives ``fc`` small random weights; the pristine initialisation is tested
separately (:func:`test_nf_resnet_pristine_init`).
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import spiking_resnet, spiking_vggws_ottt
from torch import nn

import opzo_ext as opzo
from opzo_ext.models import (CheckpointError, NFBasicBlock, Scale, conv5, conv9, fc_2x800, load_ottt_checkpoint,
                             load_state_dict_report, nf_resnet18, nf_resnet34)

T, B = 2, 2


def activate(net: nn.Module) -> nn.Module:
    """Make every layer spike on random inputs and let the error reach every layer (see above)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, layer.WSConv2d):
                m.gain.fill_(3.0)
            if isinstance(m, NFBasicBlock):
                m.skipinit_gain.fill_(1.0)
        if isinstance(getattr(net, "fc", None), nn.Linear) and not net.fc.weight.any():
            net.fc.weight.normal_(0.0, 0.01)
        if hasattr(net, "fc2"):  # fc_2x800: strong enough hidden weights for sn2 to spike
            net.fc2.weight.mul_(4.0)
    return net


def spike_counts(net: nn.Module) -> dict:
    counts = {}
    for name, m in net.named_modules():
        if isinstance(m, neuron.BaseNode):
            counts[name] = 0.0
            m.register_forward_hook(lambda mod, i, o, name=name: counts.__setitem__(name, counts[name] + float(o.detach().sum())))
    return counts


MODELS = {
    "fc_2x800": (lambda: fc_2x800(), (784,)),
    "conv5": (lambda: conv5(dropout=0.1), (3, 8, 8)),
    "conv9": (lambda: conv9(), (3, 8, 8)),
    "nf_resnet18": (lambda: nf_resnet18(num_classes=10), (3, 32, 32)),
    "nf_resnet34": (lambda: nf_resnet34(), (3, 32, 32)),
}


@pytest.mark.parametrize("method", ["bp", "opzo"])
@pytest.mark.parametrize("model", list(MODELS))
def test_one_training_step(model, method):
    build, shape = MODELS[model]
    torch.manual_seed(0)
    net = activate(build())
    counts = spike_counts(net)  # registered before the session: sees the raw spikes
    x = torch.randn(T, B, *shape) * 2.0
    y = torch.tensor([1, 0])
    # every weight gets a gradient: the wiring; the default also holds back feedback while M is noise
    options = {"feedback_scale": "corrected"} if method == "opzo" else {}
    with opzo.train(net, method=method, seed=0, **options) as session:
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
    assert len(session.layers) == len(counts)
    assert all(c > 0 for c in counts.values()), counts
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_nf_resnet_pristine_init():
    """OTTT's initialisation: fc.weight = 0 and skip gains = 0. Under online BP only the readout gets
    a gradient at the first step (fc.weight = 0 blocks the error; fc.weight's own gradient is zero
    too when layer4.0's LIF_1 is silent, since the stream after it is downsample(0) = bias = 0);
    under OPZO every gradient is finite."""
    x, y = torch.randn(T, B, 3, 32, 32) * 2.0, torch.tensor([1, 0])
    for method in ("bp", "opzo"):
        torch.manual_seed(0)
        net = nf_resnet18(num_classes=10)
        assert not net.fc.weight.any() and all(not b.skipinit_gain.item() for b in net.modules()
                                               if isinstance(b, NFBasicBlock))
        with opzo.train(net, method=method, seed=0):
            for t in range(T):
                F.cross_entropy(net(x[t]), y).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        if method == "bp":
            nonzero = {n for n, p in net.named_parameters() if p.grad.any()}
            assert "fc.bias" in nonzero and nonzero <= {"fc.weight", "fc.bias"}


# ---------------------------------------------------------------------------------------- FC
def test_fc_layout():
    net = fc_2x800()
    assert [n for n, _ in net.named_children()] == ["flatten", "fc1", "sn1", "drop1", "fc2", "sn2", "drop2", "fc3"]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [(784, 800), (800, 800), (800, 10)]
    assert sum(p.numel() for p in net.parameters()) == 1_276_810
    for sn in (net.sn1, net.sn2):
        assert isinstance(sn, neuron.LIFNode)
        assert (sn.tau, sn.decay_input, sn.v_threshold, sn.v_reset, sn.detach_reset) == (2.0, False, 1.0, None, True)
        assert isinstance(sn.surrogate_function, surrogate.Sigmoid) and sn.surrogate_function.alpha == 4.0
    assert isinstance(net.drop1, layer.Dropout) and net.drop1.p == 0.2
    assert fc_2x800(in_features=2 * 34 * 34).fc1.in_features == 2312


def test_dropout_mask_is_kept_over_steps_and_is_not_a_neuron():
    torch.manual_seed(0)
    net = fc_2x800(dropout=0.5)
    masks = []
    net.drop1.register_forward_hook(lambda m, i, o: masks.append(m.mask.clone()) if m.training else None)
    x, y = torch.rand(3, B, 784) * 3.0, torch.tensor([1, 0])
    with opzo.train(net, method="opzo", seed=0) as session:
        for t in range(3):
            F.cross_entropy(net(x[t]), y).backward()
        functional.reset_net(net)
        F.cross_entropy(net(x[0]), y).backward()
    assert session.layers == ["sn1", "sn2"]  # Dropout is a MemoryModule but not a neuron
    assert session.topology.presynaptic["fc2"] == ["sn1"]  # traced through the dropout
    assert session.topology.tap == ("synapse", "fc3")
    assert len(masks) == 4
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0], masks[3])  # redrawn after reset_net
    assert set(masks[0].unique().tolist()) == {0.0, 2.0}  # inverted dropout, p = 0.5
    net.eval()
    with torch.no_grad():
        functional.reset_net(net)
        out = net(x[0])
    assert net.drop1.mask is None and torch.isfinite(out).all()  # no dropout in eval mode


# -------------------------------------------------------------------------------------- conv
def test_conv_layouts():
    for build, widths in ((conv5, [128, 256, 512, 512]), (conv9, [64, 128, 256, 256, 512, 512, 512, 512])):
        net = build()
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert all(type(c) is layer.WSConv2d and c.gain.shape == (c.out_channels, 1, 1, 1) for c in convs)
        assert [c.out_channels for c in convs] == widths
        assert sum(isinstance(m, layer.AvgPool2d) for m in net) == 3
        assert sum(isinstance(m, neuron.LIFNode) for m in net) == len(widths)
        assert all(m.scale == 2.74 for m in net if isinstance(m, Scale))
        assert net.fc.in_features == 512
    assert sum(p.numel() for p in conv9().parameters()) == 9_228_362
    assert sum(p.numel() for p in conv5().parameters()) == 3_845_258


@pytest.mark.parametrize("in_channels,size,classes", [(3, 32, 10), (2, 48, 11), (1, 28, 10), (2, 34, 10)])
def test_conv_input_sizes(in_channels, size, classes):
    flat = conv5(in_channels=in_channels, num_classes=classes, input_size=size, fc_hw=None)
    assert flat.fc.in_features == 512 * (size // 8) ** 2
    pooled = conv5(in_channels=in_channels, num_classes=classes, input_size=size)
    with torch.no_grad():
        for net in (flat, pooled):
            assert net(torch.rand(1, in_channels, size, size)).shape == (1, classes)


def test_ws_conv_is_ottt_scaled_ws():
    """layer.WSConv2d's weight == OTTT's ScaledWSConv2d: (W - mean) / sqrt(var * fan_in + 1e-4) * gain."""
    conv = conv5().conv2
    with torch.no_grad():
        conv.gain.uniform_(0.5, 2.0)
    w = conv.weight.detach()
    fan_in = w[0].numel()
    mean, var = w.mean((1, 2, 3), keepdim=True), w.var((1, 2, 3), keepdim=True, unbiased=True)
    torch.testing.assert_close(conv.get_weight(), (w - mean) / torch.sqrt(var * fan_in + 1e-4) * conv.gain)


def activate_param(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, 3.0) if q.dim() == 4 and q.shape[1:] == (1, 1, 1) else q  # WS gains


def test_conv9_is_ottt_vgg():
    """conv9 == SpikingJelly's ottt_spiking_vggws (OTTT's VGG "S") with its parameters copied: same
    outputs, and online BP gives the same gradients as SpikingJelly's OTTTSequential."""
    torch.manual_seed(0)
    theirs = spiking_vggws_ottt.ottt_spiking_vggws(surrogate_function=surrogate.Sigmoid(alpha=4.0))
    ours = conv9(num_classes=1000)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert p.shape == q.shape
            q.copy_(activate_param(q))
            p.copy_(q)
    x, y = torch.randn(T, B, 3, 8, 8) * 2.0, torch.tensor([1, 0])
    ours.eval(), theirs.eval()
    with torch.no_grad():
        for t in range(T):
            out = ours(x[t])
            assert out.abs().sum() > 0
            torch.testing.assert_close(out, theirs(x[t]))
    functional.reset_net(ours), functional.reset_net(theirs)
    ours.train(), theirs.train()
    with opzo.train(ours, method="bp"):
        for t in range(T):
            F.cross_entropy(ours(x[t]), y).backward()
    for t in range(T):
        F.cross_entropy(theirs(x[t]), y).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("method", ["bp", "opzo"])
def test_multi_step_mode_matches_single_step(method):
    torch.manual_seed(0)
    single = activate(conv5())
    multi = conv5(step_mode="m")
    multi.load_state_dict(single.state_dict())
    assert all(m.step_mode == "m" for m in multi.modules() if hasattr(m, "step_mode"))
    x, y = torch.randn(T, B, 3, 8, 8) * 2.0, torch.tensor([1, 0])
    with opzo.train(single, method=method, seed=0):
        outs = []
        for t in range(T):
            outs.append(single(x[t]))
            F.cross_entropy(outs[-1], y).backward()
    with opzo.train(multi, method=method, seed=0):
        out = multi(x)
        sum(F.cross_entropy(out[t], y) for t in range(T)).backward()
    torch.testing.assert_close(out.detach(), torch.stack(outs).detach())
    for (name, p), q in zip(single.named_parameters(), multi.parameters()):  # float32 rounding of the sums
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6 * max(0.1, float(q.grad.abs().max())), msg=name)


# --------------------------------------------------------------------------------- NF-ResNet
def test_nf_resnet34_size_and_neurons():
    net = nf_resnet34()
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 21_797_688 and round(n_params / 1e6, 1) == 21.8
    keys = list(net.state_dict())
    assert len(keys) == 126
    for k in ("conv1.weight", "conv1.bias", "conv1.gain", "layer1.0.skipinit_gain", "layer1.0.conv1.weight",
              "layer2.0.downsample.weight", "layer2.0.downsample.bias", "layer2.0.downsample.gain",
              "fc.weight", "fc.bias"):
        assert k in keys, k
    sizes = []
    for m in net.modules():
        if isinstance(m, neuron.BaseNode):
            m.register_forward_hook(lambda mod, i, o: sizes.append(o.numel()))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            out = net(torch.randn(1, 3, 224, 224))
    finally:
        torch.set_num_threads(threads)
    assert out.shape == (1, 1000)
    assert len(sizes) == 32
    assert sum(sizes) == 2_935_296
    assert sizes[:2] == [64 * 56 * 56] * 2 and sizes[-1] == 512 * 7 * 7


def test_nf_resnet_layout():
    net = nf_resnet34(alpha=0.2)
    blocks = [m for m in net.modules() if isinstance(m, NFBasicBlock)]
    assert len(blocks) == 16
    # OTTT's expected-variance recurrence: var starts at 1, += alpha^2 per block, 1 + alpha^2 after
    # a downsampling block (first block of layer2..4)
    var, expected = 1.0, []
    for stage, n in enumerate((3, 4, 6, 3)):
        for i in range(n):
            expected.append(var ** 0.5)
            var = 1.0 + 0.04 if (stage > 0 and i == 0) else var + 0.04
    assert [b.beta for b in blocks] == pytest.approx(expected)
    assert [b.downsample is not None for b in blocks] == [i in (3, 7, 13) for i in range(16)]
    assert all(b.skipinit_gain.shape == () and b.skipinit_gain.item() == 0.0 for b in blocks)
    assert not net.fc.weight.any()
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(net.pool, layer.AvgPool2d) and (net.pool.kernel_size, net.pool.stride, net.pool.padding) == (3, 2, 1)
    assert blocks[3].downsample.kernel_size == (1, 1) and blocks[3].downsample.stride == (2, 2)


def test_nf_block_math():
    """y = conv2(LIF(conv1(a)) * 2.74) * g * alpha + identity, a = LIF(x / beta) * 2.74,
    identity = downsample(a) or x."""
    torch.manual_seed(0)
    net = activate(nf_resnet18(num_classes=10))
    for block, c_in, size in ((net.layer1[1], 64, 8), (net.layer2[0], 64, 8)):
        with torch.no_grad():
            block.skipinit_gain.fill_(0.7)
        x = torch.randn(B, c_in, size, size) * 2.0
        sn1, sn2 = (neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True,
                                   surrogate_function=surrogate.Sigmoid(alpha=4.0)) for _ in range(2))
        functional.reset_net(block)
        with torch.no_grad():
            for t in range(T):
                a = sn1(x / block.beta) * 2.74
                identity = x if block.downsample is None else block.downsample(a)
                expected = block.conv2(sn2(block.conv1(a)) * 2.74) * 0.7 * 0.2 + identity
                torch.testing.assert_close(block(x), expected)


def test_nf_resnet_multi_step():
    torch.manual_seed(0)
    single = activate(nf_resnet18(num_classes=10))
    multi = nf_resnet18(num_classes=10, step_mode="m")
    multi.load_state_dict(single.state_dict())
    x = torch.randn(T, B, 3, 32, 32)
    with torch.no_grad():
        out = multi(x)
        torch.testing.assert_close(out, torch.stack([single(x[t]) for t in range(T)]))


def test_nf_resnet_multi_step_opzo():
    torch.manual_seed(0)
    net = activate(nf_resnet18(num_classes=10, step_mode="m"))
    x, y = torch.randn(T, B, 3, 32, 32) * 2.0, torch.tensor([1, 0])
    with opzo.train(net, method="opzo", seed=0):
        out = net(x)
        sum(F.cross_entropy(out[t], y) for t in range(T)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


# ------------------------------------------------------------------------------- checkpoints
def ottt_format(state_dict: dict, ddp: bool = False) -> dict:
    """Our state dict under OTTT's names (grad_with_rate=True: conv1/conv2/downsample wrapped in .op)."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^(layer\d\.\d+\.(?:conv1|conv2|downsample))\.", r"\1.op.", k)
        out[("module." if ddp else "") + k] = v.clone()
    return out


def outputs(net, x):
    functional.reset_net(net)
    net.eval()
    with torch.no_grad():
        return torch.stack([net(x[t]) for t in range(T)])


@pytest.mark.parametrize("ddp", [False, True])
def test_load_ottt_checkpoint_roundtrip(tmp_path, ddp):
    torch.manual_seed(0)
    src = activate(nf_resnet18(num_classes=10))
    sd = ottt_format(src.state_dict(), ddp)
    assert "layer1.0.conv1.op.weight" in {k.removeprefix("module.") for k in sd}
    assert "layer2.0.downsample.op.gain" in {k.removeprefix("module.") for k in sd}
    path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
                "max_test_acc": 0.5}, path)
    torch.manual_seed(1)
    dst = nf_resnet18(num_classes=10)
    report = load_ottt_checkpoint(dst, path)
    assert report.ok and len(report.loaded) == len(sd) and report.renamed
    x = torch.randn(T, B, 3, 32, 32) * 2.0
    ref = outputs(src, x)
    assert ref.abs().sum() > 0
    assert torch.equal(outputs(dst, x), ref)


def test_load_checkpoint_reports_every_difference(tmp_path):
    torch.manual_seed(0)
    sd = ottt_format(activate(nf_resnet18(num_classes=10)).state_dict())
    del sd["layer1.0.conv1.op.bias"]
    sd["layer9.0.conv1.op.weight"] = torch.zeros(3)
    sd["fc.weight"] = torch.zeros(5, 512)
    path = tmp_path / "bad.pth"
    torch.save({"net": sd, "epoch": 1}, path)
    dst = nf_resnet18(num_classes=10)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_ottt_checkpoint(dst, path)
    msg = str(info.value)
    assert "layer1.0.conv1.bias" in msg and "layer9.0.conv1.op.weight" in msg
    assert "fc.weight" in msg and "[5, 512]" in msg and "[10, 512]" in msg
    assert "missing" in msg and "unexpected" in msg and "shape" in msg
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in before.items())  # nothing loaded
    report = load_ottt_checkpoint(dst, path, strict=False)
    assert not report.ok
    assert report.missing == ["layer1.0.conv1.bias"]
    assert report.unexpected == ["layer9.0.conv1.op.weight"]
    assert report.mismatched == [("fc.weight", (5, 512), (10, 512))]
    assert torch.equal(dst.layer1[0].conv1.weight, sd["layer1.0.conv1.op.weight"])  # the rest loaded
    assert set(report.as_dict()) == {"loaded", "missing", "unexpected", "mismatched", "renamed"}


def test_load_spikingjelly_zoo_state_dict(tmp_path):
    def build():
        return spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.ATan(),
                                               detach_reset=True, num_classes=10)
    torch.manual_seed(0)
    src = build()
    dst = build()
    report = load_state_dict_report(dst, src.state_dict())
    assert report.ok and not report.renamed
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    for i, payload in enumerate((src.state_dict(), {"model": src.state_dict(), "epoch": 2})):
        torch.save(payload, tmp_path / f"zoo{i}.pth")
        assert load_ottt_checkpoint(build(), tmp_path / f"zoo{i}.pth").ok


class _NotWeights:
    pass


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"net": nf_resnet18(num_classes=10).state_dict(), "args": _NotWeights()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_ottt_checkpoint(nf_resnet18(num_classes=10), path)
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="'net'"):
        load_ottt_checkpoint(nf_resnet18(num_classes=10), tmp_path / "empty.pth")
