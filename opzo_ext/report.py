"""``opzo-report``: the paper's analysis experiments at small scale, written to a Markdown report.

    opzo-report --quick                  # minutes: a smoke test of every part
    opzo-report --epochs 3               # the real run (about an hour on 2 cores)

For FC 2x800 on MNIST (``--dataset fashion-mnist`` for Fashion-MNIST) it trains bp / opzo / dfa /
dkp / zo and records, per method: test accuracy (table 1), firing rate and SynOps per sample on the
test set (table 7), gradient variance per layer over the last epoch (figure 2) and the cosine of
the weight gradients to online BP during training (figure 4, PNG). The paper's figure 4 is a conv
net on CIFAR-100, so the alignment is also measured for opzo and dfa on a small conv net
(16C3-AP2-32C3-AP2-FC) on the same data. Then OPZO sweeps: noise distribution x injection site
(table 2), momentum lam (table 8) and a constant alpha (table 11).

The report goes to a run folder, ``runs/report-DATASET[-quick]/report.md`` with its figures beside
it, unless ``--out`` says otherwise. The destination is checked before the first experiment, and an
existing report (or its figures) is never written over without ``--overwrite``, so regenerating a
committed report takes ``--out docs/results/report.md --overwrite``. A ``--quick`` report says in
its title and first lines that its numbers are a smoke test, not results.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from . import diagnostics
from ._optional import require
from .cli import add_download_option, data_advice, positive_int, replace_atomically, sigterm_unwinds
from .data import get_dataset  # needs opzo_ext[data], and says so
from .errors import OpzoError
from .losses import instantaneous_loss
from .models import fc_2x800, small_conv  # needs opzo_ext[spikingjelly], and says so
from .noise import linear_alpha
from .session import train as opzo_train

functional = require("spikingjelly.activation_based.functional", "opzo-report")
tqdm = require("tqdm", "opzo-report").tqdm

PAPER_TABLE1 = {"bp": 98.38, "opzo": 98.34, "dfa": 98.05, "dkp": 98.15, "zo": 86.53}
PAPER_TABLE7 = {"bp": 0.1734, "opzo": 0.2229, "dfa": 0.2759}  # total firing rate, conv5 on CIFAR-10
# The paper's OPZO sweeps (conv5): table 2 on CIFAR-10, tables 8 and 11 on CIFAR-100.
PAPER_SWEEPS = {
    "noise": ("CIFAR-10", {"gaussian, after": 85.73, "gaussian, before": 84.37, "rademacher, after": 85.69,
                           "rademacher, before": 84.03, "sphere, after": 86.01, "sphere, before": 84.50}),
    "momentum": ("CIFAR-100", {0.0: 16.08, 0.9: 39.05, 0.99: 50.65, 0.999: 58.25, 0.9999: 60.92, 0.99999: 60.93}),
    "alpha": ("CIFAR-100", {1.0: 58.34, 0.2: 61.85, 0.02: 58.33, 0.002: 49.97}),
}


def experiment(method: str, args, monitor: bool = False, model: str = "fc", **options) -> dict:
    """Train FC 2x800 (or ``model="conv"``: :func:`small_conv`, ``args.conv_epochs`` epochs) with
    ``method`` on ``args.dataset``; return accuracy and diagnostics."""
    torch.manual_seed(args.seed)
    epochs = args.epochs if model == "fc" else args.conv_epochs
    dropout = 0.0 if method == "zo" else 0.2
    net = fc_2x800(dropout=dropout) if model == "fc" else small_conv(dropout=dropout)
    lr = 2e-5 if method == "zo" else 2e-4
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=2e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    train_set, test_set = datasets(args)
    loader = DataLoader(train_set, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    options.setdefault("alpha", linear_alpha(0.2, 0.01, epochs))
    options.setdefault("feedback_scale", "paper")  # the paper's analysis: its formulation of M
    record: dict = {"method": method, **{k: v for k, v in options.items() if k != "alpha" or not callable(v)}}
    example = next(iter(loader))[0]
    with opzo_train(net, method, seed=args.seed, example_input=example, **options) as session:
        alignment = diagnostics.AlignmentMonitor(session, args.every) if monitor else None
        for epoch in range(epochs):
            session.epoch = epoch
            variance = diagnostics.GradientVariance(net)
            for x, y in tqdm(loader, desc=f"{method} {model} epoch {epoch + 1}", leave=False, disable=args.quiet):
                def run_batch(x=x, y=y):
                    functional.reset_net(net)
                    for _ in range(args.steps):
                        session.loss(instantaneous_loss(net(x), y, 0.05, steps=args.steps, reduction="none")).backward()

                alignment(run_batch) if alignment else run_batch()
                variance.update()
                optimizer.step()
                optimizer.zero_grad()
            scheduler.step()
    record["batches_per_epoch"] = len(loader)
    record["variance"] = variance.result()
    record["alignment"] = alignment.history if alignment else []
    net.eval()
    correct = 0
    with diagnostics.activity(net) as act, torch.no_grad():
        for x, y in DataLoader(test_set, batch_size=256):
            functional.reset_net(net)
            correct += (sum(net(x) for _ in range(args.steps)).argmax(1) == y).sum().item()
    functional.reset_net(net)
    record["accuracy"] = 100 * correct / len(test_set)
    record["firing"] = act.firing_rates()
    record["synops"] = sum(act.synops().values()) * args.steps  # per sample, all steps
    return record


_DATA: dict = {}


def datasets(args) -> tuple:
    """The training and test sets of ``args`` (read once per run, cut to ``--train-samples`` /
    ``--test-samples``); a missing data set is an :class:`OpzoError` naming ``--download``."""
    key = (args.dataset, str(args.data_root), bool(args.download), args.train_samples, args.test_samples)
    if key not in _DATA:
        _DATA.clear()
        try:
            train_set = get_dataset(args.dataset, args.data_root, train=True, download=bool(args.download))
            test_set = get_dataset(args.dataset, args.data_root, train=False, download=bool(args.download))
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            raise OpzoError(f"the {args.dataset} data is not available under {str(args.data_root)!r}: "
                            f"{data_advice(str(exc))}") from exc
        if args.train_samples:
            train_set = Subset(train_set, range(min(args.train_samples, len(train_set))))
        if args.test_samples:
            test_set = Subset(test_set, range(min(args.test_samples, len(test_set))))
        _DATA[key] = train_set, test_set
    return _DATA[key]


DATA_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def figure_paths(out: Path) -> tuple[Path, Path]:
    """The two PNG files written beside the report ``out``."""
    return out.parent / f"{out.stem}_alignment.png", out.parent / f"{out.stem}_alignment_conv.png"


def check_destination(out: Path, overwrite: bool) -> None:
    """Before any experiment: the folder of ``out`` can be made and written, and neither the report
    nor its figures exist (unless ``overwrite``)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpzoError(f"--out {out}: cannot create its folder ({exc}); choose another --out.") from None
    if out.is_dir():
        raise OpzoError(f"--out {out} is a folder; name the report file, e.g. --out {out / 'report.md'}.")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise OpzoError(f"--out {out}: its folder is not writable; choose another --out.")
    existing = [str(p) for p in (out, *figure_paths(out)) if p.exists()]
    if existing and not overwrite:
        raise OpzoError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace the report and its "
                        f"figures, or --out with another file.")


