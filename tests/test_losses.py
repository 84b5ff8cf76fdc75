"""The instantaneous loss of OTTT/OPZO and prediction by the output accumulated over time."""
import math

import pytest
import torch
import torch.nn.functional as F

from opzo_ext.losses import Accumulator, instantaneous_loss, predict

O = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
Y = [1, 2]


def hand_loss(o, y, l, steps):
    """((1-l) CE + l MSE) / steps, written out with math.exp."""
    B, C = len(o), len(o[0])
    ce = sum(-o[b][y[b]] + math.log(sum(math.exp(v) for v in o[b])) for b in range(B)) / B
    mse = sum((o[b][c] - (1.0 if c == y[b] else 0.0)) ** 2 for b in range(B) for c in range(C)) / (B * C)
    return ((1 - l) * ce + l * mse) / steps


@pytest.mark.parametrize("l,steps", [(0.05, 6), (0.001, 10), (0.0, 1), (1.0, 2)])
def test_value_matches_hand_computation(l, steps):
    loss = instantaneous_loss(torch.tensor(O, dtype=torch.float64), torch.tensor(Y), mse_weight=l, steps=steps)
    assert loss.item() == pytest.approx(hand_loss(O, Y, l, steps), rel=1e-12)


def test_default_weight_and_plain_ce():
    o, y = torch.tensor(O), torch.tensor(Y)
    assert instantaneous_loss(o, y).item() == pytest.approx(hand_loss(O, Y, 0.05, 1), rel=1e-6)
    torch.testing.assert_close(instantaneous_loss(o, y, mse_weight=0.0, steps=4), F.cross_entropy(o, y) / 4)


@pytest.mark.parametrize("l", [0.05, 0.3])
def test_gradient(l):
    """dL/do = ((1-l)(softmax(o) - onehot)/B + l * 2 (o - onehot)/(B*C)) / steps."""
    g = torch.Generator().manual_seed(0)
    B, C, steps = 5, 7, 3
    o = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(C, (B,), generator=g)
    instantaneous_loss(o, y, mse_weight=l, steps=steps).backward()
    onehot = F.one_hot(y, C).double()
    expected = ((1 - l) * (o.detach().softmax(-1) - onehot) / B + l * 2 * (o.detach() - onehot) / (B * C)) / steps
    torch.testing.assert_close(o.grad, expected, rtol=1e-12, atol=1e-14)


def test_invalid_arguments():
    o, y = torch.tensor(O), torch.tensor(Y)
    with pytest.raises(ValueError, match="mse_weight"):
        instantaneous_loss(o, y, mse_weight=1.5)
    with pytest.raises(ValueError, match="steps"):
        instantaneous_loss(o, y, steps=0)


def test_prediction_uses_the_sum_over_time():
    # step outputs chosen so that the last step alone, and the majority of per-step argmaxes,
    # disagree with the argmax of the sum
    outs = [torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    acc = Accumulator()
    for o in outs:
        acc.add(o)
    assert acc.steps == 3
    torch.testing.assert_close(acc.value, torch.tensor([[2.0, 5.0, 0.0]]))
    assert acc.predict().tolist() == [1]
    assert outs[-1].argmax(-1).tolist() == [0]
    assert predict(outs).tolist() == [1]
    assert predict(torch.stack(outs)).tolist() == [1]
    acc.reset()
    assert acc.value is None and acc.steps == 0
    with pytest.raises(RuntimeError):
        acc.predict()


def test_accumulator_detaches_and_does_not_alias():
    o = torch.tensor([[1.0, 2.0]], requires_grad=True)
    acc = Accumulator().add(o * 1.0)
    assert not acc.value.requires_grad
    first = torch.tensor([[3.0, 1.0]])
    acc = Accumulator().add(first)
    acc.add(torch.tensor([[0.0, 5.0]]))
    assert first.tolist() == [[3.0, 1.0]]  # the first output is not modified in place
