#!/usr/bin/env python
"""snnTorch tutorial 7, "Neuromorphic Datasets with Tonic + snnTorch", as a test bed.

Source: github.com/jeshraghian/snntorch, ``examples/tutorial_7_neuromorphic_datasets.ipynb``
(docs page "Tutorial 7 - Neuromorphic Datasets with Tonic + snnTorch").  The setup is written
from the tutorial's description; no code was copied.

Same as the tutorial: N-MNIST events through ``tonic.transforms.Denoise(filter_time=10000)`` and
``ToFrame(sensor_size, time_window=1000)`` (frames from the first event on, so their number
varies), batched by ``tonic.collation.PadTensors(batch_first=False)`` into ``[T, B, 2, 34, 34]``;
the convolutional SNN in an ``nn.Sequential`` -- 12C5-MP2-Leaky, 32C5-MP2-Leaky, Flatten,
Linear(32*5*5, 10), Leaky(output=True) -- with ``beta=0.5``, ``surrogate.atan()`` and
``init_hidden=True``; ``forward_pass`` resets the network and runs one step per frame of the
batch; loss ``SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)``, one backward per batch;
Adam, lr 2e-2, betas (0.9, 0.999); batch 128 (the last partial batch is kept, as in the
tutorial); accuracy by ``SF.accuracy_rate``.

Differs: ``--dataset nmnist-sim`` (the default, offline) uses ``opzo_ext.data.SimulatedNMNIST``,
a simulation of N-MNIST from MNIST digits, NOT the recorded data set; ``--dataset nmnist`` reads
the real files with ``tonic.datasets.NMNIST`` (through ``opzo_ext.data.load_nmnist``, which only
adds a clear error when they are missing).  Only the first ``train_samples`` / ``test_samples``
recordings are used (the simulation generates only that many); the tutorial stops after 50
iterations of one epoch, here all batches of ``epochs`` epochs run.  The frames are cached with
``tonic.DiskCachedDataset`` as in the tutorial (under ``<data_root>/cache/tutorial7/``, keyed by
data set, split and frame settings), without its ``RandomRotation`` augmentation (the same data
reach every method), and converted to float32 tensors.  The tutorial reports training accuracy
only; here the test accuracy is measured the same way on the test subset.

``time_window`` (default the tutorial's 1000 us: ~300 frames of the 0.3 s recordings) can be
raised, e.g. 10000 us gives ~30 frames; ``filter_time=None`` skips ``Denoise`` (tonic's is a
Python loop over the events, ~25 ms per recording; the simulation has no isolated noise events
anyway).  With frames of 10-20 ms the tutorial's lr 2e-2 overshoots on the simulation (the output
layer fires everywhere, then falls silent for good); lr 2e-3 and a smaller batch learn.

With ``method`` set, the only change to the loop is ``import opzo_ext as opzo`` and
``with opzo.train(net, method=method, **options):`` around the training loop; ``method="zo"``
also computes the loss per sample (``reduction="none"``) and hands it to ``session.loss``, since
zeroth order multiplies each sample's noise by that sample's own loss.
``local=True`` adds the paper's local learning (appendix C.1), two more changes: ``local=True,
optimizer=optimizer`` in ``opzo.train`` and ``+ session.local_loss(targets)`` on the loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import snntorch as snn
import snntorch.functional as SF
import tonic
import tonic.transforms as transforms
from snntorch import surrogate, utils

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as common
else:
    from . import _common as common

import opzo_ext as opzo  # opzo
from opzo_ext.data import SimulatedNMNIST, load_nmnist

#: The tutorial's settings (``run(..., **setup_overrides)`` changes them).
SETUP = dict(batch_size=128, time_window=1000, filter_time=10000, beta=0.5, lr=2e-2, betas=(0.9, 0.999),
             correct_rate=0.8, incorrect_rate=0.2, dataset="nmnist-sim", disk_cache=True)
DATASETS = ("nmnist-sim", "nmnist")


def build_net(beta):
    spike_grad = surrogate.atan()
    return nn.Sequential(
        nn.Conv2d(2, 12, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Conv2d(12, 32, 5),
        nn.MaxPool2d(2),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 10),
        snn.Leaky(beta=beta, spike_grad=spike_grad, init_hidden=True, output=True),
    )


def forward_pass(net, data):
    spk_rec = []
    utils.reset(net)  # hidden states and outputs of every Leaky
    for step in range(data.size(0)):  # data: [T, B, 2, 34, 34]
        spk_out, mem_out = net(data[step])
        spk_rec.append(spk_out)
    return torch.stack(spk_rec)


def _identity(events):
    return events


def _float_tensor(frames):
    return torch.from_numpy(np.asarray(frames, dtype=np.float32))


def nmnist(root, train, n, dataset, filter_time, time_window, disk_cache=True):
    """The first ``n`` recordings of a split as frames ``[T, 2, 34, 34]`` (T varies per recording),
    cached on disk like the tutorial's ``DiskCachedDataset`` (under ``<root>/cache/``)."""
    sensor_size = tonic.datasets.NMNIST.sensor_size
    frame_transform = transforms.Compose([
        transforms.Denoise(filter_time=filter_time) if filter_time else _identity,
        transforms.ToFrame(sensor_size=sensor_size, time_window=time_window),
    ])
    if dataset == "nmnist-sim":  # simulates only the first n MNIST digits (cached under root)
        events = SimulatedNMNIST(root, train=train, transform=frame_transform, num_samples=n)
        source = events.params
    elif dataset == "nmnist":  # tonic.datasets.NMNIST(save_to=root, ...); the files must be there
        events = common.first(load_nmnist(root, train=train, transform=frame_transform), n)
        source = "tonic.datasets.NMNIST"
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if not disk_cache:
        return _Transformed(events, _float_tensor)
    key = json.dumps([dataset, source, "train" if train else "test", filter_time, time_window], sort_keys=True)
    path = os.path.join(root, "cache", "tutorial7", hashlib.sha1(key.encode()).hexdigest()[:12])
    return tonic.DiskCachedDataset(events, cache_path=path, transform=_float_tensor)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return self.transform(x), y


