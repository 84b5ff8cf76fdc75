"""Memory-light feedback: bytes of M, step time and gradient agreement of each layout.

1. Bytes of M for NF-ResNet-34 at 224x224 with 1000 classes, from the shapes the session
   discovers (``max_feedback_gb`` makes the session refuse before allocating the dense one), and
   an allocation of each layout that fits in this machine's memory.
2. On the 5-layer conv net (32x32, B=32, T=6; random data), OPZO with dense M and with
   ``feedback_matrix="channel"``, same seed and same noise: ms per step (interleaved runs, median),
   and the cosine of the weight gradients per layer between the two layouts and to online BP's,
   after a warm-up that lets M build up (momentum 0.99; no weight updates, so all runs see the
   same weights).

    python benchmarks/feedback_memory.py
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import opzo_ext as opzo
from opzo_ext.errors import OpzoError
from opzo_ext.models import conv5, nf_resnet34


def sizes() -> None:
    net = nf_resnet34(num_classes=1000)
    x = torch.rand(1, 3, 224, 224)
    try:
        opzo.train(net, method="opzo", max_feedback_gb=1e-3, example_input=x).open()
    except OpzoError as exc:
        print("dense :", str(exc).split(", more than")[0])
    with opzo.train(net, method="opzo", feedback_matrix="channel", example_input=x) as s:
        entries = sum(m.numel() for m in s.feedback.values())
        print(f"channel: {entries:,} entries, {4 * entries / 1e6:.1f} MB float32 (allocated)")


def conv_comparison(warmup: int = 4, repeats: int = 3) -> None:
    T, B = 6, 32
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(B, 3, 32, 32, generator=g) * 2, torch.randint(0, 10, (B,), generator=g))
            for _ in range(warmup + 1)]
    grads, times = {}, {"dense": [], "channel": []}
    for rep in range(repeats):
        layouts = ("dense", "channel") if rep % 2 == 0 else ("channel", "dense")
        for layout in layouts + (("bp",) if rep == 0 else ()):
            torch.manual_seed(0)
            net = conv5(num_classes=10)
            options = dict(method="bp") if layout == "bp" else dict(method="opzo", feedback_matrix=layout)
            with opzo.train(net, momentum=0.99, seed=1, **options):
                for i, (x, y) in enumerate(data):
                    last = i == len(data) - 1
                    if last:
                        net.zero_grad()
                        start = time.perf_counter()
                    for t in range(T):
                        F.cross_entropy(net(x), y).backward()
                    if last and layout in times:
                        times[layout].append(1000 * (time.perf_counter() - start) / T)
                    functional.reset_net(net)
                if rep == 0:
                    grads[layout] = {n: p.grad.clone() for n, p in net.named_parameters() if p.dim() > 1}
    for layout, t in times.items():
        print(f"{layout:8s} {sorted(t)[len(t) // 2]:7.1f} ms/step")
    def cos(a, b, name):
        return F.cosine_similarity(grads[a][name].flatten(), grads[b][name].flatten(), dim=0).item()

    print(f"gradient cosine per weight: {'channel~dense':>14s} {'dense~bp':>9s} {'channel~bp':>11s}")
    for name in grads["dense"]:
        print(f"  {name:24s} {cos('channel', 'dense', name):14.3f} {cos('dense', 'bp', name):9.3f} "
              f"{cos('channel', 'bp', name):11.3f}")


if __name__ == "__main__":
    sizes()
    conv_comparison()
