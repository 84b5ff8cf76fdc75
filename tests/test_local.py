"""Local learning plumbing: readouts owned by the session, handed to the optimizer, saved."""
import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from torch import nn

import opzo_ext as opzo


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(6, 3))


def test_readouts_join_the_optimizer_and_the_state_dict():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(2, 4) * 3, torch.tensor([0, 2])
    with opzo.train(model, method="opzo", local=True, optimizer=opt, seed=0) as session:
        with pytest.raises(opzo.OpzoError, match="after the first training step"):
            list(session.parameters())
        loss = F.cross_entropy(model(x), y) + session.local_loss(y)
        loss.backward()
        readout = session.local_readouts["1"]
        assert len(opt.param_groups) == 2 and opt.param_groups[1]["params"][0] is readout.weight
        before = readout.weight.detach().clone()
        opt.step()
        assert not torch.equal(before, readout.weight)  # trained by the user's optimizer
        state = session.state_dict()
    assert torch.equal(state["local"]["1.weight"], readout.weight)
    other = net()
    with opzo.train(other, method="opzo", local=0.01, example_input=x) as resumed:
        resumed.load_state_dict(state)
        assert torch.equal(resumed.local_readouts["1"].weight, readout.weight)
        assert model[0].weight.shape == other[0].weight.shape


def test_local_loss_scale_and_errors():
    model = net()
    x, y = torch.rand(2, 4) * 3, torch.tensor([0, 2])
    seen = []
    model[1].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with opzo.train(model, method="bp", local=0.25, seed=0) as session:
        model(x)
        value = session.local_loss(y)
        expected = 0.25 * F.cross_entropy(session.local_readouts["1"](seen[-1]), y)
        torch.testing.assert_close(value, expected)
        assert value.requires_grad
        assert session.local_loss(y) == 0  # consumed: nothing new since the last call
    with opzo.train(net(), method="opzo") as session:
        with pytest.raises(opzo.OpzoError, match="local=0.01"):
            session.local_loss(y)
    with pytest.raises(opzo.ConfigError, match="local="):
        opzo.TrainConfig(local=-1)
