"""End to end on real data: scikit-learn's handwritten digits (8x8, bundled, offline), an snnTorch
network 64-200-200-10 trained with OPZO from scratch for 4 epochs learns far above chance (10%)."""
import snntorch as snn
import snntorch.utils
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import opzo_ext as opzo

T = 4


def digits():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    x = (x - x[train].mean()) / x[train].std()
    return x, y, train, test


def test_opzo_learns_digits():
    x, y, train, test = digits()
    torch.manual_seed(0)
    grad = snn.surrogate.sigmoid(slope=4)
    net = nn.Sequential(nn.Linear(64, 200), snn.Leaky(beta=0.5, init_hidden=True, spike_grad=grad),
                        nn.Linear(200, 200), snn.Leaky(beta=0.5, init_hidden=True, spike_grad=grad),
                        nn.Linear(200, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    with opzo.train(net, method="opzo", seed=0) as session:
        for epoch in range(4):
            order = train[torch.randperm(len(train), generator=g)]
            for i in range(0, len(order), 32):
                batch = order[i:i + 32]
                for t in range(T):
                    (F.cross_entropy(net(x[batch]), y[batch]) / T).backward()
                opt.step()
                opt.zero_grad()
                snntorch.utils.reset(net)
        assert session.layers == ["1", "3"]
        assert all(m.abs().max() > 0 for m in session.feedback.values())
    net.eval()
    with torch.no_grad():
        out = sum(net(x[test]) for _ in range(T))
    accuracy = (out.argmax(1) == y[test]).float().mean().item()
    assert accuracy > 0.85, f"OPZO reached only {accuracy:.3f} on digits"
