"""Peer checks: ``method="bp"`` against SpikingJelly's own OTTT modules and against plain autograd
with the graph through time cut; multi-step SpikingJelly models against the same model stepped."""
import copy

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import base, functional, layer, neuron, surrogate
from torch import nn

import opzo_ext as opzo

T, B = 5, 4


def inputs(seed=0, n_in=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, n_in, generator=g) * 2.0, torch.tensor([0, 1, 2, 1])


def lif():
    return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True,
                          surrogate_function=surrogate.Sigmoid(alpha=4.0))


def linears(seed=0):
    torch.manual_seed(seed)
    fcs = [layer.Linear(6, 8), layer.Linear(8, 7), layer.Linear(7, 3)]
    with torch.no_grad():
        fcs[0].weight.mul_(2.0)
        fcs[1].weight.mul_(2.0)
    return fcs


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def train_steps(net, x, y):
    for t in range(T):
        F.cross_entropy(net(x[t]), y).backward()


def test_bp_equals_spikingjelly_ottt():
    """Our online BP on a plain LIFNode network == SpikingJelly's OTTTSequential + OTTTLIFNode."""
    x, y = inputs()
    fcs = linears()
    ours = nn.Sequential(fcs[0], lif(), fcs[1], lif(), fcs[2])
    theirs = layer.OTTTSequential(
        copy.deepcopy(fcs[0]), neuron.OTTTLIFNode(surrogate_function=surrogate.Sigmoid(alpha=4.0)),
        copy.deepcopy(fcs[1]), neuron.OTTTLIFNode(surrogate_function=surrogate.Sigmoid(alpha=4.0)),
        copy.deepcopy(fcs[2]),
    )
    with opzo.train(ours, method="bp"):
        train_steps(ours, x, y)
    train_steps(theirs, x, y)
    g_ours, g_theirs = grads(ours), grads(theirs)
    assert g_ours.keys() == g_theirs.keys()
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    assert g_ours["0.weight"].abs().max() > 1e-3  # the hidden layers really receive gradient


class SmoothLIF(base.MemoryModule):
    """A LIF neuron whose 'spike' is smooth (sigmoid): autograd is exact, no surrogate needed."""

    def __init__(self, tau=2.0):
        super().__init__()
        self.tau = tau
        self.surrogate_function = None  # marks it as a SpikingJelly neuron
        self.register_memory("v", 0.0)

    def single_step_forward(self, x):
        v = self.v if isinstance(self.v, torch.Tensor) else torch.zeros_like(x)
        v = v * (1 - 1 / self.tau) + x
        s = torch.sigmoid(4 * (v - 1))
        self.v = v - s
        return s


def smooth_net(seed=0):
    fcs = linears(seed)
    return nn.Sequential(fcs[0], SmoothLIF(), fcs[1], SmoothLIF(), fcs[2])


def reference_grads(net, x, y, lam):
    """Plain autograd, state detached every step; weight gradients sum_t delta_t a_hat_t^T with
    delta_t = dL_t/d(synapse output) from autograd and a_hat the trace of the synapse input."""
    neurons = [net[1], net[3]]
    acc = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    traces = [None, None, None]
    for t in range(T):
        for m in neurons:
            if isinstance(m.v, torch.Tensor):
                m.v = m.v.detach()
        outs, ins = [], []
        h = x[t]
        for i, mod in enumerate(net):
            if isinstance(mod, nn.Linear):
                ins.append(h.detach())
                h = mod(h)
                h.retain_grad()
                outs.append(h)
            else:
                h = mod(h)
        F.cross_entropy(h, y).backward()
        for i, (inp, out) in enumerate(zip(ins, outs)):
            a = inp if i == 0 else (inp if traces[i] is None else lam * traces[i] + inp)
            traces[i] = a
            acc[f"{2 * i}.weight"] += out.grad.t() @ a
            acc[f"{2 * i}.bias"] += out.grad.sum(0)
    return acc


