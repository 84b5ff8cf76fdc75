"""Every bad input raises an error whose message names the problem (and the fix)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snntorch as snn
import snntorch.utils
from spikingjelly.activation_based import layer, neuron

import opzo_ext as opzo


def tiny_snn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(8, 2))


# ------------------------------------------------------------------------ TrainConfig

@pytest.mark.parametrize("field, value, allowed", [
    ("method", "foo", r"'bp', 'opzo', 'dfa', 'dkp', 'zo'"),
    ("method", "OPZO", r"'bp', 'opzo', 'dfa', 'dkp', 'zo'"),
    ("noise", "uniform", r"'gaussian', 'rademacher', 'sphere'"),
    ("inject", "middle", r"'after', 'before'"),
    ("trace", "eligibility", r"'trace', 'spike'"),
])
def test_unknown_choice(field, value, allowed):
    with pytest.raises(opzo.ConfigError, match=rf"{field}='{value}'.*{allowed}"):
        opzo.train(tiny_snn(), **{field: value})
    with pytest.raises(ValueError):  # ConfigError is a ValueError too
        opzo.TrainConfig(**{field: value})


@pytest.mark.parametrize("momentum", [1.0, 1.5, -0.1])
def test_momentum_out_of_range(momentum):
    with pytest.raises(opzo.ConfigError, match=rf"momentum={momentum}.*\[0, 1\)"):
        opzo.train(tiny_snn(), momentum=momentum)


@pytest.mark.parametrize("alpha", [0, 0.0, -0.2])
def test_alpha_not_positive(alpha):
    with pytest.raises(opzo.ConfigError, match=rf"alpha={alpha}.*positive number or a function"):
        opzo.train(tiny_snn(), alpha=alpha)


def test_alpha_schedule_turning_nonpositive():
    net = tiny_snn()
    with opzo.train(net, method="opzo", alpha=lambda epoch: 0.1 - 0.1 * epoch) as session:
        net(torch.rand(2, 4) * 3).sum().backward()
        session.epoch = 1
        with pytest.raises(opzo.ConfigError, match=r"alpha schedule gave 0\.0 at epoch 1"):
            net(torch.rand(2, 4) * 3).sum().backward()


def test_method_none_without_local_learning_says_what_it_is_for():
    with pytest.raises(opzo.ConfigError, match=r"method='none'.*control for local learning: pass local=True"):
        opzo.train(tiny_snn(), method="none")
    assert opzo.train(tiny_snn(), method="none", local=True).config.method == "none"


def test_trace_lambda_out_of_range():
    with pytest.raises(opzo.ConfigError, match=r"trace_lambda=1\.5.*\[0, 1\]"):
        opzo.train(tiny_snn(), trace_lambda=1.5)


def test_config_and_options_together():
    with pytest.raises(TypeError, match="either config="):
        opzo.train(tiny_snn(), config=opzo.TrainConfig(), alpha=0.1)


# ------------------------------------------------------------------------ the model

def test_not_a_module():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*function"):
        opzo.train(lambda x: x)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*Tensor"):
        opzo.train(torch.zeros(3))


def test_model_without_spiking_neurons():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(opzo.UnsupportedModelError, match=r"No spiking neuron found in Sequential"):
        opzo.train(mlp)


class Wrapper(nn.Module):
    """A model around one neuron module named ``rec``; its forward must never run."""

    def __init__(self, rec: nn.Module):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rec = rec
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        raise AssertionError("opzo.train ran the model's forward before rejecting it")


@pytest.mark.parametrize("make, kind, reason", [
    (lambda: snn.LeakyParallel(4, 4), "LeakyParallel", "whole sequence in one call"),
    (lambda: snn.StateLeaky(beta=0.5, channels=4), "StateLeaky", "whole sequence in one call"),
    (lambda: snn.RLeaky(beta=0.5, linear_features=4), "RLeaky", "recurrent synapse is inside the neuron"),
])
def test_unsupported_snntorch_neurons(make, kind, reason):
    with pytest.raises(opzo.UnsupportedModelError, match=rf"'rec' \({kind}\).*{reason}.*snntorch\.Leaky"):
        opzo.train(Wrapper(make()))  # raised by train() itself, before any forward


def test_snntorch_deltaleaky_is_refused_although_a_leaky_subclass():
    delta = snn.DeltaLeaky(beta=0.5)
    try:
        with pytest.raises(opzo.UnsupportedModelError, match=r"'rec' \(DeltaLeaky\).*not buffers"):
            opzo.train(Wrapper(delta))
    finally:  # snnTorch registers every neuron globally; a live DeltaLeaky breaks snntorch.utils.reset
        snn.SpikingNeuron.instances.remove(delta)


def test_unsupported_neuron_next_to_supported_ones():
    net = nn.Sequential(nn.Linear(4, 4), snn.Leaky(beta=0.5, init_hidden=True),
                        nn.Linear(4, 4), snn.RLeaky(beta=0.5, linear_features=4, init_hidden=True),
                        nn.Linear(4, 2))
    with pytest.raises(opzo.UnsupportedModelError, match=r"'3' \(RLeaky\)"):
        opzo.train(net, method="bp")


def test_spikingjelly_psn_next_to_lif_is_refused():
    """PSN is a plain nn.Module (no MemoryModule): it must be named, not treated as an operation."""
    net = nn.Sequential(nn.Linear(4, 4), neuron.LIFNode(), nn.Linear(4, 4), neuron.PSN(T=4), nn.Linear(4, 2))
    with pytest.raises(opzo.UnsupportedModelError, match=r"'3' \(PSN\).*whole sequence at once"):
        opzo.train(net)


def test_spikingjelly_otttlifnode():
    with pytest.raises(opzo.UnsupportedModelError, match=r"'rec' \(OTTTLIFNode\).*use neuron\.LIFNode"):
        opzo.train(Wrapper(neuron.OTTTLIFNode()))


class CalledTwice(nn.Module):
    """Applies the same hidden Leaky twice in one step."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.readout = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.lif = snn.Leaky(beta=0.5, init_hidden=True)

    def forward(self, x):
        return self.readout(self.lif(self.fc2(self.lif(self.fc1(x)))))


