"""BatchNorm statistics and the session's noise: opzo.update_bn against torch's own update_bn
(torch.optim.swa_utils) on clean forward passes, the session's own recomputation (recompute_bn)
against opzo.update_bn on the same inputs, and the warning when the noisy statistics are kept."""
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


def train(net, method: str, n: int = 5, **options) -> list[str]:
    """``n`` sequences of T single steps inside a session; the health warnings raised."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opzo.train(net, method=method, seed=0, **options) as session:
            for x, y in batches(n):
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
    train(net, "opzo", alpha=0.5, recompute_bn=False)
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


def step_loop(m, x):
    return [m(x) for _ in range(T)]


@pytest.mark.parametrize("method", ["opzo", "zo"])
def test_the_session_recomputes_the_statistics_on_close_from_its_last_sequences(method):
    """recompute_bn (default): on close, the BatchNorm statistics are those opzo.update_bn computes
    from the inputs of the last SEQUENCES training sequences; training itself is unchanged."""
    n = opzo.batchnorm.SEQUENCES + 2
    net, kept = conv_bn_net(), conv_bn_net()
    assert not [m for m in train(net, method, n=n) if m.startswith("BatchNorm")]  # nothing to warn about
    train(kept, method, n=n, recompute_bn=False)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), kept.parameters()))
    noisy = stats(kept)
    opzo.update_bn(kept, batches(n)[-opzo.batchnorm.SEQUENCES:], forward=step_loop)
    assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(kept)))
    assert not torch.equal(stats(net)[4], noisy[4])  # the noisy variance was replaced


def test_evaluating_inside_the_session_recomputes_the_statistics_first():
    """The first forward in eval mode after training steps replays the kept sequences (once: a
    second eval forward finds them fresh); training again makes them stale."""
    net, kept = conv_bn_net(), conv_bn_net()
    data = batches(3)
    (x0, _), = batches(1, seed=5)

    def sequences(model, part):
        for x, y in part:
            for _ in range(T):
                F.cross_entropy(model(x), y).backward()
            functional.reset_net(model)

    with opzo.train(kept, method="opzo", seed=0, recompute_bn=False):  # the same training, noisy statistics
        sequences(kept, data[:2])
        halfway = conv_bn_net()
        halfway.load_state_dict(kept.state_dict())  # a copy without the session's hooks
        sequences(kept, data[2:])
    opzo.update_bn(halfway, data[:2], forward=step_loop)
    opzo.update_bn(kept, data, forward=step_loop)
    with opzo.train(net, method="opzo", seed=0) as session:
        sequences(net, data[:2])
        net.eval()
        with torch.no_grad():
            net(x0)
            assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(halfway)))
            net(x0)
        assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(halfway)))  # not recomputed again
        functional.reset_net(net)
        net.train()
        sequences(net, data[2:])
        assert session.clean_bn.stale
    assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(kept)))
    assert not session.clean_bn.sequences  # the kept inputs are released on close


@pytest.mark.parametrize("method", ["opzo", "zo"])
def test_keeping_the_noisy_statistics_warns_once_about_batchnorm_after_the_noise(method):
    messages = [m for m in train(conv_bn_net(), method, recompute_bn=False) if m.startswith("BatchNorm")]
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
        assert session.topology.norms == ["4"] and session.clean_bn is not None
        assert "BatchNorm after the noise: '4', running statistics recomputed without it from the last 8" in \
            session.summary()
    with opzo.train(conv_bn_net(), method="opzo", example_input=batches(1)[0][0], recompute_bn=False) as session:
        assert "'4', running statistics kept with the noise: call opzo.update_bn" in session.summary()
    with opzo.train(conv_bn_net(), method="dfa", example_input=batches(1)[0][0]) as session:
        assert session.clean_bn is None  # no noise: nothing to recompute


def test_leaving_the_session_on_an_error_runs_no_forward_pass():
    """An exception inside the block leaves the statistics as training left them: no replay on the
    way out (it could raise again, over the user's error)."""
    net, kept = conv_bn_net(), conv_bn_net()
    train(kept, "opzo", n=2, recompute_bn=False)
    with pytest.raises(RuntimeError, match="a data error"):
        with opzo.train(net, method="opzo", seed=0) as session:
            optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
            for x, y in batches(2):
                for _ in range(T):
                    F.cross_entropy(net(x), y).backward()
                optimizer.step()
                optimizer.zero_grad()
                functional.reset_net(net)
            raise RuntimeError("a data error")
    assert all(torch.equal(a, b) for a, b in zip(stats(net), stats(kept)))  # the noisy statistics
    assert not session.clean_bn.sequences


def test_an_evaluation_under_inference_mode_recomputes_them_too():
    net = conv_bn_net()
    (x, y), = batches(1)
    with opzo.train(net, method="opzo", seed=0, alpha=0.5):
        for _ in range(T):
            F.cross_entropy(net(x), y).backward()
        functional.reset_net(net)
        noisy = stats(net)
        net.eval()
        with torch.inference_mode():
            net(x)
        functional.reset_net(net)
    assert not torch.equal(stats(net)[4], noisy[4])


class LoopInForward(nn.Module):
    """The time loop inside ``forward``, each neuron's state created per call (snnTorch tutorial 5's
    style), BatchNorm after the first neuron."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.lif1 = nn.Conv2d(1, 4, 3, padding=1), snn.Leaky(beta=0.5)
        self.conv2, self.bn2, self.lif2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), snn.Leaky(beta=0.5)
        self.fc = nn.Linear(6 * 8 * 8, 3)

    def forward(self, x):
        mem1, mem2, out = self.lif1.init_leaky(), self.lif2.init_leaky(), []
        for _ in range(T):
            spk1, mem1 = self.lif1(self.conv1(x), mem1)
            spk2, mem2 = self.lif2(self.bn2(self.conv2(spk1)), mem2)
            out.append(self.fc(spk2.flatten(1)))
        return torch.stack(out)


def test_a_time_loop_inside_forward_keeps_one_call_per_sequence():
    n = opzo.batchnorm.SEQUENCES + 2
    nets = []
    for recompute in (True, False):
        net = LoopInForward()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        with opzo.train(net, method="opzo", seed=0, recompute_bn=recompute) as session:
            for x, y in batches(n):
                F.cross_entropy(net(x).mean(0), y).backward()
                optimizer.step()
                optimizer.zero_grad()
            if recompute:
                assert [len(s) for s in session.clean_bn.sequences] == [1] * opzo.batchnorm.SEQUENCES
        nets.append(net)
    opzo.update_bn(nets[1], batches(n)[-opzo.batchnorm.SEQUENCES:])
    assert all(torch.equal(a, b) for a, b in zip(stats(nets[0]), stats(nets[1])))


def test_a_state_never_reset_is_kept_in_bounded_sequences(monkeypatch):
    monkeypatch.setattr(opzo.batchnorm, "MAX_CALLS", 3)
    net = conv_bn_net()
    with opzo.train(net, method="opzo", seed=0) as session:
        for x, y in batches(10):  # no reset between the batches: one endless sequence
            for _ in range(T):
                F.cross_entropy(net(x), y).backward()
        kept = [len(s) for s in session.clean_bn.sequences]
    assert kept == [3] * 7 + [1]  # 40 calls in groups of 3; the last 8 groups
