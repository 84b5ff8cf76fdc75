"""``inject="conv"``: the noise is added to every hidden convolution's output and the error enters
there (the paper's "added to the results after convolutional operations", table 4).

Exact math on a tiny single-step conv net (x -> C0 -> LIF1 -> C2 -> LIF2 -> flatten -> W5 -> o,
snnTorch Leaky): every gradient equals its method's formula computed here from the recorded
convolution outputs, noise, spikes and readout outputs; then what the option refuses, resuming and
an NF-ResNet.
"""
import copy

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate
from torch import nn

import opzo_ext as opzo
from opzo_ext.errors import ConfigError, OpzoError
from tests.test_math import traces  # the OTTT trace a <- lam a + s over a sequence (lam = BETA)

T, B, ALPHA, BETA, LAM = 4, 3, 0.3, 0.5, 0.6


def make_net(seed=0, bn=False):
    torch.manual_seed(seed)
    grad = surrogate.sigmoid(slope=4.0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), *([nn.BatchNorm2d(2)] if bn else []),
        snn.Leaky(beta=BETA, init_hidden=True, spike_grad=grad),
        nn.Conv2d(2, 2, 3, padding=1), snn.Leaky(beta=BETA, init_hidden=True, spike_grad=grad),
        nn.Flatten(), nn.Linear(2 * 4 * 4, 3),
    )
    with torch.no_grad():
        for conv in (m for m in net if isinstance(m, nn.Conv2d)):
            conv.weight.mul_(4.0)  # both layers spike often
    return net


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, B, 1, 4, 4, generator=g) * 2, torch.tensor([0, 2, 1])


class Recorder:
    """Each convolution's own output (hooked before the session) and what the session passed on
    (hooked after it), the spikes reaching the readout and the readout outputs."""

    def __init__(self, net):
        self.net, self.log, self.handles = net, {k: [] for k in ("c0", "c2", "p0", "p2", "s3", "o")}, []
        for i in (0, 2):
            self._hook(net[i], "c" + str(i))

    def _hook(self, module, key):
        self.handles.append(module.register_forward_hook(lambda m, a, out: self.log[key].append(out.detach().clone())))

    def after_session(self):
        for i in (0, 2):
            self._hook(self.net[i], "p" + str(i))
        self._hook(self.net[3], "s3")
        self._hook(self.net[5], "o")

    def close(self):
        for h in self.handles:
            h.remove()


def run(net, x, y, **options):
    rec = Recorder(net)
    with opzo.train(net, example_input=x[0], inject="conv", alpha=ALPHA, momentum=LAM, seed=7, **options) as session:
        rec.after_session()
        assert session.layers == ["0", "2"]
        losses = []
        for t in range(T):
            per_sample = F.cross_entropy(net(x[t]), y, reduction="none")
            session.loss(per_sample).backward()
            losses.append(per_sample.detach())
        final = {k: v.clone() for k, v in session.feedback.items()}
    rec.close()
    return rec.log, losses, final


