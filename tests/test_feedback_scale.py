"""``feedback_scale``: OPZO's feedback estimates the Jacobian itself ("jacobian", the default), so
hidden-layer gradients are on online BP's scale from the first steps; the paper's formulation
("paper") holds ``alpha (1 - lam^k)`` of it. The exact formulas are in ``test_math.py``."""
import pytest
import snntorch as snn
import snntorch.utils
import torch
import torch.nn.functional as F
from snntorch import surrogate
from torch import nn

import opzo_ext as opzo

T = 4


def make_net():
    torch.manual_seed(0)
    grad = surrogate.sigmoid(slope=4)
    return nn.Sequential(nn.Linear(20, 40), snn.Leaky(beta=0.5, init_hidden=True, spike_grad=grad),
                         nn.Linear(40, 40), snn.Leaky(beta=0.5, init_hidden=True, spike_grad=grad),
                         nn.Linear(40, 4))


def batches(n=25):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(20, 4, generator=gen)
    xs = [torch.randn(64, 20, generator=gen) * 1.5 for _ in range(n)]
    return [(x, (x @ w).argmax(1)) for x in xs]


def weight_grads(method, data, **options):
    """Hidden weight gradients of every batch (weights fixed: nothing is stepped)."""
    net, out = make_net(), []
    with opzo.train(net, method=method, seed=0, health=False, **options):
        for x, y in data:
            for _ in range(T):
                (F.cross_entropy(net(x), y) / T).backward()
            out.append({n: net.get_parameter(n).grad.clone() for n in ("0.weight", "2.weight")})
            net.zero_grad()
            snntorch.utils.reset(net)
    return out


def test_jacobian_scale_puts_hidden_gradients_on_bp_scale_and_paper_scale_far_below():
    """Weights fixed, 25 batches of T = 4 steps. "corrected" (the bias correction alone) gives hidden
    gradients of BP's size; "jacobian" (the default) shrinks them by M's reliability: a layer whose M
    is still mostly noise (the first, cosine to BP ~0.15 here) is held back, the layer below the
    readout (cosine ~0.99) gets BP's size from the first batches; "paper" is 1e-4 of it."""
    data = batches()
    bp = weight_grads("bp", data)
    corrected = weight_grads("opzo", data, feedback_scale="corrected")
    jacobian = weight_grads("opzo", data)  # the default
    paper = weight_grads("opzo", data, feedback_scale="paper")

    def ratio(grads, k, name):
        return float(grads[k][name].norm() / bp[k][name].norm())

    for k in (4, 24):  # after 20 and 100 updates of M
        for name in ("0.weight", "2.weight"):
            assert 0.3 < ratio(corrected, k, name) < 3.0, (k, name, ratio(corrected, k, name))
            assert ratio(paper, k, name) < 1e-2
            assert ratio(jacobian, k, name) <= ratio(corrected, k, name) * (1 + 1e-6)  # shrunk, never amplified
            for other in (jacobian, paper):  # the same direction: only the size differs per layer and step
                if other[k][name].abs().max() > 0:
                    cos = F.cosine_similarity(corrected[k][name].flatten(), other[k][name].flatten(), 0)
                    assert float(cos) > 0.999
        assert 0.5 < ratio(jacobian, k, "2.weight") < 2.0
    assert ratio(jacobian, 4, "0.weight") < 0.1 * ratio(corrected, 4, "0.weight")  # held back while noisy
    assert ratio(jacobian, 24, "0.weight") > 0  # and let through as M improves
    cos = F.cosine_similarity(jacobian[24]["2.weight"].flatten(), bp[24]["2.weight"].flatten(), 0)
    assert float(cos) > 0.9  # BP's direction on the layer below the readout


def test_resuming_with_another_feedback_scale_is_refused():
    net, data = make_net(), batches(1)
    with opzo.train(net, method="opzo", seed=0, feedback_scale="paper") as session:
        F.cross_entropy(net(data[0][0]), data[0][1]).backward()
        state = session.state_dict()
    snntorch.utils.reset(net)
    with opzo.train(net, method="opzo", seed=0) as session:
        with pytest.raises(opzo.OpzoError, match="feedback_scale='paper'.*Open the session with feedback_scale='paper'"):
            session.load_state_dict(state)
    legacy = dict(state, config={k: v for k, v in state["config"].items() if k != "feedback_scale"})
    with opzo.train(net, method="opzo", seed=0, feedback_scale="paper") as session:
        session.load_state_dict(legacy)  # states saved before the option existed are the paper's
        assert session.method.gain.updates == {"1": 1, "3": 1}


def test_feedback_scale_must_be_a_known_choice():
    with pytest.raises(opzo.ConfigError, match="feedback_scale='bias'.*'jacobian', 'corrected', 'paper'"):
        opzo.TrainConfig(feedback_scale="bias")


def test_a_float64_model_trains_with_the_jacobian_scale_and_health_checks():
    """|M|^2 and the health checks' gradient norms accumulate in float64 for a float64 model (they
    asked torch for a float32 norm of float64 tensors, which it refuses)."""
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(20, 40), neuron.LIFNode(), layer.Linear(40, 40), neuron.LIFNode(),
                        layer.Linear(40, 4)).double()
    data = batches(20)  # 80 steps: the health checks sample about one in 25
    with opzo.train(net, method="opzo", seed=0) as session:
        for x, y in data:
            for _ in range(T):
                F.cross_entropy(net(4 * x.double()), y).backward()
            functional.reset_net(net)
        summary = session.summary()
    assert net[0].weight.grad.dtype == torch.float64 and net[0].weight.grad.abs().max() > 0
    assert session.health.checks > 0 and "reliability" in summary