def write_report(results: dict, args, out: Path) -> None:
    name = DATA_NAMES[args.dataset]
    quick = getattr(args, "quick", False)
    lines = ["# opzo_ext analysis report (small scale)" + (": QUICK SMOKE TEST, not results" if quick else ""), ""]
    if quick:
        lines += [f"> **Quick smoke test** (`--quick`: {args.epochs} epoch, T = {args.steps}, "
                  f"{args.train_samples} training images): these numbers only show that every part of the "
                  "report runs. They are not results; the full report is `opzo-report` without `--quick`.", ""]
    lines += [f"FC 784-800-800-10 on {name} ({args.train_samples or 60000} training images, "
             f"{args.test_samples or 10000} test images), T = {args.steps}, {args.epochs} epoch(s), seed "
             f"{args.seed}; the paper trains 50 epochs on the full set. Command: `opzo-report "
             f"{' '.join(sys.argv[1:])}`.", ""]
    paper = PAPER_TABLE1 if args.dataset == "mnist" else {}
    lines += ["## Table 1: accuracy", "", "| method | ours (%) | paper, MNIST, 50 epochs (%) |", "|---|---|---|"]
    for m, r in results["methods"].items():
        lines.append(f"| {m} | {r['accuracy']:.2f} | {paper[m]:.2f} |" if m in paper else f"| {m} | {r['accuracy']:.2f} | - |")
    lines += ["", "## Table 7: firing rate and synaptic operations (test set)", "",
              "Firing rate: spikes per neuron and time step; total: over both hidden layers (800 neurons each). "
              "The paper's total is conv5 on CIFAR-10 (4 layers), so only the order of the methods compares.", "",
              "| method | firing rate sn1 | firing rate sn2 | total | SynOps per sample | paper total, CIFAR-10 |",
              "|---|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        f = r["firing"]
        total = (f.get("sn1", 0) + f.get("sn2", 0)) / 2
        ref = f"{PAPER_TABLE7[m]:.4f}" if m in PAPER_TABLE7 else "-"
        lines.append(f"| {m} | {f.get('sn1', 0):.4f} | {f.get('sn2', 0):.4f} | {total:.4f} | {r['synops']:.3g} | {ref} |")
    lines += ["", "## Figure 2: gradient variance per layer (last epoch)", "",
              "| method | fc1 | fc2 | fc3 |", "|---|---|---|---|"]
    for m, r in results["methods"].items():
        v = r["variance"]
        lines.append(f"| {m} | {v['fc1.weight']:.3g} | {v['fc2.weight']:.3g} | {v['fc3.weight']:.3g} |")
    lines += ["", "Paper: ZO's variance is orders of magnitude above BP's; OPZO's is at BP's scale. OPZO "
              "runs with `scale_by_alpha=True` here (the paper keeps the 1/alpha factor for this analysis); "
              "DFA's and DKP's scale is that of their B.", ""]
    png, png_conv = figure_paths(out)
    tag = " (QUICK SMOKE TEST)" if quick else ""
    _plot_alignment(results["methods"], png,
                    f"FC 784-800-800-10 on {name}, {args.epochs} epoch(s), T = {args.steps}{tag}")
    lines += ["## Figure 4: cosine of the weight gradients to online BP", "", f"![alignment]({png.name})", ""]
    lines += _alignment_table(results["methods"])
    png = png_conv
    _plot_alignment(results["conv"], png, f"16C3-AP2-32C3-AP2-FC on {name}, {args.conv_epochs} epoch(s), "
                                          f"T = {args.steps}{tag}")
    lines += ["## Figure 4 on a conv net (16C3-AP2-32C3-AP2-FC)", "",
              f"The same measurement on a small conv net trained on {name} for {args.conv_epochs} epoch(s) "
              "(the paper's figure 4 is "
              "conv5 on CIFAR-100). Accuracy: " + ", ".join(f"{m} {r['accuracy']:.2f}%" for m, r in
                                                           results["conv"].items()) + ".", "",
              f"![alignment, conv]({png.name})", ""]
    lines += _alignment_table(results["conv"])
    for title, key in (("Table 2: noise distribution x injection site", "noise"),
                       ("Table 8: momentum lam", "momentum"), ("Table 11: constant alpha", "alpha")):
        data, paper = PAPER_SWEEPS[key]
        lines += [f"## {title} (OPZO)", "", f"| setting | accuracy (%) | paper, conv5 on {data} (%) |", "|---|---|---|"]
        for setting, r in results[key]:
            ref = f"{paper[setting]:.2f}" if setting in paper else "-"
            lines.append(f"| {setting} | {r['accuracy']:.2f} | {ref} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    replace_atomically(out, lambda tmp: tmp.write_text(text))


def _hidden_weights(methods: dict) -> list[str]:
    """Weights of the layers before the readout (whose gradient is exact in every method)."""
    curve = next((r["alignment"] for r in methods.values() if r["alignment"]), [])
    return [w for w in curve[0][1] if w.endswith(".weight")][:-1] if curve else []


def _alignment_table(methods: dict) -> list[str]:
    layers = _hidden_weights(methods)
    monitored = {m: dict(r["alignment"]) for m, r in methods.items() if r["alignment"]}
    header = [f"{m} {w.removesuffix('.weight')}" for m in monitored for w in layers]
    lines = ["| batch | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for batch in sorted(set().union(*(c.keys() for c in monitored.values()))):
        cells = [monitored[m].get(batch, {}).get(w) for m in monitored for w in layers]
        lines.append(f"| {batch} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
    return lines + [""]


def alignment_figure(methods: dict, title: str):
    """The figure-4 plot: cosine to online BP per hidden layer over the batches, titled ``title``,
    the legend outside the axes, dotted lines and top-axis labels at each epoch's first batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    last = 0
    for m, r in methods.items():
        for layer, style in zip(_hidden_weights(methods), ("-", "--", ":", "-.")):
            if r["alignment"]:
                ax.plot([s for s, _ in r["alignment"]], [c[layer] for _, c in r["alignment"]], style,
                        label=f"{m} {layer.removesuffix('.weight')}")
                last = max(last, r["alignment"][-1][0])
    per_epoch = next((r.get("batches_per_epoch") for r in methods.values() if r.get("batches_per_epoch")), None)
    if per_epoch:
        epochs = range(1, last // per_epoch + 2)
        for e in epochs[1:]:
            ax.axvline((e - 1) * per_epoch, color="0.6", linestyle=":", linewidth=0.8)
        top = ax.secondary_xaxis("top")
        top.set_xticks([(e - 1) * per_epoch for e in epochs], [f"epoch {e}" for e in epochs], fontsize=7)
    ax.set_xlabel("batch")
    ax.set_ylabel("cosine to online BP")
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def _plot_alignment(methods: dict, path: Path, title: str = "") -> None:
    import matplotlib.pyplot as plt

    fig = alignment_figure(methods, title)
    try:
        replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="opzo-report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a minutes-long subset (smoke test)")
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion-mnist"))
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--conv-epochs", type=positive_int, default=1, help="epochs of the conv-net alignment run")
    p.add_argument("--steps", type=positive_int, default=6)
    p.add_argument("--every", type=positive_int, default=50, help="batches between alignment measurements")
    p.add_argument("--train-samples", type=positive_int, default=None)
    p.add_argument("--test-samples", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--data-root", default="data")
    add_download_option(p)
    p.add_argument("--out", type=Path, default=None,
                   help="the report file; its figures go beside it (default runs/report-DATASET/report.md, "
                        "with --quick runs/report-DATASET-quick/report.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report and its figures")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.steps, args.every = 1, 2, 2
        args.train_samples, args.test_samples = args.train_samples or 640, args.test_samples or 500
    if args.out is None:
        args.out = Path("runs") / f"report-{args.dataset}{'-quick' if args.quick else ''}" / "report.md"
    try:
        with sigterm_unwinds():
            return _run(args)
    except OpzoError as exc:
        print(f"opzo-report: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    check_destination(args.out, args.overwrite)
    datasets(args)  # a missing data set is reported now, not after the first experiment
    print(f"opzo-report: writing {args.out} and its figures{' (quick smoke test)' if args.quick else ''}",
          flush=True)
    started = time.perf_counter()
    # OPZO keeps the 1/alpha factor of M here, as the paper does for its variance analysis
    results = {"methods": {m: experiment(m, args, monitor=m in ("opzo", "dfa"), **(
        {"scale_by_alpha": True} if m == "opzo" else {})) for m in ("bp", "opzo", "dfa", "dkp", "zo")}}
    results["conv"] = {m: experiment(m, args, monitor=True, model="conv") for m in ("opzo", "dfa")}
    results["noise"] = [(f"{n}, {i}", experiment("opzo", args, noise=n, inject=i))
                        for n in ("gaussian", "rademacher", "sphere") for i in ("after", "before")]
    results["momentum"] = [(lam, experiment("opzo", args, momentum=lam))
                           for lam in ((0.0, 0.99999) if args.quick else (0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999))]
    results["alpha"] = [(a, experiment("opzo", args, alpha=a)) for a in ((1.0, 0.2) if args.quick else (1.0, 0.2, 0.02, 0.002))]
    try:
        write_report(results, args, args.out)
    except OSError as exc:  # the destination went away during the run: keep the work elsewhere
        fallback = Path(tempfile.mkdtemp(prefix="opzo-report-")) / args.out.name
        write_report(results, args, fallback)
        raise OpzoError(f"could not write {args.out} ({exc}); the report and its figures were written to "
                        f"{fallback} instead.") from None
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
