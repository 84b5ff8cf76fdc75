"""Memory-light feedback: bytes of M, step time and gradient agreement of each ``feedback_matrix``.

1. ``sizes``: bytes of M for NF-ResNet-34 at 224x224 with 1000 classes, from the shapes the
   session discovers (each layout's own accounting, which the size check uses before allocating),
   checked by allocating every layout that fits in this machine's memory.
2. ``times``: ms per step of OPZO with each layout, relative to dense M and to online BP, on the
   5-layer conv net (32x32, random data) with 10 and with 1000 classes (interleaved runs, median).
3. ``cosine``: the small reproduction of table 4. A network trained with online BP (FC 2x800 on
   MNIST; a small conv net 16C3-AP2-32C3-AP2-FC on Fashion-MNIST) is fine-tuned under deployment
   noise (sigma 1.5, alpha = sigma, noise before the neurons, no antithetic pairs, lam 0.99999).
   a) With the weights frozen, every layout sees the same batches, spikes and noise; the cosine of
      its weight gradients to the dense-M gradients is taken at several batches, and the cosine
      to online BP (``diagnostics.gradient_alignment``) at the last one.
   b) One fine-tuning epoch per layout (AdamW 1e-4): noisy test accuracy before and after.

    python benchmarks/feedback_memory.py > benchmarks/results_feedback_memory.txt
"""
from __future__ import annotations

import argparse
import gc
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader, Subset

import opzo_ext as opzo
from opzo_ext.data import get_dataset
from opzo_ext.diagnostics import gradient_alignment
from opzo_ext.errors import OpzoError
from opzo_ext.losses import instantaneous_loss
from opzo_ext.feedback.sizing import layer_shapes
from opzo_ext.models import conv5, fc_2x800, nf_resnet34, small_conv

LAYOUTS = {  # name -> train() options
    "dense": dict(feedback_matrix="dense"),
    "bf16": dict(feedback_matrix="bf16"),
    "channel": dict(feedback_matrix="channel"),
    "lowrank64": dict(feedback_matrix="lowrank", feedback_rank=64),
    "lowrank4": dict(feedback_matrix="lowrank", feedback_rank=4),
    "lowrank2": dict(feedback_matrix="lowrank", feedback_rank=2),
    "lowrank1": dict(feedback_matrix="lowrank", feedback_rank=1),
}
T, SIGMA, LAM = 6, 1.5, 0.99999


def sizes() -> None:
    print("## Bytes of M: NF-ResNet-34, 224x224, 1000 classes\n")
    net, x = nf_resnet34(num_classes=1000), torch.rand(1, 3, 224, 224)
    with opzo.train(net, method="opzo", feedback_matrix="channel", example_input=x) as s:
        dense_shapes = layer_shapes(s.topology, s.flow.neurons)  # [n_l, m] per hidden layer
        channel = sum(m.numel() * m.element_size() for m in s.feedback.values())
    print("| layout | bytes (from shapes) | allocated here |\n|---|---|---|")
    for name in ("dense", "bf16", "channel", "lowrank64"):
        options = LAYOUTS[name]
        try:
            opzo.train(net, method="opzo", max_feedback_gb=1e-6, example_input=x, **options).open()
            computed = 0.0
        except OpzoError as exc:
            computed = float(str(exc).split("take ")[1].split(" GB")[0])
        if name == "bf16":
            with opzo.train(net, method="opzo", max_feedback_gb=8, example_input=x, **options) as s:
                got = sum(m.numel() * m.element_size() for m in s.method.matrices.values())
            allocated = f"{got / 1e9:.2f} GB"
        elif name == "channel":
            allocated = f"{channel / 1e6:.1f} MB"
        elif name == "lowrank64":  # the factors at full rank (rank grows from 0 during training)
            factors = [(torch.empty(n, 64), torch.empty(m, 64)) for n, m in dense_shapes.values()]
            allocated = f"{sum(a.numel() + b.numel() for a, b in factors) * 4 / 1e9:.2f} GB"
            del factors
        else:
            allocated = "not allocated (11.7 GB)"
        label = f"{computed:.2f} GB" if computed >= 0.01 else "see allocated"
        print(f"| {name} | {label} | {allocated} |")
        gc.collect()
    print()


