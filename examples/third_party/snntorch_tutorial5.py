#!/usr/bin/env python
"""snnTorch tutorial 5, "Training Spiking Neural Networks with snnTorch", as a test bed.

Source: github.com/jeshraghian/snntorch, ``examples/tutorial_5_FCN.ipynb`` (docs page
"Tutorial 5 - Training Spiking Neural Networks with snntorch").  The setup is written from the
tutorial's description; no code was copied.

Same as the tutorial: a fully connected network 784-1000-10 of ``snn.Leaky(beta=0.95)`` neurons
in a custom ``nn.Module`` whose ``forward`` runs the ``num_steps=25`` time steps itself (the
states start from ``init_leaky()``) and returns the stacked output spikes and membranes; the
static image is the input current at every step; the loss is ``nn.CrossEntropyLoss()`` of the
output membrane at every step, summed over the steps, with one backward per batch; Adam, lr
5e-4, betas (0.9, 0.999); batch 128 (``drop_last=True`` for training); MNIST with
Resize(28) / Grayscale / ToTensor / Normalize((0,), (1,)); test accuracy from the output spike
count.

Differs: ``train_samples`` / ``test_samples`` first images of each split instead of all of them
(the tutorial trains one epoch on all 60000); the test loader keeps its last partial batch and
is not shuffled; no printing of the loss every 50 iterations (``progress=True`` does).

With ``method`` set, the only change to the loop is ``import opzo_ext as opzo`` and
``with opzo.train(net, method=method, **options):`` around the training loop; ``method="zo"``
also computes the loss per sample (``reduction="none"``) and hands it to ``session.loss``, since
zeroth order multiplies each sample's noise by that sample's own loss.
``local=True`` adds the paper's local learning (appendix C.1), two more changes: ``local=True,
optimizer=optimizer`` in ``opzo.train`` and ``+ session.local_loss(targets)`` on the loss.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import snntorch as snn
from torchvision import transforms

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as common
else:
    from . import _common as common

import opzo_ext as opzo  # opzo
from opzo_ext.data import load_mnist

#: The tutorial's settings (``run(..., **setup_overrides)`` changes them).
SETUP = dict(batch_size=128, num_inputs=28 * 28, num_hidden=1000, num_outputs=10, num_steps=25,
             beta=0.95, lr=5e-4, betas=(0.9, 0.999))


class Net(nn.Module):
    """Two Leaky layers; the time loop is inside ``forward``."""

    def __init__(self, num_inputs, num_hidden, num_outputs, beta, num_steps):
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = nn.Linear(num_inputs, num_hidden)
        self.lif1 = snn.Leaky(beta=beta)
        self.fc2 = nn.Linear(num_hidden, num_outputs)
        self.lif2 = snn.Leaky(beta=beta)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        mem2 = self.lif2.init_leaky()
        spk2_rec, mem2_rec = [], []
        for step in range(self.num_steps):
            cur1 = self.fc1(x)
            spk1, mem1 = self.lif1(cur1, mem1)
            cur2 = self.fc2(spk1)
            spk2, mem2 = self.lif2(cur2, mem2)
            spk2_rec.append(spk2)
            mem2_rec.append(mem2)
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


def mnist(root, train):
    transform = transforms.Compose([
        transforms.Resize((28, 28)),
        transforms.Grayscale(),
        transforms.ToTensor(),
        transforms.Normalize((0,), (1,)),
    ])
    return load_mnist(root, train=train, transform=transform)


def run(method: str | None, *, train_samples: int, test_samples: int, epochs: int = 1, seed: int = 0,
        readout_only: bool = False, local: bool = False, options: dict | None = None, data_root: str = "data",
        progress: bool = False, device: str = "cpu", **setup_overrides) -> dict:
    """Train as the tutorial does (``method=None``) or inside ``opzo.train(net, method=method,
    **options)``; returns accuracy (percent, test subset), losses, seconds (see ``_common.result``)."""
    s = common.setup(SETUP, setup_overrides)
    device = torch.device(device)
    train_set = common.first(mnist(data_root, True), train_samples)
    test_set = common.first(mnist(data_root, False), test_samples)
    train_loader = common.train_loader(train_set, s["batch_size"], seed)
    test_loader = common.test_loader(test_set, s["batch_size"])

    common.seed_everything(seed)
    net = Net(s["num_inputs"], s["num_hidden"], s["num_outputs"], s["beta"], s["num_steps"]).to(device)
    params = common.readout_only(net, net.fc2) if readout_only else net.parameters()
    loss = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(params, lr=s["lr"], betas=s["betas"])

    losses = []
    if local and (readout_only or not method):
        raise ValueError("local=True needs a method and all layers trained (not readout_only).")
    extra = dict(local=True, optimizer=optimizer) if local else {}  # opzo: local learning
    session = opzo.train(net, method=method, **(extra | (options or {}))) if method else contextlib.nullcontext()
    start = time.perf_counter()
    with session:  # opzo: the only change to the tutorial's loop
        for epoch in range(epochs):
            for i, (data, targets) in enumerate(train_loader):
                data, targets = data.to(device), targets.to(device)
                net.train()
                spk_rec, mem_rec = net(data.view(data.size(0), -1))
                loss_val = torch.zeros((1,), dtype=torch.float, device=device)
                if method == "zo":  # opzo: ZO multiplies each sample's noise by its own loss (eq. 3)
                    per_step = torch.stack([F.cross_entropy(mem_rec[step], targets, reduction="none")
                                            for step in range(s["num_steps"])])
                    loss_val = loss_val + session.loss(per_step, reduction="sum") / targets.numel()
                else:
                    for step in range(s["num_steps"]):
                        loss_val += loss(mem_rec[step], targets)
                if local:  # opzo: the local readouts' loss (local learning)
                    loss_val = loss_val + session.local_loss(targets)
                optimizer.zero_grad()
                loss_val.backward()
                optimizer.step()
                losses.append(loss_val.item())
                if progress and i % 50 == 0:
                    print(f"epoch {epoch} iteration {i}: train loss {loss_val.item():.2f}")
    seconds = time.perf_counter() - start

    total = correct = 0
    with torch.no_grad():
        net.eval()
        for data, targets in test_loader:
            data, targets = data.to(device), targets.to(device)
            test_spk, _ = net(data.view(data.size(0), -1))
            _, predicted = test_spk.sum(dim=0).max(1)
            total += targets.size(0)
            correct += (predicted == targets).sum().item()

    return common.result(accuracy=100.0 * correct / max(total, 1), losses=losses, seconds=seconds,
                         train_samples=len(train_set), test_samples=len(test_set), method=method,
                         readout_only=readout_only)


def main(argv=None):
    return common.main(run, "snnTorch tutorial 5 (FC 784-1000-10, MNIST)", 60000, 10000, argv=argv)


if __name__ == "__main__":
    main()
