#!/usr/bin/env python
"""MNIST with online BP (OTTT-style) and with OPZO, side by side.

The paper's fully connected network 784-800-800-10 in snnTorch: two layers of
leaky integrate-and-fire neurons (beta 0.5, threshold 1, sigmoid surrogate of
slope 4) and a linear readout.  Each image is fed as the same real-valued input
current at every one of T time steps; the loss is taken at every step and
backpropagated at once (online training), and the prediction is the sum of the
readout over the T steps.

The same seed, initial weights and batch order are used for both methods.

    .venv/bin/python examples/mnist_demo.py            # both methods: full MNIST, 5 epochs each (3-11 min)
    .venv/bin/python examples/mnist_demo.py --train-samples 10000   # quick look
    .venv/bin/python examples/mnist_demo.py --methods opzo --epochs 20

Defaults (60k images x 5 epochs, T=6, batch 128, AdamW lr 2e-4 wd 2e-4) are
sized to finish both methods in a few minutes on 2 CPU cores; the paper trains
far longer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import snntorch as snn
import snntorch.utils
from snntorch import surrogate

import opzo_ext as opzo
from opzo_ext.data import mnist_tensors

REPO_ROOT = Path(__file__).resolve().parent.parent


def build_net() -> nn.Sequential:
    """784-800-800-10; the Leaky layers hold their own state (init_hidden)."""

    def lif():
        return snn.Leaky(
            beta=0.5,
            threshold=1.0,
            spike_grad=surrogate.sigmoid(slope=4),  # ~ the paper's a1 = 0.25
            init_hidden=True,
        )

    return nn.Sequential(
        nn.Linear(784, 800),
        lif(),
        nn.Linear(800, 800),
        lif(),
        nn.Linear(800, 10),  # readout: real-valued output at every step
    )


def loss_fn(out: torch.Tensor, y: torch.Tensor, mse_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(out, y)
    if mse_weight:
        loss = loss + mse_weight * F.mse_loss(out, F.one_hot(y, 10).to(out.dtype))
    return loss


@torch.no_grad()
def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, T: int, batch_size: int) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        snntorch.utils.reset(net)
        total = sum(net(xb) for _ in range(T))
        correct += (total.argmax(1) == yb).sum().item()
    snntorch.utils.reset(net)
    return correct / len(x)


def train(method: str, net: nn.Module, x: torch.Tensor, y: torch.Tensor, args) -> float:
    """Train in place with ``method`` ("bp" or "opzo"); returns seconds spent."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    order_gen = torch.Generator().manual_seed(args.seed)  # same batch order for every method
    T = args.T
    start = time.perf_counter()
    net.train()
    snntorch.utils.reset(net)
    # the paper's schedule: alpha decays linearly from 0.2 to 0.01 over the epochs (unused by bp)
    alpha = opzo.linear_alpha(0.2, 0.01, epochs=args.epochs)
    with opzo.train(net, method=method, alpha=alpha, optimizer=optimizer) as session:
        for epoch in range(args.epochs):
            session.epoch = epoch  # read by the alpha schedule
            perm = torch.randperm(len(x), generator=order_gen)
            seen = correct = 0
            loss_sum = 0.0
            for b, i in enumerate(range(0, len(x), args.batch_size)):
                idx = perm[i : i + args.batch_size]
                xb, yb = x[idx], y[idx]
                total = 0.0
                for t in range(T):
                    out = net(xb)  # the same real-valued current every step
                    loss = loss_fn(out, yb, args.mse_weight) / T  # instantaneous loss
                    loss.backward()
                    total = total + out.detach()
                    loss_sum += loss.item() * len(yb)
                optimizer.step()
                optimizer.zero_grad()
                snntorch.utils.reset(net)
                seen += len(yb)
                correct += (total.argmax(1) == yb).sum().item()
                if args.log_every and (b + 1) % args.log_every == 0:
                    print(
                        f"  [{method}] epoch {epoch + 1} batch {b + 1}: "
                        f"loss {loss_sum / seen:.4f}  train acc {100 * correct / seen:.2f}%",
                        flush=True,
                    )
            print(
                f"  [{method}] epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.4f}  "
                f"train acc {100 * correct / seen:.2f}%  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    return time.perf_counter() - start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="bp,opzo", help="comma-separated: bp (online BP / OTTT), opzo")
    p.add_argument("-T", "--T", type=int, default=6, help="time steps per sample")
    p.add_argument("--train-samples", type=int, default=60000, help="use N randomly chosen training images (max 60000)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=2e-4)
    p.add_argument("--mse-weight", type=float, default=0.05, help="weight of the MSE-to-one-hot term added to CE")
    p.add_argument("--eval-batch-size", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--log-every", type=int, default=0, help="print progress every N batches (0: per epoch only)")
    p.add_argument("--data-root", default=str(REPO_ROOT / "data"), help="where MNIST is kept")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    x_train, y_train = mnist_tensors(args.data_root, train=True)
    x_test, y_test = mnist_tensors(args.data_root, train=False)
    subset = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[: args.train_samples]
    x_train, y_train = x_train[subset], y_train[subset]
    print(
        f"MNIST: {len(x_train)} training / {len(x_test)} test images ({time.perf_counter() - t0:.1f} s); "
        f"T={args.T}, epochs={args.epochs}, batch={args.batch_size}, AdamW lr={args.lr} wd={args.weight_decay}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in build_net().state_dict().items()}

    results = []
    for method in methods:
        torch.manual_seed(args.seed)  # same noise stream for each method
        net = build_net()  # a fresh net (snnTorch's reset only sees constructed neurons, not deep copies)
        net.load_state_dict(init_state)
        print(f"== {method} ==", flush=True)
        seconds = train(method, net, x_train, y_train, args)
        t1 = time.perf_counter()
        acc = evaluate(net, x_test, y_test, args.T, args.eval_batch_size)
        print(f"  [{method}] test accuracy {100 * acc:.2f}%  (train {seconds:.1f} s, eval {time.perf_counter() - t1:.1f} s)")
        results.append((method, acc, seconds))

    print()
    print(f"{'method':<8}{'test acc (10k)':>16}{'train time':>14}")
    for method, acc, seconds in results:
        print(f"{method:<8}{100 * acc:>15.2f}%{seconds:>12.1f} s")


if __name__ == "__main__":
    main()
