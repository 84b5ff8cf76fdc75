#!/usr/bin/env python
"""snnTorch tutorial 6, "Surrogate Gradient Descent in a Convolutional SNN", as a test bed.

Source: github.com/jeshraghian/snntorch, ``examples/tutorial_6_CNN.ipynb`` (docs page
"Tutorial 6 - Surrogate Gradient Descent in a Convolutional SNN").  The setup is written from
the tutorial's description; no code was copied.

Same as the tutorial: the convolutional SNN in an ``nn.Sequential`` -- 12C5-MP2-Leaky,
64C5-MP2-Leaky, Flatten, Linear(64*4*4, 10), Leaky(output=True) -- with ``beta=0.5``,
``surrogate.fast_sigmoid(slope=25)`` and ``init_hidden=True``; ``forward_pass`` resets the
network with ``snntorch.utils.reset`` and calls ``net(data)`` for ``num_steps=25`` steps,
stacking the output spikes; the loss is ``SF.ce_rate_loss()`` of the output spikes, one
backward per batch; Adam, lr 1e-2, betas (0.9, 0.999); batch 128 (``drop_last=True``); MNIST
with Resize(28) / Grayscale / ToTensor / Normalize((0,), (1,)); test accuracy by
``SF.accuracy_rate`` (spike count), weighted by the batch size.

Differs: ``train_samples`` / ``test_samples`` first images of each split instead of all of them
(the tutorial trains one epoch on all 60000, printing every 50 iterations; ``progress=True``
does); the test loader keeps its last partial batch and is not shuffled.

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
import snntorch as snn
import snntorch.functional as SF
from snntorch import surrogate, utils
from torchvision import transforms

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as common
else:
    from . import _common as common

import opzo_ext as opzo  # opzo
from opzo_ext.data import load_mnist

#: The tutorial's settings (``run(..., **setup_overrides)`` changes them).
SETUP = dict(batch_size=128, num_steps=25, beta=0.5, slope=25, lr=1e-2, betas=(0.9, 0.999))


def build_net(beta, slope):
    spike_grad = surrogate.fast_sigmoid(slope=slope)
    return nn.Sequential(
        nn.Conv2d(1, 12, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Conv2d(12, 64, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True),
    )


def forward_pass(net, num_steps, data):
    mem_rec, spk_rec = [], []
    utils.reset(net)  # hidden states and outputs of every Leaky
    for step in range(num_steps):
        spk_out, mem_out = net(data)
        spk_rec.append(spk_out)
        mem_rec.append(mem_out)
    return torch.stack(spk_rec), torch.stack(mem_rec)


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
    num_steps = s["num_steps"]
    train_set = common.first(mnist(data_root, True), train_samples)
    test_set = common.first(mnist(data_root, False), test_samples)
    train_loader = common.train_loader(train_set, s["batch_size"], seed)
    test_loader = common.test_loader(test_set, s["batch_size"])

    common.seed_everything(seed)
    net = build_net(s["beta"], s["slope"]).to(device)
    params = common.readout_only(net, net[7]) if readout_only else net.parameters()
    optimizer = torch.optim.Adam(params, lr=s["lr"], betas=s["betas"])
    loss_fn = SF.ce_rate_loss(reduction="none" if method == "zo" else "mean")  # opzo: ZO needs each sample's loss

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
                spk_rec, _ = forward_pass(net, num_steps, data)
                loss_val = loss_fn(spk_rec, targets)
                if method == "zo":  # opzo: ZO multiplies each sample's noise by its own loss (eq. 3)
                    loss_val = session.loss(loss_val)
                if local:  # opzo: the local readouts' loss (local learning)
                    loss_val = loss_val + session.local_loss(targets)
                optimizer.zero_grad()
                loss_val.backward()
                optimizer.step()
                losses.append(loss_val.item())
                if progress and i % 50 == 0:
                    acc = SF.accuracy_rate(spk_rec, targets)
                    print(f"epoch {epoch} iteration {i}: train loss {loss_val.item():.2f}, "
                          f"train accuracy {acc * 100:.2f}%")
    seconds = time.perf_counter() - start

    total = acc = 0
    with torch.no_grad():
        net.eval()
        for data, targets in test_loader:
            data, targets = data.to(device), targets.to(device)
            spk_rec, _ = forward_pass(net, num_steps, data)
            acc += SF.accuracy_rate(spk_rec, targets) * spk_rec.size(1)
            total += spk_rec.size(1)

    return common.result(accuracy=100.0 * acc / max(total, 1), losses=losses, seconds=seconds,
                         train_samples=len(train_set), test_samples=len(test_set), method=method,
                         readout_only=readout_only)


def main(argv=None):
    return common.main(run, "snnTorch tutorial 6 (CSNN 12C5-MP2-64C5-MP2-FC10, MNIST)", 60000, 10000,
                       argv=argv)


if __name__ == "__main__":
    main()
