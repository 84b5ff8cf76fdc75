"""Figure 4 at small scale: cosine between each method's weight gradients and online BP's (same
batch, spikes and noise) while training, measured every ``--every`` batches with
``opzo.diagnostics.AlignmentMonitor``.

    python benchmarks/alignment.py --epochs 1 --every 50 > docs/results/alignment.md   # FC, MNIST, CPU
    python benchmarks/alignment.py --model conv5 --dataset fashion-mnist --device cuda \\
        --epochs 1 --every 25 > docs/results/alignment_conv5.md                        # the GPU check

``--model``: ``fc`` (FC 784-800-800-10), ``small_conv`` (16C3-AP2-32C3-AP2-FC, flattened readout)
or ``conv5`` (the paper's 128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC with global average pooling, on
28x28 grey images).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader, Subset

import opzo_ext as opzo
from opzo_ext.data import get_dataset
from opzo_ext.diagnostics import AlignmentMonitor
from opzo_ext.losses import instantaneous_loss
from opzo_ext.models import conv5, fc_2x800, small_conv

MODELS = {
    "fc": ("FC 784-800-800-10", lambda: fc_2x800(dropout=0.0)),
    "small_conv": ("16C3-AP2-32C3-AP2-FC", small_conv),
    "conv5": ("128C3-AP2-256C3-AP2-512C3-AP2-512C3-GAP-FC", lambda: conv5(in_channels=1, input_size=28)),
}


def run(method: str, args) -> tuple[list[tuple[int, dict]], float]:
    """The alignment curve of ``method`` and the test accuracy after training."""
    torch.manual_seed(args.seed)
    net = MODELS[args.model][1]().to(args.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=2e-4)
    train = get_dataset(args.dataset, args.data_root, train=True)
    if args.train_samples:
        train = Subset(train, range(min(args.train_samples, len(train))))
    data = DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    x0 = next(iter(data))[0].to(args.device)
    with opzo.train(net, method=method, seed=args.seed, example_input=x0) as session:
        monitor = AlignmentMonitor(session, every=args.every)
        for epoch in range(args.epochs):
            for x, y in data:
                x, y = x.to(args.device), y.to(args.device)

                def run_batch(x=x, y=y):
                    functional.reset_net(net)
                    for _ in range(args.steps):
                        session.loss(instantaneous_loss(net(x), y, 0.05, steps=args.steps, reduction="none")).backward()

                if monitor(run_batch) is not None:
                    print(method, monitor.history[-1], file=sys.stderr, flush=True)
                optimizer.step()
                optimizer.zero_grad()
    net.eval()
    correct = 0
    test = get_dataset(args.dataset, args.data_root, train=False)
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=500):
            x, y = x.to(args.device), y.to(args.device)
            functional.reset_net(net)
            correct += (sum(net(x) for _ in range(args.steps)).argmax(1) == y).sum().item()
    return monitor.history, 100 * correct / len(test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fc", choices=sorted(MODELS))
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--data-root", default="data")
    args = p.parse_args()
    start = time.perf_counter()
    results = {m: run(m, args) for m in ("opzo", "dfa")}
    curves = {m: c for m, (c, _) in results.items()}
    layers = [w for w in curves["opzo"][0][1] if w.endswith(".weight")][:-1]  # the readout is exact in both
    print("# Gradient alignment with online BP (figure 4 at small scale)\n")
    print(f"{MODELS[args.model][0]} on {args.dataset}, {args.train_samples or 'all'} training images, "
          f"{args.epochs} epoch(s), T = {args.steps}, AdamW 2e-4, no dropout, alpha 0.2, lam 0.99999, "
          f"{args.device}; cosine per weight between the method's gradient and online spatial BP's on the "
          "same batch, spikes and noise (`opzo.diagnostics.AlignmentMonitor`). The readout's gradient is "
          "exact in every method and left out. Test accuracy: "
          + ", ".join(f"{m} {acc:.2f}%" for m, (_, acc) in results.items())
          + f". Paper (figure 4, conv5 on CIFAR-100): OPZO 0.5-0.9 per layer, DFA below 0.1. "
          f"Command: `python benchmarks/alignment.py {' '.join(sys.argv[1:])}` ({time.perf_counter() - start:.0f} s).\n")
    header = [f"{m} {w.removesuffix('.weight')}" for m in curves for w in layers]
    print("| batch | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for (step, o), (_, d) in zip(curves["opzo"], curves["dfa"]):
        print(f"| {step} | " + " | ".join(f"{c[w]:.3f}" for c in (o, d) for w in layers) + " |")


if __name__ == "__main__":
    main()