@pytest.mark.parametrize("method, scale", [("opzo", "paper"), ("opzo", "corrected"), ("zo", "jacobian")])
def test_the_error_enters_at_each_convolutions_output(method, scale):
    """OPZO: M_l[t] = lam M_l[t-1] + (1 - lam) z_l[t]^T o[t] / B (/ alpha but for "paper") and the
    error at convolution l's output is e[t] M_l[t]^T (/ (1 - lam^(t+1)) for "corrected"), with no
    surrogate derivative: the noise perturbs the convolution's output and M estimates the Jacobian
    from there. ZO: sample b gets (L[t, b] / B) / alpha z_l[t, b]. Each convolution's weight
    gradient is that error against its own input (C2: the trace of LIF1's spikes), nothing flows
    further back, and the readout gets its exact gradient."""
    net, (x, y) = make_net(), data()
    spikes = {}
    handles = [net[i].register_forward_hook(lambda m, a, out, i=i: spikes.setdefault(i, []).append(out.detach().clone()))
               for i in (1, 3)]
    log, losses, final = run(net, x, y, method=method, feedback_scale=scale)
    for h in handles:
        h.remove()
    z = {i: [(p - c) / ALPHA for p, c in zip(log[f"p{i}"], log[f"c{i}"])] for i in (0, 2)}
    assert all(zz.abs().max() > 0.1 for zz in z[0] + z[2])  # the noise is really there
    torch.testing.assert_close(z[0][1], -z[0][0])  # antithetic pairs by default
    assert all(sum(s.sum() for s in spikes[i]) > 0 for i in (1, 3))  # both layers spike
    e = [(F.softmax(o, 1) - F.one_hot(y, 3)) / B for o in log["o"]]
    if method == "opzo":
        by = ALPHA if scale != "paper" else 1.0
        gain = [1 / (1 - LAM ** (t + 1)) if scale == "corrected" else 1.0 for t in range(T)]
        deltas = {}
        for i, name in ((0, "0"), (2, "2")):
            m, deltas[i] = torch.zeros(z[i][0][0].numel(), 3), []
            for t in range(T):
                m = LAM * m + (1 - LAM) * z[i][t].flatten(1).t() @ log["o"][t] / (B * by)
                deltas[i].append((e[t] @ m.t() * gain[t]).view_as(z[i][t]))
            torch.testing.assert_close(final[name], m, rtol=1e-5, atol=1e-6)  # z is recovered as a difference / alpha
    else:
        assert final == {}
        deltas = {i: [losses[t].view(B, 1, 1, 1) / B / ALPHA * z[i][t] for t in range(T)] for i in (0, 2)}
    a1, a3 = traces(spikes[1]), traces([s.flatten(1) for s in spikes[3]])
    expected = {
        "0.weight": sum(torch.nn.grad.conv2d_weight(x[t], net[0].weight.shape, deltas[0][t], padding=1) for t in range(T)),
        "0.bias": sum(d.sum((0, 2, 3)) for d in deltas[0]),
        "2.weight": sum(torch.nn.grad.conv2d_weight(a1[t], net[2].weight.shape, deltas[2][t], padding=1) for t in range(T)),
        "2.bias": sum(d.sum((0, 2, 3)) for d in deltas[2]),
        "5.weight": sum(e[t].t() @ a3[t] for t in range(T)), "5.bias": sum(e[t].sum(0) for t in range(T)),
    }
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    assert net[0].weight.grad.abs().max() > 1e-6 and net[2].weight.grad.abs().max() > 1e-6


def test_the_model_is_unchanged_after_the_block_and_without_noise_in_eval():
    net, (x, y) = make_net(), data()
    reference = make_net()
    with opzo.train(net, method="opzo", inject="conv", example_input=x[0]):
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x[0]), reference(x[0]))  # no noise outside training
        net.train()
        net(x[1])
    for m in net.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m)
    for m in (net, reference):
        for layer in m.modules():
            if isinstance(layer, snn.Leaky):
                layer.reset_hidden()
    torch.testing.assert_close(net(x[2]), reference(x[2]))


def test_resuming_continues_exactly():
    """Noise generators and M of the convolutions are saved: a session resumed at a new sequence
    gives the same gradients and M as one left open."""
    (x, y) = data()

    def sequence(net, session):
        for m in net.modules():
            if isinstance(m, snn.Leaky):
                m.reset_hidden()
        net.zero_grad()
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
        return [p.grad.clone() for p in net.parameters()], {k: v.clone() for k, v in session.feedback.items()}

    net = make_net()
    with opzo.train(net, method="opzo", inject="conv", example_input=x[0], seed=3) as s:
        sequence(net, s)
        state, weights = copy.deepcopy(s.state_dict()), copy.deepcopy(net.state_dict())  # live tensors, as torch's
        grads, feedback = sequence(net, s)
    assert set(state["noise"]) >= {"0", "2"}
    again = make_net(seed=5)
    again.load_state_dict(weights)
    with opzo.train(again, method="opzo", inject="conv", example_input=x[0], seed=99) as s2:
        s2.load_state_dict(state)
        grads2, feedback2 = sequence(again, s2)
    assert all(torch.equal(g, g2) for g, g2 in zip(grads, grads2))
    assert feedback.keys() == feedback2.keys() and all(torch.equal(feedback[k], feedback2[k]) for k in feedback)
    with pytest.raises(OpzoError, match="inject='conv'"):  # a neuron-site session cannot take it
        with opzo.train(make_net(), method="opzo", example_input=x[0]) as s3:
            s3.load_state_dict(state)