@pytest.mark.parametrize("trace", ["spike", "trace"])
def test_bp_equals_autograd_with_time_cut_on_smooth_neurons(trace):
    x, y = inputs(1)
    ours, ref = smooth_net(), smooth_net()
    with opzo.train(ours, method="bp", trace=trace):
        train_steps(ours, x, y)
    expected = reference_grads(ref, x, y, lam=0.0 if trace == "spike" else 0.5)
    for name, g in grads(ours).items():
        torch.testing.assert_close(g, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # and the plain parameter gradients of the reference (a_hat = s) differ from traced ones
    if trace == "trace":
        assert not torch.allclose(grads(ref)["2.weight"], expected["2.weight"])


@pytest.mark.parametrize("method", ["bp", "opzo", "dfa"])
def test_multistep_equals_single_step(method):
    """A SpikingJelly 'm' model (one forward over [T, B, ...], one backward) gets the same
    gradients and feedback matrices as the same model stepped with a loss per step. (ZO is left
    out by definition: it scales z by the value of the loss passed to backward, here the sum over
    steps instead of each step's loss.)"""
    x, y = inputs(2)
    nets = {}
    for mode in ("s", "m"):
        fcs = linears(3)
        net = nn.Sequential(fcs[0], lif(), fcs[1], lif(), fcs[2])
        functional.set_step_mode(net, mode)
        with opzo.train(net, method=method, seed=7, momentum=0.5) as session:
            if mode == "s":
                train_steps(net, x, y)
            else:
                out = net(x)
                (F.cross_entropy(out.flatten(0, 1), y.repeat(T), reduction="sum") / B).backward()
            nets[mode] = (grads(net), {k: v.clone() for k, v in session.feedback.items()}, session.steps)
    (g_s, f_s, n_s), (g_m, f_m, n_m) = nets["s"], nets["m"]
    assert n_s == n_m == T
    for name in g_s:
        torch.testing.assert_close(g_m[name], g_s[name], rtol=1e-4, atol=1e-6, msg=name)
    assert f_s.keys() == f_m.keys()
    for name in f_s:
        torch.testing.assert_close(f_m[name], f_s[name], rtol=1e-5, atol=1e-7, msg=name)


class LoopInside(nn.Module):
    """The snnTorch tutorials' style: the time loop inside forward, one backward per batch."""

    def __init__(self, fcs):
        super().__init__()
        import snntorch as snn

        self.fc1, self.fc2, self.fc3 = fcs
        self.lif1 = snn.Leaky(beta=0.5, spike_grad=snn.surrogate.sigmoid(slope=4))
        self.lif2 = snn.Leaky(beta=0.5, spike_grad=snn.surrogate.sigmoid(slope=4))

    def step(self, x, mem1, mem2):
        spk1, mem1 = self.lif1(self.fc1(x), mem1)
        spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
        return self.fc3(spk2), mem1, mem2

    def forward(self, x_seq):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        outs = []
        for x in x_seq:
            out, mem1, mem2 = self.step(x, mem1, mem2)
            outs.append(out)
        return torch.stack(outs)


class StepOutside(LoopInside):
    def forward(self, x, mem1, mem2):
        return self.step(x, mem1, mem2)


@pytest.mark.parametrize("method", ["bp", "opzo", "dfa"])
def test_time_loop_inside_forward_equals_stepping_outside(method):
    """One backward over all steps (M updated out of place, each step's graph keeps its own M_t)
    gives the gradients of a backward per step (M updated in place)."""
    x, y = inputs(4)
    inside, outside = LoopInside(linears(5)), StepOutside(linears(5))
    with opzo.train(inside, method=method, seed=3, momentum=0.5) as s_in:
        out = inside(x)
        sum(F.cross_entropy(out[t], y) for t in range(T)).backward()
    with opzo.train(outside, method=method, seed=3, momentum=0.5) as s_out:
        mem1, mem2 = outside.lif1.init_leaky(), outside.lif2.init_leaky()
        for t in range(T):
            out, mem1, mem2 = outside(x[t], mem1, mem2)
            F.cross_entropy(out, y).backward()
    for (name, a), (_, b) in zip(inside.named_parameters(), outside.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in s_in.feedback:
        torch.testing.assert_close(s_in.feedback[name], s_out.feedback[name], rtol=1e-5, atol=1e-7)
    assert inside.fc1.weight.grad.abs().max() > 0