def run(method: str | None, *, train_samples: int, test_samples: int, epochs: int = 1, seed: int = 0,
        readout_only: bool = False, local: bool = False, options: dict | None = None, data_root: str = "data",
        progress: bool = False, device: str = "cpu", **setup_overrides) -> dict:
    """Train as the tutorial does (``method=None``) or inside ``opzo.train(net, method=method,
    **options)``; returns accuracy (percent, test subset), losses, seconds (see ``_common.result``)."""
    s = common.setup(SETUP, setup_overrides)
    device = torch.device(device)
    data = (s["dataset"], s["filter_time"], s["time_window"], s["disk_cache"])
    train_set = nmnist(data_root, True, train_samples, *data)
    test_set = nmnist(data_root, False, test_samples, *data)
    collate = tonic.collation.PadTensors(batch_first=False)
    trainloader = common.train_loader(train_set, s["batch_size"], seed, drop_last=False, collate_fn=collate)
    testloader = common.test_loader(test_set, s["batch_size"], collate_fn=collate)

    common.seed_everything(seed)
    net = build_net(s["beta"]).to(device)
    params = common.readout_only(net, net[7]) if readout_only else net.parameters()
    optimizer = torch.optim.Adam(params, lr=s["lr"], betas=s["betas"])
    loss_fn = SF.mse_count_loss(correct_rate=s["correct_rate"], incorrect_rate=s["incorrect_rate"],
                                reduction="none" if method == "zo" else "mean")  # opzo: ZO needs each sample's loss

    losses = []
    if local and (readout_only or not method):
        raise ValueError("local=True needs a method and all layers trained (not readout_only).")
    extra = dict(local=True, optimizer=optimizer) if local else {}  # opzo: local learning
    session = opzo.train(net, method=method, **(extra | (options or {}))) if method else contextlib.nullcontext()
    start = time.perf_counter()
    with session:  # opzo: the only change to the tutorial's loop
        for epoch in range(epochs):
            for i, (data, targets) in enumerate(trainloader):
                data, targets = data.to(device), targets.to(device)
                net.train()
                spk_rec = forward_pass(net, data)
                loss_val = loss_fn(spk_rec, targets)
                if method == "zo":  # opzo: ZO multiplies each sample's noise by its own loss (eq. 3)
                    loss_val = session.loss(loss_val.mean(-1))
                if local:  # opzo: the local readouts' loss (local learning)
                    loss_val = loss_val + session.local_loss(targets)
                optimizer.zero_grad()
                loss_val.backward()
                optimizer.step()
                losses.append(loss_val.item())
                if progress:
                    acc = SF.accuracy_rate(spk_rec, targets)
                    print(f"epoch {epoch} iteration {i}: train loss {loss_val.item():.2f}, "
                          f"train accuracy {acc * 100:.2f}%")
    seconds = time.perf_counter() - start

    total = acc = 0
    with torch.no_grad():
        net.eval()
        for data, targets in testloader:
            data, targets = data.to(device), targets.to(device)
            spk_rec = forward_pass(net, data)
            acc += SF.accuracy_rate(spk_rec, targets) * spk_rec.size(1)
            total += spk_rec.size(1)

    return common.result(accuracy=100.0 * acc / max(total, 1), losses=losses, seconds=seconds,
                         train_samples=len(train_set), test_samples=len(test_set), method=method,
                         readout_only=readout_only, dataset=s["dataset"], time_window=s["time_window"])


def _extra(parser):
    parser.add_argument("--dataset", choices=DATASETS, default="nmnist-sim",
                        help="nmnist-sim: opzo_ext's offline simulation (not N-MNIST); nmnist: tonic's N-MNIST files")
    parser.add_argument("--time-window", type=int, default=1000, help="frame length in us (tutorial: 1000)")


def main(argv=None):
    return common.main(run, "snnTorch tutorial 7 (CSNN on N-MNIST frames)", 60000, 10000, extra=_extra,
                       argv=argv)


if __name__ == "__main__":
    main()
