"""Discovery on residual graphs (call order would be wrong) and the noise distributions / alpha
schedule the session draws from."""
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from spikingjelly.activation_based.model import spiking_resnet
from torch import nn

import opzo_ext as opzo
from opzo_ext.noise import NoiseSource, linear_alpha, sample


class Residual(nn.Module):
    """sn_a feeds conv_b and, through a skip connection, sn_c; conv_b is *called* after sn_b_pre
    although it is fed by sn_a, so call order alone would pair them wrongly."""

    def __init__(self):
        super().__init__()
        self.conv_in = layer.Conv2d(2, 4, 3, padding=1)
        self.sn_a = neuron.LIFNode()
        self.conv_side = layer.Conv2d(2, 4, 1)
        self.sn_side = neuron.LIFNode()
        self.conv_b = layer.Conv2d(4, 4, 3, padding=1)
        self.sn_c = neuron.LIFNode()
        self.fc = layer.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        a = self.sn_a(self.conv_in(x))
        side = self.sn_side(self.conv_side(x))  # called between sn_a and conv_b
        out = self.conv_b(a) + side + a  # residual: a reaches sn_c without a synapse too
        return self.fc(torch.flatten(self.sn_c(out), 1))


def test_residual_mapping_follows_the_graph_not_the_call_order():
    net = Residual()
    with opzo.train(net, method="bp", example_input=torch.rand(2, 2, 4, 4)) as session:
        topo = session.topology
    assert topo.neurons == ["sn_a", "sn_side", "sn_c"]
    assert topo.presynaptic == {"conv_in": [], "conv_side": [], "conv_b": ["sn_a"], "fc": ["sn_c"]}
    assert topo.tap == ("synapse", "fc") and topo.hidden == ["sn_a", "sn_side", "sn_c"]


def test_spiking_resnet18_blocks_map_to_their_neurons():
    net = spiking_resnet.spiking_resnet18(spiking_neuron=neuron.LIFNode, surrogate_function=surrogate.Sigmoid(),
                                          detach_reset=True, num_classes=10)
    with opzo.train(net, method="opzo", example_input=torch.rand(2, 3, 32, 32)) as session:
        pre = session.topology.presynaptic
        assert pre["conv1"] == []  # the stem sees the image
        assert pre["layer1.0.conv1"] == ["sn1"]  # after the stem's maxpool
        assert pre["layer1.0.conv2"] == ["layer1.0.sn1"]
        assert pre["layer1.1.conv1"] == ["layer1.0.sn2"]
        assert pre["layer2.0.downsample.0"] == ["layer1.1.sn2"]  # the skip path's synapse
        assert pre["fc"] == ["layer4.1.sn2"]
        assert session.topology.tap == ("synapse", "fc")
        assert len(session.layers) == 17
        # [n_l, m]: the stem neuron sees 64 channels at 16x16 (stride-2 conv), 10 classes
        assert tuple(session.feedback["sn1"].shape) == (64 * 16 * 16, 10)
    functional.reset_net(net)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "sphere"])
def test_noise_has_zero_mean_unit_variance(distribution):
    like = torch.empty(4000, 50)
    z = sample(distribution, like.shape, like, torch.Generator().manual_seed(0))
    assert abs(z.mean().item()) < 0.01 and abs(z.var().item() - 1) < 0.02
    if distribution == "rademacher":
        assert set(z.unique().tolist()) == {-1.0, 1.0}
    if distribution == "sphere":  # every sample lies on the sphere of radius sqrt(n)
        torch.testing.assert_close(z.norm(dim=1), torch.full((4000,), 50 ** 0.5))


def test_antithetic_pairs_restart_with_each_sequence():
    src = NoiseSource("gaussian", antithetic=True, seed=3)
    like = torch.empty(2, 5)
    z = [src.draw(like, 1, fresh=(t == 0)) for t in range(4)]
    assert torch.equal(z[1], -z[0]) and torch.equal(z[3], -z[2]) and not torch.equal(z[2], -z[1])
    z_new = src.draw(like, 1, fresh=True)  # new sequence: a fresh z, not -z[3]
    assert not torch.equal(z_new, -z[3])
    seq = NoiseSource("gaussian", antithetic=True, seed=3).draw(torch.empty(4, 2, 5), 4, fresh=True)
    assert all(torch.equal(seq[t], z[t]) for t in range(4))  # multi-step draws the same z


def test_linear_alpha_schedule_drives_the_session():
    schedule = linear_alpha(0.2, 0.01, epochs=5)
    assert [round(schedule(e), 4) for e in range(6)] == [0.2, 0.1525, 0.105, 0.0575, 0.01, 0.01]
    net = nn.Sequential(layer.Linear(3, 4), neuron.LIFNode(), layer.Linear(4, 2))
    session = opzo.train(net, method="opzo", alpha=schedule)
    session.epoch = 2
    assert session.alpha == pytest.approx(0.105)
    with pytest.raises(opzo.ConfigError, match="positive"):
        opzo.train(net, alpha=linear_alpha(0.2, 0.0, epochs=3)).config.alpha_at(2)
