"""ZO_sp's gradient variance with each sample's own loss (eq. 3) against the batch loss for every
sample, beside online BP's, on the paper's FC net (figure 2's measure: ``GradientVariance``).

    python benchmarks/zo_variance.py --batches 100          # about 3 minutes on 2 CPU cores

The batch-loss estimator is emulated through the same API: every sample is handed the sum of the
batch's losses (with the mean's weight 1/B), which gives each sample's noise ``(L_batch / alpha)``,
while the readout still gets the gradient of the mean loss. Same seed, data order, noise and
weights for each run; AdamW at ZO's learning rate 2e-5, T = 6, batch 128, alpha 0.2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import opzo_ext as opzo  # noqa: E402
from opzo_ext.data import get_dataset  # noqa: E402
from opzo_ext.diagnostics import GradientVariance  # noqa: E402
from opzo_ext.models import fc_2x800  # noqa: E402


def per_sample_losses(out: torch.Tensor, y: torch.Tensor, batch_loss: bool) -> torch.Tensor:
    losses = F.cross_entropy(out, y, reduction="none")
    if not batch_loss:
        return losses
    # the value of every entry is the batch's summed loss; the gradient is that of each sample's own
    return losses.sum().detach().expand_as(losses) + losses - losses.detach()


def run(method: str, batch_loss: bool, args) -> dict[str, float]:
    torch.manual_seed(args.seed)
    net = fc_2x800(in_features=784, dropout=0.0)
    data = get_dataset("mnist", args.data_root, train=True)
    loader = DataLoader(Subset(data, range(args.batches * 128)), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-5 if method == "zo" else 2e-4)
    variance = GradientVariance(net)
    with opzo.train(net, method=method, seed=args.seed, alpha=0.2) as session:
        for x, y in loader:
            x = x.flatten(1)
            functional.reset_net(net)
            for _ in range(6):
                session.loss(per_sample_losses(net(x), y, batch_loss)).div(6).backward()
            variance.update()
            optimizer.step()
            optimizer.zero_grad()
    return variance.result()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=str(ROOT / "data"))
    args = p.parse_args(argv)
    rows = {"bp": run("bp", False, args), "zo, each sample's loss": run("zo", False, args),
            "zo, batch loss for every sample": run("zo", True, args)}
    names = list(rows["bp"])
    print(f"Gradient variance per weight, {args.batches} batches of 128 (MNIST, FC 784-800-800-10, T = 6)\n")
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label, result in rows.items():
        print(f"| {label} | " + " | ".join(f"{result[n]:.3e}" for n in names) + " |")
    per, batch = rows["zo, each sample's loss"], rows["zo, batch loss for every sample"]
    print("\nbatch loss / each sample's loss: " + ", ".join(f"{n} {batch[n] / per[n]:.1f}x" for n in names))


if __name__ == "__main__":
    main()
