"""Health checks: each warning fires in a constructed failing case and stays quiet on healthy runs,
the counters do not change training, session.summary() describes the model, hooks go on close."""
from __future__ import annotations

import warnings

import pytest
import snntorch as snn
import snntorch.utils
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import opzo_ext as opzo
from opzo_ext.errors import HealthWarning

T = 4


def _boost(model: nn.Module, factor: float = 3.0) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(factor)
    return model


def snn_seq(threshold: float = 1.0, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return _boost(nn.Sequential(nn.Linear(10, 24), snn.Leaky(beta=0.5, threshold=threshold, init_hidden=True),
                                nn.Linear(24, 16), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(16, 4)))


class OutputNeurons(nn.Module):
    """snnTorch tutorial style: explicit states, a time loop inside forward, output neurons."""

    def __init__(self, out_threshold: float):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(10, 24), snn.Leaky(beta=0.5)
        reset = "none" if out_threshold == float("inf") else "subtract"  # subtracting inf * 0 gives NaN
        self.fc2, self.lif2 = nn.Linear(24, 4), snn.Leaky(beta=0.5, threshold=out_threshold, reset_mechanism=reset)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        mems = []
        for _ in range(T):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            _, mem2 = self.lif2(self.fc2(spk1), mem2)
            mems.append(mem2)
        return torch.stack(mems)


def data(batch: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 10, generator=g) * 2, torch.randint(0, 4, (batch,), generator=g)


def train_steps(net, session, steps: int, optimizer=None, x=None, y=None):
    """``steps`` time steps of the usual loop (a backward per step, a reset per sequence)."""
    x, y = data() if x is None else (x, y)
    optimizer = optimizer or torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with session:
            for _ in range(steps // T):
                snntorch.utils.reset(net)
                for _ in range(T):
                    F.cross_entropy(net(x), y).backward()
                optimizer.step()
                optimizer.zero_grad()
    return [str(w.message) for w in caught if issubclass(w.category, HealthWarning)]


def test_silent_hidden_layer_warns_once_naming_it_and_the_fix():
    net = snn_seq(threshold=100.0)  # layer '1' can never reach its threshold
    session = opzo.train(net, method="opzo", seed=0)
    messages = train_steps(net, session, 320)
    silent = [m for m in messages if "has not spiked in " in m]
    assert len(silent) == 1  # once, although the layer stays silent for 320 steps
    assert silent[0].startswith("Hidden layer '1' (Leaky) has not spiked in ")
    assert "lower its threshold, raise the input scale or the weight init of the synapses feeding it ('0')" in silent[0]
    assert "session.summary()" in silent[0]
    assert session.health.raised == messages
    # the synapse feeding the silent layer gets no surrogate derivative: its gradient is ~0
    grad = [m for m in messages if m.startswith("The weight gradient of '0.weight' (feeding hidden layer '1')")]
    assert len(grad) == 1 and "Layer '1' around it has not spiked lately (no input or no surrogate derivative): fix " \
        "that first. Otherwise " in grad[0]
    assert "silent for" in session.summary()


@pytest.mark.parametrize("threshold, warns", [(1e6, True), (float("inf"), False)])
def test_silent_output_neurons_warn_unless_a_membrane_readout(threshold, warns):
    """Output neurons that never spike are reported; an infinite threshold marks a membrane readout."""
    torch.manual_seed(0)
    net = _boost(OutputNeurons(threshold))
    x, y = data()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opzo.train(net, method="opzo", seed=0) as session:
            for _ in range(300 // T):  # T steps per forward, one backward per sequence
                F.cross_entropy(net(x).sum(0), y).backward()
                optimizer.step()
                optimizer.zero_grad()
    messages = [str(w.message) for w in caught if issubclass(w.category, HealthWarning)]
    assert session.topology.tap == ("neuron", "lif2")
    silent = [m for m in messages if "has not spiked in " in m]
    assert silent == ([silent[0]] if warns else [])
    if warns:
        assert silent[0].startswith("The output layer 'lif2' (Leaky) has not spiked in ")
        assert "feeding it ('fc2')" in silent[0]
    assert not [m for m in messages if "'lif1'" in m]


@pytest.mark.parametrize("method, adam", [("opzo", False), ("dfa", False), ("dkp", True), ("bp", True)])
def test_healthy_run_raises_no_warning(method, adam):
    """Past every threshold (silence 200 steps, gradient window, feedback check at 500 steps)."""
    net = snn_seq()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3) if adam else None
    session = opzo.train(net, method=method, seed=0, optimizer=optimizer)
    assert train_steps(net, session, 540, optimizer) == []
    health = session.health
    assert health.checks >= 15 and not health.raised
    assert set(health.neurons) == {"1", "3"} and all(s.rate > 0 for s in health.neurons.values())
    assert set(health.weights) == {"0.weight", "2.weight", "4.weight"} and health.weights["4.weight"].readout
    assert health.weights["0.weight"].eps == (1e-8 if adam else None)
    if method in ("opzo", "dfa", "dkp"):
        assert set(health.feedback_norms) == {"1", "3"} and min(health.feedback_norms.values()) > 0


def test_paper_feedback_scale_is_named_as_the_cause_of_tiny_hidden_gradients():
    """OPZO with feedback_scale="paper" holds alpha (1 - lam^k) of the Jacobian: 1e-4 of BP's scale
    here; the warning names the option that fixes it. The default scale raises nothing."""
    net = snn_seq()
    messages = train_steps(net, opzo.train(net, method="opzo", seed=0, feedback_scale="paper"), 320)
    about = [m for m in messages if m.startswith("The weight gradient of '0.weight'")]
    assert len(about) == 1 and "use feedback_scale='jacobian' (the default)" in about[0], messages
    net = snn_seq()
    assert train_steps(net, opzo.train(net, method="opzo", seed=0), 320) == []


@pytest.mark.parametrize("adam", [False, True])
def test_feedback_too_small_warns_against_the_readout_or_the_optimizers_eps(adam):
    """DKP with a vanishing learning rate keeps B ~1e-10: hidden gradients far below the readout's
    (no optimizer known: ratio rule) and below Adam's eps (optimizer=opt: eps rule only)."""
    net = snn_seq()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8) if adam else None
    session = opzo.train(net, method="dkp", seed=0, dkp_lr=1e-13, optimizer=optimizer)
    messages = train_steps(net, session, 320, optimizer)
    for param, layer_name in (("0.weight", "1"), ("2.weight", "3")):
        about = [m for m in messages if m.startswith(f"The weight gradient of '{param}' (feeding hidden layer "
                                                     f"'{layer_name}')")]
        assert len(about) == 1, messages
        if adam:
            assert "below the optimizer's eps=1e-08" in about[0] and "lower the optimizer's eps" in about[0]
        else:
            assert "times the readout's" in about[0] and "pass optimizer=opt" in about[0]
        assert "The feedback reaching it is too small" in about[0]
        assert "session.summary()" in about[0]
    assert len(messages) == 2  # no silent layer, no readout warning


def test_feedback_still_zero_after_500_steps_warns():
    """A frozen zero readout gives o~ = 0, so OPZO's M = z o~^T stays exactly zero."""
    net = snn_seq()
    with torch.no_grad():
        net[4].weight.zero_()
        net[4].bias.zero_()
    net[4].requires_grad_(False)
    session = opzo.train(net, method="opzo", seed=0)
    messages = train_steps(net, session, 560, torch.optim.SGD(net[:4].parameters(), lr=0.05))
    zero = [m for m in messages if "feedback matrix" in m]
    assert len(zero) == 2 and session.health.feedback_norms == {"1": 0.0, "3": 0.0}
    assert zero[0].startswith("The feedback matrix of hidden layer '1' (method 'opzo') is still ~0 (Frobenius norm "
                              "0.0e+00) after 500 steps")  # the first check past 500 steps, not before
    assert len(messages) == 2  # a frozen readout has no gradient to compare the hidden ones with
    assert "a readout whose output never varies (zero or frozen weights) keeps M at 0" in zero[0]
    assert zero[1].startswith("The feedback matrix of hidden layer '3'")


def test_checks_do_not_change_training_results():
    """Weights, feedback and torch's RNG after 64 steps are bit-identical with the checks on or off."""
    results = []
    for health in (True, False):
        net = snn_seq()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        session = opzo.train(net, method="opzo", seed=0, optimizer=optimizer, health=health)
        train_steps(net, session, 64, optimizer)
        assert (session.health.checks > 0) == health and (len(session.health.weights) == 3) == health
        results.append(({n: p.detach().clone() for n, p in net.named_parameters()},
                        {k: v.clone() for k, v in session.feedback.items()}, torch.get_rng_state()))
    (w0, m0, rng0), (w1, m1, rng1) = results
    assert all(torch.equal(w0[k], w1[k]) for k in w0) and all(torch.equal(m0[k], m1[k]) for k in m0)
    assert torch.equal(rng0, rng1)
    session = opzo.train(snn_seq(), method="opzo")
    session.health.enabled = False  # the other way to turn them off, before the first step
    train_steps(session.model, session, 8)
    assert not session.health.weights and session.health.checks == 0


def test_hooks_removed_on_close():
    net = snn_seq()
    params = list(net.parameters())
    session = opzo.train(net, method="opzo", seed=0)
    with session:
        snntorch.utils.reset(net)
        x, y = data()
        F.cross_entropy(net(x), y).backward()
        assert all(net[i].weight._post_accumulate_grad_hooks for i in (0, 2, 4))
        assert net[1]._forward_hooks and net._forward_pre_hooks
    assert all(not p._post_accumulate_grad_hooks for p in params)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    snntorch.utils.reset(net)
    F.cross_entropy(net(x), y).backward()  # plain BPTT now: no hook fires into the closed session
    assert session.health._pending == [] and all(p.grad is not None for p in net.parameters())
    assert any(not torch.equal(before[n], p.grad) for n, p in net.named_parameters())


def test_summary_of_a_snntorch_model():
    net = snn_seq()
    session = opzo.train(net, method="opzo", seed=0, momentum=0.99)
    text = session.summary()
    assert "layers: not discovered yet" in text and "example_input=" in text and "momentum=0.99" in text
    assert repr(session) == "Session(method='opzo', model=Sequential, layers not discovered yet, steps=0)"
    train_steps(net, session, 40)
    text = session.summary()
    for line in ("opzo_ext session on Sequential (732 trainable parameters; not open, 40 steps trained, epoch 0)",
                 "method: opzo (", "hidden layers (2):",
                 "  '1' Leaky: 24 neurons per sample", "      fed by '0' Linear weight [24, 10]", "      feeds '2'",
                 "      feedback matrix [24, 4] float32, 384 B",
                 "  '3' Leaky: 16 neurons per sample", "      fed by '2' Linear weight [16, 24]",
                 "      feedback matrix [16, 4] float32, 256 B",
                 "readout: '4' Linear weight [4, 16]", "feedback memory: 640 B in 2 layer(s)", "steps trained: 40",
                 "health: 1 checks", "no warnings"):
        assert line in text, (line, text)
    assert "firing rate 0." in text and "sampled calls" in text
    for name in ("1", "3"):  # the share of each layer's feedback that OPZO sends (feedback_scale="jacobian")
        rho = float(session.method.gain.reliability[name])
        assert 0.0 <= rho <= 1.0 and f"B, reliability {rho:.2f} (share of its feedback sent)" in text
    paper_net = snn_seq()
    paper = opzo.train(paper_net, method="opzo", feedback_scale="paper", seed=0)
    train_steps(paper_net, paper, 40)
    assert "feedback matrix [24, 4] float32, 384 B\n" in paper.summary()  # no reliability: the paper's M as is
    assert repr(session) == ("Session(method='opzo', model=Sequential, hidden=['1', '3'], feedback=640 B, "
                             "steps=40, warnings=0)")
    torch.manual_seed(0)
    tutorial = _boost(OutputNeurons(1.0))
    with opzo.train(tutorial, method="bp", example_input=data()[0]) as session:
        text = session.summary()
    assert "readout: output neurons 'lif2' Leaky (4 per sample), fed by 'fc2' Linear weight [4, 24]" in text
    assert "feedback memory: none (method 'bp' keeps no feedback matrices)" in text
    assert "firing rate not sampled yet" in text


def test_summary_of_a_spikingjelly_multistep_conv_model():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(), layer.MaxPool2d(2), layer.Flatten(),
                        layer.Linear(64, 16), neuron.LIFNode(), layer.Linear(16, 4))
    functional.set_step_mode(net, "m")
    example = torch.rand(T, 2, 1, 8, 8)
    with opzo.train(net, method="opzo", example_input=example) as session:
        text = session.summary()
    for line in ("  '1' LIFNode: 256 neurons per sample", "      fed by '0' Conv2d weight [4, 1, 3, 3]",
                 "      feeds '4'", "      feedback matrix [256, 4] float32, 4.0 KB",
                 "  '5' LIFNode: 16 neurons per sample", "      fed by '4' Linear weight [16, 64]",
                 "      feedback matrix [16, 4] float32, 256 B", "readout: '6' Linear weight [4, 16]",
                 "feedback memory: 4.2 KB in 2 layer(s)"):
        assert line in text, (line, text)
    with opzo.train(net, method="opzo", feedback_matrix="channel", example_input=example) as session:
        assert "      feedback matrix [4, 4] float32, 64 B" in session.summary()
    with opzo.train(net, method="opzo", feedback_matrix="lowrank", example_input=example) as session:
        assert "      feedback matrix rank-0 factors of [256, 4] float32, 0 B" in session.summary()