def test_what_inject_conv_refuses_is_named_with_the_fix():
    (x, _) = data()
    with pytest.raises(OpzoError, match=r"'1' \(BatchNorm2d\).*requires_grad_\(False\).*inject='before'"):
        with opzo.train(make_net(bn=True), method="opzo", inject="conv", example_input=x[0]):
            pass
    frozen = make_net(bn=True)
    frozen[1].requires_grad_(False)
    with opzo.train(frozen, method="opzo", inject="conv", example_input=x[0]) as s:
        assert s.layers == ["0", "3"]
    fc = nn.Sequential(nn.Linear(16, 8), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(8, 3))
    with pytest.raises(OpzoError, match="no convolution before its readout"):
        with opzo.train(fc, method="opzo", inject="conv", example_input=torch.rand(2, 16)):
            pass
    hidden_linear = nn.Sequential(nn.Conv2d(1, 2, 3), snn.Leaky(beta=0.5, init_hidden=True), nn.Flatten(),
                                  nn.Linear(8, 8), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(8, 3))
    with pytest.raises(OpzoError, match=r"'3' \(Linear\) would get no gradient"):
        with opzo.train(hidden_linear, method="opzo", inject="conv", example_input=torch.rand(2, 1, 4, 4)):
            pass
    for option in ({"local": True}, {"lags": True, "antithetic": False}, {"igl": "1"}):
        with pytest.raises(ConfigError, match="inject='conv'"):
            opzo.train(make_net(), method="opzo", inject="conv", **option)


def test_multi_step_models_are_refused_with_the_fix():
    from spikingjelly.activation_based import functional, layer, neuron

    net = nn.Sequential(layer.Conv2d(1, 2, 3, padding=1), neuron.LIFNode(), layer.Flatten(), layer.Linear(32, 3))
    functional.set_step_mode(net, "m")
    with pytest.raises(OpzoError, match="single-step.*step_mode='s'"):
        with opzo.train(net, method="opzo", inject="conv", example_input=torch.rand(2, 2, 1, 4, 4)):
            pass


def test_methods_without_noise_keep_their_neuron_layers():
    (x, y) = data()
    net = make_net()
    with opzo.train(net, method="dfa", inject="conv", example_input=x[0]) as s:
        assert s.layers == ["1", "3"]


def test_an_nf_resnet_gets_noise_and_feedback_at_every_convolution():
    """Stem, both convolutions of every block and the downsample: every one is a site and gets its
    error (its bias's gradient; its weight's needs spikes, which the deep layers of an untrained
    net do not yet emit), the readout learns, and the model is restored."""
    from opzo_ext.models import nf_resnet18

    net = nf_resnet18(num_classes=4, in_channels=1)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([0, 3])
    with pytest.raises(OpzoError, match=r"'layer1.0' \(NFBasicBlock\).*would get no gradient"):
        opzo.train(net, method="opzo", inject="conv", example_input=x).open()
    for block in net.modules():  # its scalar gain multiplies the conv's output after the noise
        if hasattr(block, "skipinit_gain"):
            block.skipinit_gain.requires_grad_(False).fill_(1.0)
    with opzo.train(net, method="opzo", inject="conv", example_input=x, feedback_scale="corrected") as s:
        assert sorted(s.layers) == sorted(convs) and any("downsample" in n for n in convs)
        for _ in range(3):
            F.cross_entropy(net(x), y).backward()
        assert set(s.feedback) == set(convs)
    learned = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {n + ".bias" for n in convs if getattr(net.get_submodule(n), "bias", None) is not None} <= learned
    assert {"fc.weight", "fc.bias", "conv1.weight"} <= learned
    assert all(not m._forward_hooks and "forward" not in vars(m) for m in net.modules())
