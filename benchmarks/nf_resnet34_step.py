"""One OPZO fine-tuning iteration of NF-ResNet-34 (1000 classes, T = 6) per feedback layout:
peak memory and time per time step, relative to online spatial BP on the same model and data.

The recipe is table 4's: noise before the neurons with alpha = sigma = 0.1, no antithetic pairs,
AdamW (lr 2e-6, no weight decay), random images and labels. Each layout runs one warm-up iteration
(T steps and an optimizer step, which also creates AdamW's state) and one timed iteration.

    python benchmarks/nf_resnet34_step.py --device cuda --batch 64          # the GPU check (24 GB?)
    python benchmarks/nf_resnet34_step.py --device cpu --batch 2            # CPU: exact bytes, scaled

On a GPU the peak is ``torch.cuda.max_memory_allocated`` over both iterations (model, gradients,
optimizer state, M and activations). On CPU, where no allocator reports a peak, the script counts
exact bytes instead: parameters, gradients and AdamW's two moments, the feedback matrices at full
rank, and the tensors autograd saves in one time step (distinct storages, parameters excluded,
traces included), then scales the last term, the only one that grows with the batch, to
``--target-batch``. That estimate leaves out allocator slack and short-lived temporaries.
"""
from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

import opzo_ext as opzo
from opzo_ext.models import nf_resnet34

LAYOUTS = {"bp": dict(method="bp"), "dense": dict(feedback_matrix="dense"), "bf16": dict(feedback_matrix="bf16"),
           "channel": dict(feedback_matrix="channel"), "lowrank": dict(feedback_matrix="lowrank", feedback_rank=64)}
T, SIGMA, CLASSES = 6, 0.1, 1000


def reset(net) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(net)


def run(layout: str, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = nf_resnet34(num_classes=CLASSES).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-6, weight_decay=0.0)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, CLASSES, (args.batch,), device=device)
    options = dict(LAYOUTS[layout])
    options = options if options.get("method") == "bp" else dict(method="opzo", alpha=SIGMA, inject="before",
                                                                 antithetic=False, **options)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    saved: list[dict] = []
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if saved and ptr not in params:
            saved[-1][ptr] = t.untyped_storage().nbytes()
        return t

    seconds = 0.0
    with opzo.train(net, max_feedback_gb=args.max_feedback_gb, seed=1, **options) as session:
        for it in range(2):
            saved.clear()  # count the timed iteration only (the first one also runs the discovery probe)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                for _ in range(T):
                    saved.append({})
                    F.cross_entropy(net(x), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as in a training loop
            reset(net)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start  # the second (timed) iteration's
        feedback = feedback_bytes(session, x)
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    result = {"layout": layout, "ms_per_step": 1000 * seconds / T, "params": weights,
              "grads_and_adam": 3 * weights, "feedback": feedback,
              "activations": max(sum(d.values()) for d in saved)}
    if cuda:
        result["peak"] = torch.cuda.max_memory_allocated()
    del net, optimizer, session
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def feedback_bytes(session, like: torch.Tensor) -> int:
    """Bytes of the stored feedback matrices; low-rank factors counted at their full rank."""
    total = 0
    for m in session.method.matrices.values():
        if isinstance(m, tuple):
            total += session.method.matrix_bytes((m[0].shape[0], m[1].shape[0]), like)
        else:
            total += m.numel() * m.element_size()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on a GPU, 2 on CPU")
    p.add_argument("--target-batch", type=int, default=64, help="CPU: scale the activations to this batch")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--layouts", default=None, help="comma-separated; default all (CPU: without dense, 11.7 GB)")
    p.add_argument("--max-feedback-gb", type=float, default=16.0)
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (64 if cuda else 2)
    names = args.layouts.split(",") if args.layouts else [n for n in LAYOUTS if cuda or n != "dense"]
    print(f"# NF-ResNet-34, {args.size}x{args.size}, {CLASSES} classes, T = {T}, batch {args.batch}, "
          f"{args.device}" + ("" if cuda else f" (bytes scaled to batch {args.target_batch})") + "\n")
    results = []
    for name in names:
        results.append(run(name, args))
        print(f"  {name}: {results[-1]}", flush=True)
    bp = next((r for r in results if r["layout"] == "bp"), None)
    gb = 1e9
    scale = 1 if cuda else args.target_batch / args.batch
    print("\n| layout | M (GB) | activations per step (GB) | params+grads+AdamW (GB) | "
          + ("peak allocated (GB)" if cuda else f"estimated total at batch {args.target_batch} (GB)")
          + " | ms/step | x bp |\n|---|---|---|---|---|---|---|")
    for r in results:
        total = r["peak"] if cuda else r["params"] + r["grads_and_adam"] + r["feedback"] + scale * r["activations"]
        ratio = f"{r['ms_per_step'] / bp['ms_per_step']:.2f}" if bp else "-"
        print(f"| {r['layout']} | {r['feedback'] / gb:.3f} | {scale * r['activations'] / gb:.2f} | "
              f"{(r['params'] + r['grads_and_adam']) / gb:.2f} | {total / gb:.2f} | {r['ms_per_step']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
