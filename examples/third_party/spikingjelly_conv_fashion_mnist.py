#!/usr/bin/env python
"""SpikingJelly's convolutional SNN on Fashion-MNIST, as a test bed.

Source: github.com/fangwei123456/spikingjelly, ``spikingjelly/activation_based/examples/
conv_fashion_mnist.py`` (documentation tutorial "Convolutional SNN to Classify FMNIST").  The
network is imported from the installed package (``spikingjelly.activation_based.examples.
conv_fashion_mnist.CSNN``, constructor ``CSNN(T, channels)``); the training loop is written from
the example's description; no code was copied.

Same as the example: ``CSNN(T=4, channels=128)`` -- {Conv3x3-BN-IF-MaxPool2} x 2, Flatten,
Linear(channels*7*7, channels*4*4)-IF, Linear(channels*4*4, 10)-IF, no biases, ATan surrogate,
multi-step mode; its ``forward`` repeats the image T times and returns the output firing rate
``out_fr`` (mean over T); loss ``F.mse_loss(out_fr, one_hot(label))``, one backward per batch;
``functional.reset_net(net)`` after every batch; SGD lr 0.1 momentum 0.9 (the example's
suggested command line ``-opt sgd -lr 0.1``) with ``CosineAnnealingLR(optimizer, epochs)``
stepped once per epoch; batch 128 (``drop_last=True`` for training); Fashion-MNIST with
``ToTensor()`` only; test accuracy ``out_fr.argmax(1) == label`` in eval mode under ``no_grad``.

Differs: ``train_samples`` / ``test_samples`` first images of each split (the example runs 64
epochs on all of them, on a GPU with ``-amp``; here no AMP, no checkpoints, no TensorBoard, no
data-loading workers); the test loader is not shuffled.  Fashion-MNIST comes from
``opzo_ext.data.load_fashion_mnist`` (offline copy when installed, else torchvision's download).

With ``method`` set, the only change to the loop is ``import opzo_ext as opzo`` and
``with opzo.train(net, method=method, **options):`` around the training loop; ``method="zo"``
also computes the loss per sample (``reduction="none"``) and hands it to ``session.loss``, since
zeroth order multiplies each sample's noise by that sample's own loss.
``local=True`` adds the paper's local learning (appendix C.1), two more changes: ``local=True,
optimizer=optimizer`` in ``opzo.train`` and ``+ session.local_loss(targets)`` on the loss.
Under OPZO and ZO the BatchNorm layers after the first hidden layer accumulate their running
statistics from noisy activations; the session recomputes them without the noise from its last 8
training batches when the ``with`` block exits (``recompute_bn``, on by default).
``update_bn=True`` recomputes them once more after the block, from the first 16 training batches
(``opzo.update_bn``, one more line: what a multi-process run, where the session does not, needs).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.examples.conv_fashion_mnist import CSNN

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as common
else:
    from . import _common as common

import opzo_ext as opzo  # opzo
from opzo_ext.data import load_fashion_mnist

#: The example's settings (``run(..., **setup_overrides)`` changes them).
SETUP = dict(T=4, channels=128, batch_size=128, lr=0.1, momentum=0.9)


def run(method: str | None, *, train_samples: int, test_samples: int, epochs: int = 1, seed: int = 0,
        readout_only: bool = False, local: bool = False, update_bn: bool = False, options: dict | None = None,
        data_root: str = "data", progress: bool = False, device: str = "cpu", **setup_overrides) -> dict:
    """Train as the example does (``method=None``) or inside ``opzo.train(net, method=method,
    **options)``; returns accuracy (percent, test subset), losses, seconds (see ``_common.result``)."""
    s = common.setup(SETUP, setup_overrides)
    device = torch.device(device)
    to_tensor = torchvision.transforms.ToTensor()
    train_set = common.first(load_fashion_mnist(data_root, train=True, transform=to_tensor), train_samples)
    test_set = common.first(load_fashion_mnist(data_root, train=False, transform=to_tensor), test_samples)
    train_data_loader = common.train_loader(train_set, s["batch_size"], seed)
    test_data_loader = common.test_loader(test_set, s["batch_size"])

    common.seed_everything(seed)
    net = CSNN(T=s["T"], channels=s["channels"]).to(device)
    readout = net.conv_fc[11]  # Linear(channels*4*4, 10)
    params = common.readout_only(net, readout) if readout_only else net.parameters()
    optimizer = torch.optim.SGD(params, lr=s["lr"], momentum=s["momentum"])
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)

    losses = []
    if local and (readout_only or not method):
        raise ValueError("local=True needs a method and all layers trained (not readout_only).")
    extra = dict(local=True, optimizer=optimizer) if local else {}  # opzo: local learning
    session = opzo.train(net, method=method, **(extra | (options or {}))) if method else contextlib.nullcontext()
    start = time.perf_counter()
    with session:  # opzo: the only change to the example's loop
        for epoch in range(epochs):
            net.train()
            train_loss = train_acc = train_samples_seen = 0
            for img, label in train_data_loader:
                optimizer.zero_grad()
                img, label = img.to(device), label.to(device)
                label_onehot = F.one_hot(label, 10).float()
                out_fr = net(img)
                if method == "zo":  # opzo: ZO multiplies each sample's noise by its own loss (eq. 3)
                    loss = session.loss(F.mse_loss(out_fr, label_onehot, reduction="none").mean(-1))
                else:
                    loss = F.mse_loss(out_fr, label_onehot)
                if local:  # opzo: the local readouts' loss (local learning)
                    loss = loss + session.local_loss(label)
                loss.backward()
                optimizer.step()

                train_samples_seen += label.numel()
                train_loss += loss.item() * label.numel()
                train_acc += (out_fr.argmax(1) == label).float().sum().item()
                losses.append(loss.item())
                functional.reset_net(net)
            lr_scheduler.step()
            if progress:
                print(f"epoch {epoch}: train loss {train_loss / max(train_samples_seen, 1):.4f}, "
                      f"train acc {train_acc / max(train_samples_seen, 1):.4f}")
    if update_bn:  # opzo: BatchNorm statistics without the noise
        opzo.update_bn(net, itertools.islice(train_data_loader, 16))
    seconds = time.perf_counter() - start

    net.eval()
    test_acc = test_samples_seen = 0
    with torch.no_grad():
        for img, label in test_data_loader:
            img, label = img.to(device), label.to(device)
            out_fr = net(img)
            test_samples_seen += label.numel()
            test_acc += (out_fr.argmax(1) == label).float().sum().item()
            functional.reset_net(net)

    return common.result(accuracy=100.0 * test_acc / max(test_samples_seen, 1), losses=losses, seconds=seconds,
                         train_samples=len(train_set), test_samples=len(test_set), method=method,
                         readout_only=readout_only)


def _options(parser):
    parser.add_argument("--update-bn", action="store_true",
                        help="recompute the BatchNorm statistics without the session's noise after training")


def main(argv=None):
    return common.main(run, "SpikingJelly conv_fashion_mnist (CSNN, Fashion-MNIST)", 60000, 10000, extra=_options,
                       argv=argv)


if __name__ == "__main__":
    main()
