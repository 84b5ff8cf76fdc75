"""Third-party setups, unmodified but for the two added lines, trained by every method at one budget:
the original BPTT, online BP (OTTT), OPZO (default and the paper's feedback scale), DFA, DKP, ZO and
a readout-only control (hidden layers frozen, readout trained by online BP), which shows what the
hidden-layer feedback is worth; OPZO with local learning (appendix C.1) and local learning alone
(no error from the output reaches the hidden layers), which shows what OPZO's feedback adds to it.
Writes one JSON line per run to ``--runs`` (runs already there are skipped, so an interrupted
benchmark resumes) and the table to ``--out``.

    .venv/bin/python benchmarks/third_party.py                      # every setup, ~45 min on 2 CPU cores
    .venv/bin/python benchmarks/third_party.py --setups t6 --variants bp opzo
    .venv/bin/python benchmarks/third_party.py --table-only         # rewrite the table from the runs

The setups live in ``examples/third_party/`` (their headers name the source and what differs).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _controls import noise_only  # noqa: E402 (benchmarks/ is on the path)
from _runs import append_run, check_destinations, load_runs, write_page  # noqa: E402

# setup key -> (module, title, budget keywords of run(), setup overrides, what the budget is)
SETUPS = {
    "t5": ("snntorch_tutorial5", "snnTorch tutorial 5 (FC 784-1000-10, CE on membrane, Adam 5e-4)",
           dict(train_samples=6000, test_samples=1000), {}, "MNIST 6000 / 1000, T = 25, 1 epoch"),
    "t6": ("snntorch_tutorial6", "snnTorch tutorial 6 (CSNN, `ce_rate_loss`, Adam 1e-2)",
           dict(train_samples=6000, test_samples=1000), {}, "MNIST 6000 / 1000, T = 25, 1 epoch"),
    "t7": ("snntorch_tutorial7", "snnTorch tutorial 7 (CSNN, `mse_count_loss`, Adam) on simulated N-MNIST",
           dict(train_samples=2000, test_samples=500),
           dict(time_window=20000, filter_time=None, lr=2e-3, batch_size=16),
           "simulated N-MNIST 2000 / 500, 20 ms frames (~15 steps), lr 2e-3, batch 16, 1 epoch"),
    "sj": ("spikingjelly_conv_fashion_mnist", "SpikingJelly `conv_fashion_mnist.py` (CSNN, BN, IF, MSE on rate, SGD 0.1)",
           dict(train_samples=4000, test_samples=1000), dict(channels=64),
           "Fashion-MNIST 4000 / 1000, T = 4, 1 epoch, `-channels 64` (the example's default is 128)"),
    "sj-full": ("spikingjelly_conv_fashion_mnist",
                "SpikingJelly `conv_fashion_mnist.py`, one full epoch (468 SGD steps instead of 31)",
                dict(train_samples=60000, test_samples=10000), dict(channels=64),
                "Fashion-MNIST 60000 / 10000, T = 4, 1 epoch, `-channels 64`"),
}
# variant -> (method, session options, readout only)
VARIANTS = {
    "bptt": (None, {}, False),
    "bp": ("bp", {}, False),
    "opzo": ("opzo", {}, False),
    "opzo-corrected": ("opzo", {"feedback_scale": "corrected"}, False),
    "opzo-paper": ("opzo", {"feedback_scale": "paper"}, False),
    "opzo-m0.9999": ("opzo", {"momentum": 0.9999}, False),  # a shorter memory of M (window ~1e4 updates)
    "opzo-m0.999": ("opzo", {"momentum": 0.999}, False),  # window ~1e3 updates
    "dfa": ("dfa", {}, False),
    "dkp": ("dkp", {}, False),
    "zo": ("zo", {}, False),
    "readout-only": ("bp", {}, True),
    "opzo-local": ("opzo", {"local": True}, False),  # with local learning (appendix C.1)
    "local-only": ("none", {"local": True}, False),  # local learning alone: no error from the output
    "local-noise": ("opzo", {"local": True}, False),  # ... with OPZO's noise, M held at zero (_controls.NoiseOnly)
    "noise-only": ("opzo", {}, False),  # OPZO's noise, M held at zero: no hidden-layer learning at all
    "opzo-noisy-bn": ("opzo", {"recompute_bn": False}, False),  # BatchNorm statistics left with the noise
    "opzo-bn": ("opzo", {}, False),  # then opzo.update_bn: BatchNorm statistics without the noise
    "noise-only-bn": ("opzo", {}, False),
    "opzo-local-bn": ("opzo", {"local": True}, False),
    "opzo-bn-m0.999": ("opzo", {"momentum": 0.999}, False),  # a shorter memory of M, with update_bn
    "opzo-bn-m0.99": ("opzo", {"momentum": 0.99}, False),
}
NOISE_ONLY = ("local-noise", "noise-only", "noise-only-bn")  # the variants whose "opzo" is _controls.NoiseOnly
UPDATE_BN = ("opzo-bn", "noise-only-bn", "opzo-local-bn", "opzo-bn-m0.999", "opzo-bn-m0.99")  # run(..., update_bn=True) (setups with BatchNorm)
LABELS = {"bptt": "BPTT (original)", "opzo-paper": "opzo, `feedback_scale=\"paper\"`",
          "opzo-corrected": "opzo, `feedback_scale=\"corrected\"`",
          "opzo-m0.9999": "opzo, `momentum=0.9999`", "opzo-m0.999": "opzo, `momentum=0.999`",
          "readout-only": "readout only (control)", "opzo-local": "opzo + local learning",
          "local-only": "local learning alone (control: no output error reaches the hidden layers)",
          "local-noise": "local learning with OPZO's noise, no feedback (control)",
          "noise-only": "OPZO's noise, no feedback (control: readout learns under the noise)",
          "opzo-noisy-bn": "opzo, `recompute_bn=False` (BatchNorm statistics left with the noise)",
          "opzo-bn": "opzo, then `opzo.update_bn` (first 16 training batches)",
          "noise-only-bn": "OPZO's noise, no feedback, then `opzo.update_bn` (control)",
          "opzo-local-bn": "opzo + local learning, then `opzo.update_bn`",
          "opzo-bn-m0.999": "opzo, `momentum=0.999`, then `opzo.update_bn`",
          "opzo-bn-m0.99": "opzo, `momentum=0.99`, then `opzo.update_bn`"}


def run_one(setup: str, variant: str, seed: int, data_root: str) -> dict:
    module, _, budget, overrides, _ = SETUPS[setup]
    run = importlib.import_module(f"examples.third_party.{module}").run
    method, options, readout_only = VARIANTS[variant]
    options = dict(options)
    local = options.pop("local", False)
    with noise_only() if variant in NOISE_ONLY else contextlib.nullcontext():
        bn = {"update_bn": True} if variant in UPDATE_BN else {}
        res = run(method, seed=seed, readout_only=readout_only, local=local,
                  options={**options, "seed": seed} if method else None, data_root=data_root, **budget, **overrides,
                  **bn)
    res.pop("losses", None)
    return {"setup": setup, "variant": variant, "seed": seed, **res}


def table(runs: dict, seeds: list[int]) -> str:
    lines = ["# Third-party setups: every method at the same budget", "",
             "Each setup is another project's training script reproduced in `examples/third_party/`: its",
             "network, neurons, loss, optimizer, learning rate, time steps and loop, with OPZO added the way a",
             "user would (`import opzo_ext as opzo` and one `with opzo.train(net, method=...)`). Test accuracy",
             "(%) after one epoch on the stated subset, mean over seeds "
             f"{', '.join(map(str, seeds))}; the same initial weights and batch order for every method.",
             "`readout only` freezes every layer but the readout and trains it with online BP: what the",
             "network reaches without any hidden-layer learning. `opzo + local learning` adds the paper's local",
             "learning (appendix C.1: a readout per hidden layer trained by its own loss, which also reaches",
             "the layer; two more changes to the loop, `local=True, optimizer=...` and `+ session.local_loss(y)`);",
             "`local learning alone` is its control, with no error from the output reaching the hidden layers",
             "(`method=\"none\", local=True`). `OPZO's noise, no feedback` injects OPZO's noise with `M` held at",
             "zero (`benchmarks/_controls.py`): what OPZO's feedback adds beyond its noise. On SpikingJelly's",
             "example, the only setup with BatchNorm, the sessions of OPZO and ZO recompute BatchNorm's",
             "running statistics without the noise from their last 8 training batches when the block exits",
             "(`recompute_bn`, the default); `recompute_bn=False` leaves them with the noise, and rows ending in",
             "`then opzo.update_bn` recompute them once more from the first 16 training batches.",
             "Command: `benchmarks/third_party.py`.", ""]
    for setup, (_, title, _, _, budget) in SETUPS.items():
        rows = [(v, [runs[setup, v, s] for s in seeds if (setup, v, s) in runs]) for v in VARIANTS]
        rows = [(v, rs) for v, rs in rows if rs]
        if not rows:
            continue
        lines += [f"## {title}", "", f"Budget: {budget}.", "",
                  "| method | test accuracy (%) | per seed | last batch loss | training s |", "|---|---|---|---|---|"]
        for v, rs in rows:
            accs = [r["accuracy"] for r in rs]
            lines.append(f"| {LABELS.get(v, v)} | {sum(accs) / len(accs):.1f} | {' / '.join(f'{a:.1f}' for a in accs)} | "
                         f"{sum(r['final_loss'] for r in rs) / len(rs):.3f} | {sum(r['seconds'] for r in rs) / len(rs):.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", type=Path, default=ROOT / "docs/results/third_party_runs.jsonl",
                   help="one JSON line per run; runs already there are not repeated")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/third_party.md")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--table-only", action="store_true", help="only rewrite --out from --runs")
    args = p.parse_args(argv)
    check_destinations(args.runs, args.out)
    runs = load_runs(args.runs, lambda r: (r["setup"], r["variant"], r["seed"]))
    if not args.table_only:
        for setup in args.setups:
            for variant in args.variants:
                for seed in args.seeds:
                    if (setup, variant, seed) in runs:
                        continue
                    start = time.perf_counter()
                    r = runs[setup, variant, seed] = run_one(setup, variant, seed, args.data_root)
                    append_run(args.runs, r)
                    print(f"{setup:3s} {variant:13s} seed {seed}: {r['accuracy']:5.1f}%  "
                          f"({time.perf_counter() - start:.0f} s)", flush=True)
    write_page(args.out, table(runs, args.seeds))


if __name__ == "__main__":
    main()