@pytest.mark.parametrize("method", ["opzo", "dfa", "zo"])
def test_hidden_neuron_called_twice_in_one_step(method):
    net = CalledTwice()
    with opzo.train(net, method=method):
        with pytest.raises(opzo.OpzoError, match=r"'lif' was called twice in one time step"):
            net(torch.rand(2, 4)).sum().backward()


class SJCalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.readout = layer.Linear(4, 8), layer.Linear(8, 8), layer.Linear(8, 2)
        self.lif = neuron.LIFNode()

    def forward(self, x):
        return self.readout(self.lif(self.fc2(self.lif(self.fc1(x)))))


def test_spikingjelly_neuron_called_twice_in_one_step():
    net = SJCalledTwice()
    with opzo.train(net, method="opzo"):
        with pytest.raises(opzo.OpzoError, match="called twice"):
            net(torch.rand(2, 4)).sum().backward()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.lif = snn.Leaky(beta=0.5, init_hidden=True)
        self.head_a, self.head_b = nn.Linear(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = self.lif(self.fc(x))
        return self.head_a(h), self.head_b(h)


@pytest.mark.parametrize("method", ["bp", "opzo"])
def test_two_readout_heads(method):
    net = TwoHeads()
    with opzo.train(net, method=method):
        with pytest.raises(opzo.UnsupportedModelError, match=r"\['head_a', 'head_b'\].*one readout"):
            net(torch.rand(2, 4))
    with pytest.raises(opzo.UnsupportedModelError, match="one readout"):  # at entry with example_input
        with opzo.train(net, method=method, example_input=torch.rand(2, 4)):
            pass


def test_output_not_depending_on_any_layer():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(4, 4), snn.Leaky(beta=0.5, init_hidden=True)

        def forward(self, x):
            self.lif(self.fc(x))
            return x * 2

    net = Constant()
    with opzo.train(net, method="opzo"):
        with pytest.raises(opzo.UnsupportedModelError, match="needs a readout layer"):
            net(torch.rand(2, 4))


# ------------------------------------------------------------------------ the loop

def test_zo_works_with_autograd_grad():
    """ZO reads each sample's loss from session.loss, not from a patched torch.autograd.backward:
    torch.autograd.grad gives the gradients backward() gives."""
    x, y = torch.rand(2, 4) * 3, torch.tensor([0, 1])
    grads = []
    for use_grad in (False, True):
        net = tiny_snn()
        with opzo.train(net, method="zo", seed=0) as session:
            snntorch.utils.reset(net)
            loss = session.loss(F.cross_entropy(net(x), y, reduction="none"))
            params = list(net.parameters())
            if use_grad:
                grads.append(torch.autograd.grad(loss, params))
            else:
                loss.backward()
                grads.append([p.grad for p in params])
        assert torch.autograd.backward.__module__ == "torch.autograd"  # torch itself untouched
    for g_backward, g_grad in zip(*grads):
        assert torch.equal(g_backward, g_grad)




def test_forward_in_eval_mode_with_gradients_warns_once():
    net = tiny_snn()
    with opzo.train(net, method="opzo", seed=0):
        net(torch.rand(2, 4) * 3)  # training step: attaches
        net.eval()
        with pytest.warns(UserWarning, match=r"eval mode.*model\.train\(\)"):
            net(torch.rand(2, 4) * 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net(torch.rand(2, 4) * 3)  # only once
            with torch.no_grad():
                net(torch.rand(2, 4) * 3)