def times(repeats: int = 3) -> None:
    print("## ms per step (conv5, 32x32, random data; median of interleaved runs)\n")
    print("| classes | B | layout | ms/step | x dense | x bp |\n|---|---|---|---|---|---|")
    for classes, batch in ((10, 32), (1000, 16)):
        g = torch.Generator().manual_seed(0)
        data = [(torch.rand(batch, 3, 32, 32, generator=g) * 2, torch.randint(0, classes, (batch,), generator=g))
                for _ in range(2)]
        names = ("bp", "dense", "channel", "bf16", "lowrank64")
        ms = {n: [] for n in names}
        for rep in range(repeats):
            for name in names if rep % 2 == 0 else names[::-1]:
                torch.manual_seed(0)
                net = conv5(num_classes=classes)
                options = dict(method="bp") if name == "bp" else dict(method="opzo", momentum=0.99, **LAYOUTS[name])
                with opzo.train(net, seed=1, max_feedback_gb=4, **options):
                    for i, (x, y) in enumerate(data):  # the first batch builds M, the second is timed
                        start = time.perf_counter()
                        for _ in range(T):
                            F.cross_entropy(net(x), y).backward()
                        functional.reset_net(net)
                    ms[name].append(1000 * (time.perf_counter() - start) / T)
                del net
                gc.collect()
        med = {n: sorted(v)[len(v) // 2] for n, v in ms.items()}
        for name in names:
            print(f"| {classes} | {batch} | {name} | {med[name]:.1f} | {med[name] / med['dense']:.2f} | "
                  f"{med[name] / med['bp']:.2f} |", flush=True)
    print()


def small_conv_pooled() -> torch.nn.Module:
    """16C3-AP2-32C3-AP2-GAP-FC: global average pooling before the readout (as conv5 and NF-ResNet)."""
    return small_conv(fc_hw=1)


def loaders(dataset: str, root: str, train_samples: int):
    """A function giving the training batches, in the same order at every call, and the test loader."""
    train = get_dataset(dataset, root, train=True)
    train = Subset(train, range(min(train_samples, len(train))))

    def batches():
        return DataLoader(train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))

    return batches, DataLoader(get_dataset(dataset, root, train=False), batch_size=500)


def sequence(net, x, y) -> None:
    functional.reset_net(net)
    for _ in range(T):
        instantaneous_loss(net(x), y, 0.05, steps=T).backward()
    functional.reset_net(net)


def accuracy(net, test, sigma: float | None = None) -> float:
    net.eval()
    correct = 0
    with torch.no_grad(), (opzo.noisy(net, sigma, seed=0) if sigma else nullcontext()):
        for x, y in test:
            functional.reset_net(net)
            correct += (sum(net(x) for _ in range(T)).argmax(1) == y).sum().item()
    functional.reset_net(net)
    net.train()
    return correct / len(test.dataset)


def pretrain(make, train, epochs: int, lr: float) -> dict:
    torch.manual_seed(0)
    net = make()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    with opzo.train(net, method="bp"):
        for _ in range(epochs):
            for x, y in train():
                sequence(net, x, y)
                optimizer.step()
                optimizer.zero_grad()
    return net.state_dict()


def session_options(layout: str) -> dict:
    return dict(method="opzo", alpha=SIGMA, inject="before", antithetic=False, momentum=LAM, seed=3,
                **LAYOUTS[layout])


def frozen_cosines(make, weights, train, layouts, at=(10, 50, 150)) -> None:
    grads, to_bp = {}, {}
    for layout in layouts:
        net = make()
        net.load_state_dict(weights)
        with opzo.train(net, **session_options(layout)) as s:
            for b, (x, y) in enumerate(train()):
                if b == at[-1]:
                    to_bp[layout] = gradient_alignment(s, lambda: sequence(net, x, y))
                    break
                net.zero_grad()
                sequence(net, x, y)
                if b + 1 in at:
                    grads[layout, b + 1] = {n: p.grad.clone() for n, p in net.named_parameters() if p.dim() > 1}
    names = [n for n in grads["dense", at[0]] if n.endswith(".weight")][:-1]  # hidden weights (the readout is exact BP)
    print("| layout | " + " | ".join(f"{n} @{b}" for b in at for n in names) + " | " +
          " | ".join(f"{n} to bp" for n in names) + " |")
    print("|---|" + "---|" * (len(names) * (len(at) + 1)))
    for layout in layouts:
        cells = [F.cosine_similarity(grads[layout, b][n].flatten(), grads["dense", b][n].flatten(), dim=0).item()
                 for b in at for n in names]
        cells += [to_bp[layout][n] for n in names]
        print(f"| {layout} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
    print()


def finetune(make, weights, train, test, layouts) -> None:
    net = make()
    net.load_state_dict(weights)
    print(f"clean {100 * accuracy(net, test):.2f}%, noisy before {100 * accuracy(net, test, SIGMA):.2f}%\n")
    print("| layout | noisy acc. after |\n|---|---|")
    for layout in layouts:
        net = make()
        net.load_state_dict(weights)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
        with opzo.train(net, **session_options(layout)):
            for x, y in train():
                sequence(net, x, y)
                optimizer.step()
                optimizer.zero_grad()
        print(f"| {layout} | {100 * accuracy(net, test, SIGMA):.2f} |", flush=True)
    print()


CASES = {  # name -> (title, model, data set, training images, pre-training epochs and lr, layouts)
    "fc": ("FC 2x800, MNIST", lambda: fc_2x800(dropout=0.0), "mnist", 30000, 1, 1e-3,
           ("dense", "bf16", "lowrank4", "lowrank2", "lowrank1")),
    "conv": ("16C3-AP2-32C3-AP2-FC, Fashion-MNIST", small_conv, "fashion-mnist", 20000, 1, 1e-3,
             ("dense", "bf16", "channel", "lowrank4", "lowrank2", "lowrank1")),
    "conv_pooled": ("16C3-AP2-32C3-AP2-GAP-FC, Fashion-MNIST", small_conv_pooled, "fashion-mnist", 20000, 4, 3e-3,
                    ("dense", "channel", "lowrank4", "lowrank1")),
}


def cosine(root: str, cases: list[str]) -> None:
    for title, make, dataset, samples, epochs, lr, layouts in (CASES[c] for c in cases):
        print(f"## {title}: trained with online BP ({samples} images, {epochs} epoch(s), AdamW {lr:g}), "
              f"fine-tuned at sigma {SIGMA}\n")
        train, test = loaders(dataset, root, samples)
        weights = pretrain(make, train, epochs, lr)
        print("Gradient cosine to dense M (frozen weights, same batches and noise; @b = after b batches)"
              " and to online BP at the last batch:\n")
        frozen_cosines(make, weights, train, layouts)
        print("One fine-tuning epoch under the noise:\n")
        finetune(make, weights, train, test, layouts)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="sizes,times,cosine")
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES), help="cosine: which networks")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("# Memory-light feedback matrices (`benchmarks/feedback_memory.py`)\n")
    for part in args.parts.split(","):
        {"sizes": sizes, "times": times, "cosine": lambda: cosine(args.data_root, args.cases.split(","))}[part]()
