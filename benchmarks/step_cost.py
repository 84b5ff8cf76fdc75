"""Per-step wall time and peak memory of opzo, dfa, zo, our online BP and SpikingJelly's
OTTTSequential, on the same models, printed as ratios to our BP.

Cases (the core-engine issue):
  fc   : FC 784-800-800-10, B=128, T=30
  conv : 128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC10 (scaled WS convs) on 32x32x3, B=32, T=6

Each (case, method) runs in its own subprocess so that peak memory (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) belongs to that method alone. Memory is reported as
the growth of the peak over the process's footprint after building model, optimizer and data.
Runs are repeated (``--repeats``) with the method order rotated; medians are reported.
Because RSS is coarse, the exact activation memory is reported too: the bytes autograd saves for
backward in one time step (distinct storages, parameters excluded) plus the state a method keeps
across steps (feedback matrices, stored antithetic noise; OTTT's traces).

    python benchmarks/step_cost.py                 # both cases, CPU
    python benchmarks/step_cost.py --case conv --device cuda --batch 128
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

METHODS = ("opzo", "dfa", "zo", "bp", "ottt")
CASES = {"fc": dict(batch=128, steps=30), "conv": dict(batch=32, steps=6)}


def build(case: str, ottt: bool):
    """The case's network from SpikingJelly modules: LIF (tau=2, soft reset, sigmoid surrogate a=4);
    OTTTSequential + OTTTLIFNode for the peer, plain Sequential + LIFNode for opzo_ext."""
    import torch
    from spikingjelly.activation_based import layer, neuron, surrogate
    from torch import nn

    def lif():
        kw = dict(surrogate_function=surrogate.Sigmoid(alpha=4.0))
        if ottt:
            return neuron.OTTTLIFNode(**kw)
        return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=None, detach_reset=True, **kw)

    torch.manual_seed(0)
    if case == "fc":
        mods = [layer.Flatten(), layer.Linear(784, 800), lif(), layer.Linear(800, 800), lif(), layer.Linear(800, 10)]
        shape = (784,)
    else:
        mods, c_in = [], 3
        for i, c in enumerate((128, 256, 512, 512)):
            mods += [layer.WSConv2d(c_in, c, 3, padding=1), lif()]
            if i < 3:
                mods.append(layer.AvgPool2d(2))
            c_in = c
        mods += [layer.Flatten(), layer.Linear(512 * 4 * 4, 10)]
        shape = (3, 32, 32)
    return (layer.OTTTSequential if ottt else nn.Sequential)(*mods), shape


def run_one(case: str, method: str, device: str, batch: int, steps: int, iters: int) -> dict:
    """Time ``iters`` training iterations (after one warm-up) of one method; one process each."""
    import torch
    import torch.nn.functional as F
    from spikingjelly.activation_based import functional

    import opzo_ext as opzo

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    net, shape = build(case, ottt=method == "ottt")
    net.to(device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(steps, batch, *shape, generator=g) * 1.5).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def loss(out):  # zo needs each sample's loss; the others backpropagate the mean as usual
        if method == "zo":
            return session.loss(F.cross_entropy(out, y, reduction="none"))
        return F.cross_entropy(out, y)

    def iteration():
        for t in range(steps):
            loss(net(x[t])).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        functional.reset_net(net)

    def saved_bytes() -> int:
        """Largest sum over one time step of the (distinct, non-parameter) tensors autograd saves
        for backward: the activation memory of a step, measured exactly."""
        params = {p.untyped_storage().data_ptr() for p in net.parameters()}
        per_step = []

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                per_step[-1][ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            for t in range(steps):
                per_step.append({})
                loss(net(x[t])).backward()
        opt.zero_grad(set_to_none=True)
        functional.reset_net(net)
        return max(sum(d.values()) for d in per_step)

    def state_bytes() -> int:
        """Session state kept across steps: feedback matrices, stored noise, traces."""
        if session is None:  # OTTT keeps its traces in the neurons' memories
            return sum(v.numel() * v.element_size() for m in net.modules()
                       for k, v in getattr(m, "_memories", {}).items() if k == "trace" and torch.is_tensor(v))
        total = sum(m.numel() * m.element_size() for m in session.feedback.values())
        for rec in session.flow.neurons.values():
            if rec.noise.last is not None:
                total += rec.noise.last.numel() * rec.noise.last.element_size()
        return total

    session = None if method == "ottt" else opzo.train(net, method=method).open()
    try:
        sync()
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base_cuda = torch.cuda.memory_allocated()
        iteration()  # warm-up (and discovery)
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            iteration()
        sync()
        elapsed = time.perf_counter() - start
        for t in range(steps - 1):  # leave the sequence mid-way to see the stored noise of a pair
            net(x[t])
        state = state_bytes()
        opt.zero_grad(set_to_none=True)
        functional.reset_net(net)
        activations = saved_bytes()
    finally:
        if session is not None:
            session.close()
    peak_mb = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20 if cuda else \
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {"case": case, "method": method, "ms_per_step": 1000 * elapsed / (iters * steps), "peak_mb": peak_mb,
            "saved_mb": activations / 2**20, "state_mb": state / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="override the case's batch size")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per run (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per method, interleaved across methods; the median is reported")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        case, method = args._child.split(":")
        conf = CASES[case]
        print(json.dumps(run_one(case, method, args.device, args.batch or conf["batch"], conf["steps"], args.iters)))
        return

    results = []
    methods = args.methods.split(",")
    for case in (CASES if args.case == "all" else [args.case]):
        runs = {m: [] for m in methods}
        for rep in range(args.repeats):
            for method in methods[rep % len(methods):] + methods[:rep % len(methods)]:  # rotate the order
                cmd = [sys.executable, __file__, "--_child", f"{case}:{method}", "--device", args.device,
                       "--iters", str(args.iters)] + (["--batch", str(args.batch)] if args.batch else [])
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                runs[method].append(json.loads(out))
                print(f"  {case:5s} {method:5s} run {rep + 1}: {runs[method][-1]['ms_per_step']:9.1f} ms/step "
                      f"{runs[method][-1]['peak_mb']:8.0f} MB", file=sys.stderr, flush=True)
        for method in methods:
            times = sorted(r["ms_per_step"] for r in runs[method])
            mems = sorted(r["peak_mb"] for r in runs[method])
            results.append({"case": case, "method": method, "ms_per_step": times[len(times) // 2],
                            "peak_mb": mems[len(mems) // 2], "saved_mb": runs[method][0]["saved_mb"],
                            "state_mb": runs[method][0]["state_mb"], "runs": runs[method]})
    print(f"\n{'case':5s} {'method':6s} {'ms/step':>9s} {'x bp':>6s} {'x ottt':>7s} {'peak MB':>8s} {'mem x bp':>9s}"
          f" {'saved+state MB':>15s} {'x bp':>6s}")
    for case in {r["case"]: None for r in results}:
        rows = {r["method"]: r for r in results if r["case"] == case}
        bp, ottt = rows.get("bp"), rows.get("ottt")
        for method, r in rows.items():
            tb = r["ms_per_step"] / bp["ms_per_step"] if bp else float("nan")
            to = r["ms_per_step"] / ottt["ms_per_step"] if ottt else float("nan")
            mb = r["peak_mb"] / bp["peak_mb"] if bp and bp["peak_mb"] > 0 else float("nan")
            exact = r["saved_mb"] + r["state_mb"]
            eb = exact / (bp["saved_mb"] + bp["state_mb"]) if bp else float("nan")
            print(f"{case:5s} {method:6s} {r['ms_per_step']:9.1f} {tb:6.2f} {to:7.2f} {r['peak_mb']:8.0f} {mb:9.2f}"
                  f" {exact:15.1f} {eb:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