def test_feedback_held_back_by_opzo_is_explained_with_its_reliability():
    """With feedback_scale="jacobian" a layer whose M is still mostly noise gets its feedback shrunk;
    when that makes its gradient too small, the warning says so and gives the reliability."""
    net = snn_seq()
    session = opzo.train(net, method="opzo", seed=0)
    train_steps(net, session, 8)
    session.method.gain.reliability["1"] = torch.tensor(0.02)  # as if M of layer '1' were still noise
    stats = session.health.weights["0.weight"]
    text = session.health._cause(stats, "raise this layer's learning rate")
    assert text.startswith("OPZO holds back this layer's feedback while its M is mostly noise (estimated "
                           "reliability 0.02") and "feedback_scale='corrected'" in text


def _wide(seed: int = 0) -> nn.Sequential:
    """A first hidden layer of 2000 neurons: with batch 8, OPZO's M of it stays mostly noise."""
    torch.manual_seed(seed)
    return _boost(nn.Sequential(nn.Linear(10, 2000), snn.Leaky(beta=0.5, init_hidden=True),
                                nn.Linear(2000, 16), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(16, 4)))


def test_feedback_held_back_for_long_warns_naming_the_layer_and_local_learning():
    net = _wide()
    session = opzo.train(net, method="opzo", seed=0)
    assert train_steps(net, session, 40) == []  # under held_after=50 updates of M: not yet judged
    assert float(session.method.gain.reliability["1"]) < 0.1
    messages = train_steps(net, session, 200)
    held = [m for m in messages if m.startswith("OPZO sends hidden layer")]
    assert len(held) == 1 and held[0].startswith("OPZO sends hidden layer '1' only ") and "2,000 values per sample" in held[0]
    assert "local=True" in held[0] and "session.summary()" in held[0]
    assert float(session.method.gain.reliability["3"]) > 0.5 and "'3'" not in held[0]  # the small layer is fine
    assert train_steps(net, session, 100) == []  # once per layer


def test_feedback_held_back_is_quiet_on_a_small_network_and_off_without_the_shrinkage():
    net = snn_seq()
    session = opzo.train(net, method="opzo", seed=0)
    assert train_steps(net, session, 296) == []
    assert min(float(r) for r in session.method.gain.reliability.values()) > 0.5
    for scale in ("corrected", "paper"):  # no reliability, no shrinkage: nothing held back
        net = _wide()
        session = opzo.train(net, method="opzo", seed=0, feedback_scale=scale)
        assert not [m for m in train_steps(net, session, 296) if m.startswith("OPZO sends")]


def test_summary_gives_the_reliability_of_matrices_fed_by_the_intermediate_readout():
    """With igl=, the layers before it take their M from the intermediate readout's OPZO, whose
    reliability the summary shows as well."""
    net = snn_seq()
    session = opzo.train(net, method="opzo", seed=0, igl="3", local=0.01)
    train_steps(net, session, 40)
    rho = float(session.igl_method.gain.reliability["1"])
    assert "1" not in session.method.gain.reliability  # layer '1' is the intermediate readout's
    assert f"(from the intermediate readout at '3'), reliability {rho:.2f} (share of its feedback sent)" in session.summary()
