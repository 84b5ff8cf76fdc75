"""Fine-tuning under deployment noise with the readout-only control: what the hidden layers' updates
are worth, and how much of it each method captures.

A network trained with online BP (no noise) is deployed under ``sigma * N(0, 1)`` on every spiking
neuron's input current (:func:`opzo_ext.noisy`) and fine-tuned for one epoch under that noise by
``opzo-finetune``. Beside the methods, the control ``--readout-only`` trains only the readout with
its exact gradient under the noise: ``bp - readout-only`` is what bp's hidden-layer updates add, and
each method's share of it is ``(method - readout-only) / (bp - readout-only)`` (accuracy under noise
after fine-tuning).

    opzo-train --preset mnist --method bp --epochs 5 --out runs/table1/mnist-bp      # the model
    .venv/bin/python benchmarks/finetune_noise.py                     # ~35 min on one CPU thread
    .venv/bin/python benchmarks/finetune_noise.py --lrs 1e-3 --seeds 0 --variants readout-only bp opzo
    .venv/bin/python benchmarks/finetune_noise.py --table-only        # rewrite the page from the runs

Each run appends one JSON line (``opzo-finetune``'s result plus ``variant``) to ``--runs``; runs
already there are skipped, so an interrupted benchmark resumes. The page ``--out`` is rewritten from
all the runs there; its hand-written reading (after the marker line) is kept.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _runs import append_run, check_destinations, load_runs, write_page  # noqa: E402 (benchmarks/ is on the path)

# variant -> opzo-finetune arguments
VARIANTS = {
    "readout-only": ["--readout-only"],
    "bp": ["--method", "bp"],
    "opzo": ["--method", "opzo"],
    "opzo-paper": ["--method", "opzo", "--feedback-scale", "paper"],
    "dfa": ["--method", "dfa"],
}
LABELS = {"readout-only": "readout only (control)", "opzo": "opzo (`feedback_scale=\"jacobian\"`, default)",
          "opzo-paper": "opzo, `feedback_scale=\"paper\"`"}


def key(r: dict) -> tuple:
    return (r["checkpoint"], r["preset"], float(r["sigma"]), float(r["lr"]), r["epochs"], r["variant"], r["seed"],
            r.get("train_limit"), r.get("limit_test_batches"))


def _limits(train_limit, test_batches) -> list[str]:
    """The opzo-finetune flags of a run on a subset (none for the full data set)."""
    return ([*(["--train-samples", str(train_limit)] if train_limit else []),
             *(["--limit-test-batches", str(test_batches)] if test_batches else [])])


def run_one(args, variant: str, lr: float, seed: int) -> dict:
    from opzo_ext import finetune

    argv = ["--checkpoint", args.checkpoint, "--preset", args.preset, "--sigma", str(args.sigma),
            "--lr", str(lr), "--epochs", str(args.epochs), "--seed", str(seed), "--data-root", args.data_root,
            "--device", args.device, "--quiet", *_limits(args.train_samples, args.limit_test_batches), *VARIANTS[variant]]
    start = time.perf_counter()
    r = finetune.run(finetune.parser().parse_args(argv))
    return {"variant": variant, "train_limit": args.train_samples, **r, "seconds": time.perf_counter() - start}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _share(m: float, ro: float, bp: float) -> str:
    return f"{(m - ro) / (bp - ro):.2f}" if abs(bp - ro) > 1e-12 else "n/a"


def table(runs: dict) -> str:
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in runs.values():
        g = groups.setdefault((r["checkpoint"], r["preset"], float(r["sigma"]), r["epochs"], r.get("train_limit"),
                               r.get("limit_test_batches"), r.get("noise_site", "neuron"), float(r["lr"])), {})
        g.setdefault(r["variant"], []).append(r)
    lines = ["# Fine-tuning under noise: what the hidden layers' updates are worth", "",
             "A network trained with online BP without noise is deployed under `sigma x N(0, 1)` added at every",
             "step to every spiking neuron's input current, or for the NF-ResNet to every convolution's output",
             "(`opzo.noisy`, `site=\"conv\"`), then fine-tuned under that noise. The",
             "control `readout only` (`opzo-finetune --readout-only`) trains only the readout (the last Linear)",
             "with its exact gradient under the noise, every other parameter frozen. `bp - readout only` is",
             "what bp's hidden-layer updates add; the last column is each method's share of it,",
             "`(method - readout only) / (bp - readout only)` on the accuracy under noise after fine-tuning",
             "(1 = all of bp's hidden-layer gain, 0 = no more than retraining the readout).", "",
             "Recipe (`opzo-finetune`): opzo uses the noise itself as its perturbation (`alpha = sigma`,",
             "`inject=\"before\"`, or `inject=\"conv\"` for conv-site noise, no antithetic pairs); bp, dfa and the",
             "control train with the noise in the forward pass. AdamW without weight decay, batch 128, T = 6, one",
             "epoch of the training set (or of the subset a section states). The",
             "noisy test accuracies use the same noise draws before and after (`opzo.noisy(seed=seed)`).",
             "Accuracies in %, on the test set (or its first batches where a section says so), mean over the seeds (the seed sets the batch order, the",
             "training noise and the test noise; the checkpoint is the same). Made by",
             "`benchmarks/finetune_noise.py` from the runs in `finetune_noise_runs.jsonl`; each section lists",
             "the `opzo-finetune` command of its runs (`SEED` = each seed).", ""]
    order = sorted(groups.items(), key=lambda kv: (str(kv[0][:7]), -kv[0][7]))
    for (checkpoint, preset, sigma, epochs, train_limit, test_batches, site, lr), g in order:
        seeds = sorted({r["seed"] for rs in g.values() for r in rs})
        limits = _limits(train_limit, test_batches)
        model = next(iter(g.values()))[0]["model"]
        subset = ""
        if train_limit:
            subset += f", the first {train_limit} training images"
        if test_batches:
            subset += f", tested on the first {test_batches} test batches"
        lines += [f"## {model}, sigma = {sigma} at the {'convolutions' if site == 'conv' else 'neurons'}, lr = {lr:g}",
                  "", f"Checkpoint `{checkpoint}` (preset `{preset}`), {epochs} epoch(s){subset}, seeds "
                  f"{', '.join(map(str, seeds))}:", "",
                  "```bash", *(f"opzo-finetune --checkpoint {checkpoint} --preset {preset} --sigma {sigma} --lr {lr:g} "
                               f"--epochs {epochs} --seed SEED {' '.join([*limits, *VARIANTS[v]])}"
                               for v in VARIANTS if v in g),
                  "```", "",
                  "| method | clean, before | noisy, before | noisy, after | clean, after | share of bp's hidden-layer gain | "
                  "noisy after, per seed | share, per seed |",
                  "|---|---|---|---|---|---|---|---|"]
        by_seed = {v: {r["seed"]: r for r in rs} for v, rs in g.items()}
        ro, bp = g.get("readout-only"), g.get("bp")
        for v in VARIANTS:
            rs = sorted(g.get(v, []), key=lambda r: r["seed"])
            if not rs:
                continue
            col = {c: 100 * _mean([r[c] for r in rs]) for c in ("clean_acc", "noisy_acc_before", "noisy_acc_after",
                                                                  "clean_acc_after")}
            share = per_seed_share = "n/a"
            if ro and bp:
                share = _share(col["noisy_acc_after"], 100 * _mean([r["noisy_acc_after"] for r in ro]),
                               100 * _mean([r["noisy_acc_after"] for r in bp]))
                per_seed_share = " / ".join(
                    _share(r["noisy_acc_after"], by_seed["readout-only"][r["seed"]]["noisy_acc_after"],
                           by_seed["bp"][r["seed"]]["noisy_acc_after"])
                    for r in rs if r["seed"] in by_seed["readout-only"] and r["seed"] in by_seed["bp"]) or "n/a"
            lines.append(f"| {LABELS.get(v, v)} | {col['clean_acc']:.2f} | {col['noisy_acc_before']:.2f} | "
                         f"{col['noisy_acc_after']:.2f} | {col['clean_acc_after']:.2f} | {share} | "
                         f"{' / '.join(format(100 * r['noisy_acc_after'], '.2f') for r in rs)} | {per_seed_share} |")
        if ro and bp:
            gain = 100 * (_mean([r["noisy_acc_after"] for r in bp]) - _mean([r["noisy_acc_after"] for r in ro]))
            lines += ["", f"bp's hidden-layer updates add {gain:+.2f} points over the readout-only control."]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/table1/mnist-bp/checkpoint.pt",
                   help="BP-trained checkpoint (see the module docstring for the command that makes it)")
    p.add_argument("--preset", default="mnist")
    p.add_argument("--sigma", type=float, default=2.0)
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 1e-4])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--runs", type=Path, default=ROOT / "docs/results/finetune_noise_runs.jsonl",
                   help="one JSON line per run; runs already there are not repeated")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/finetune_noise.md")
    p.add_argument("--train-samples", type=int, default=None, help="fine-tune on the first N training images")
    p.add_argument("--limit-test-batches", type=int, default=None, help="test on the first N batches")
    p.add_argument("--data-root", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--table-only", action="store_true", help="only rewrite --out from --runs")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    check_destinations(args.runs, args.out)
    runs = load_runs(args.runs, key)
    if not args.table_only:
        if not Path(args.checkpoint).exists():
            sys.exit(f"no checkpoint at {args.checkpoint}; make it with\n"
                     f"    opzo-train --preset {args.preset} --method bp --epochs 5 --out {Path(args.checkpoint).parent}")
        for lr in args.lrs:
            for seed in args.seeds:
                for variant in args.variants:
                    k = (args.checkpoint, args.preset, args.sigma, lr, args.epochs, variant, seed, args.train_samples,
                         args.limit_test_batches)
                    if k in runs:
                        continue
                    r = runs[k] = run_one(args, variant, lr, seed)
                    append_run(args.runs, r)
                    print(f"lr {lr:g} seed {seed} {variant:12s}: noisy {100 * r['noisy_acc_before']:.2f} -> "
                          f"{100 * r['noisy_acc_after']:.2f}, clean after {100 * r['clean_acc_after']:.2f} "
                          f"({r['seconds']:.0f} s)", flush=True)
    write_page(args.out, table(runs))


if __name__ == "__main__":
    main()
