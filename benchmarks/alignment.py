"""Figure 4 at small scale: cosine between each method's weight gradients and online BP's (same
batch, spikes and noise) while training FC 2x800 on MNIST, measured every ``--every`` batches with
``opzo.diagnostics.gradient_alignment``.

    python benchmarks/alignment.py --epochs 1 --every 50 > docs/results/alignment.md
"""
from __future__ import annotations

import argparse
import sys

import torch
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader

import opzo_ext as opzo
from opzo_ext.data import get_dataset
from opzo_ext.diagnostics import gradient_alignment
from opzo_ext.losses import instantaneous_loss
from opzo_ext.models import fc_2x800


def run(method: str, args) -> list[tuple[int, dict]]:
    torch.manual_seed(args.seed)
    net = fc_2x800(dropout=0.0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4, weight_decay=2e-4)
    data = DataLoader(get_dataset("mnist", args.data_root, train=True), batch_size=128, shuffle=True,
                      generator=torch.Generator().manual_seed(args.seed))
    x0 = next(iter(data))[0]
    curve = []
    with opzo.train(net, method=method, seed=args.seed, example_input=x0) as session:
        for epoch in range(args.epochs):
            for b, (x, y) in enumerate(data):
                def run_batch(x=x, y=y):
                    functional.reset_net(net)
                    for _ in range(args.steps):
                        instantaneous_loss(net(x), y, 0.05, steps=args.steps).backward()

                if b % args.every == 0:
                    curve.append((epoch * len(data) + b, gradient_alignment(session, run_batch)))
                    print(method, curve[-1], file=sys.stderr, flush=True)
                else:
                    run_batch()
                optimizer.step()
                optimizer.zero_grad()
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--data-root", default="data")
    args = p.parse_args()
    curves = {m: run(m, args) for m in ("opzo", "dfa")}
    print("# Gradient alignment with online BP (figure 4 at small scale)\n")
    print(f"FC 784-800-800-10 on MNIST, T = {args.steps}, AdamW 2e-4, no dropout, alpha 0.2, lam 0.99999;")
    print("cosine per weight between the method's gradient and online spatial BP's on the same batch,")
    print("spikes and noise (`opzo.diagnostics.gradient_alignment`). fc1 and fc2 feed the hidden layers;")
    print("fc3 is the readout, whose gradient is exact in every method. Paper (figure 4): OPZO 0.5-0.9")
    print("per layer, DFA below 0.1.\n")
    print("| batch | opzo fc1 | opzo fc2 | dfa fc1 | dfa fc2 |")
    print("|---|---|---|---|---|")
    for (step, o), (_, d) in zip(curves["opzo"], curves["dfa"]):
        print(f"| {step} | {o['fc1.weight']:.3f} | {o['fc2.weight']:.3f} | {d['fc1.weight']:.3f} | {d['fc2.weight']:.3f} |")


if __name__ == "__main__":
    main()
