"""Table 4 at small scale: a BP-trained network deployed under neuron-input noise, then fine-tuned
under that noise with opzo (default and the paper's feedback scale) / dfa / zo / bp; accuracies
before and after.

    opzo-train --preset mnist --method bp --epochs 5 --out runs/table1/mnist-bp      # the model
    python benchmarks/finetune_table.py runs/table1/mnist-bp/checkpoint.pt > docs/results/finetune.md

Each fine-tuning run is one epoch of MNIST (AdamW, lr 1e-4; ZO 1e-5 as the paper lowers ZO's lr),
``alpha = sigma``, noise before the neurons, no antithetic pairs (appendix C.3.2).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIGMAS = (1.0, 1.5, 2.0)
RUNS = (("opzo", ["--method", "opzo"]), ('opzo, `feedback_scale="paper"`', ["--method", "opzo", "--feedback-scale", "paper"]),
        ("dfa", ["--method", "dfa"]), ("zo", ["--method", "zo"]), ("bp", ["--method", "bp"]))


def main(checkpoint: str) -> None:
    results = Path(tempfile.mkdtemp()) / "finetune.jsonl"
    labels = []
    for sigma in SIGMAS:
        for label, method in RUNS:
            lr = "1e-5" if label == "zo" else "1e-4"
            subprocess.run([sys.executable, "-m", "opzo_ext.finetune", "--checkpoint", checkpoint, "--preset", "mnist",
                            "--sigma", str(sigma), *method, "--epochs", "1", "--lr", lr, "--quiet",
                            "--json", str(results)], check=True, stdout=sys.stderr)
            labels.append(label)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    print("# Fine-tuning under deployment noise (table 4 at small scale)\n")
    print(f"Model: FC 2x800 trained with online BP on MNIST (`{checkpoint}`), T = 6. Noise: sigma x N(0, 1)")
    print("added to every spiking neuron's input current at every step (`opzo.noisy`). Fine-tuning: one")
    print("epoch under the same noise (alpha = sigma, noise before the neuron, no antithetic pairs for")
    print("opzo/zo; bp and dfa train with the noise in the forward pass), AdamW lr 1e-4 (zo 1e-5).")
    print("Paper (NF-ResNet-34, ImageNet): clean 65.15; sigma 0.1: noisy 61.13 -> OPZO 63.39;")
    print("sigma 0.15: 54.01 -> 60.96; DFA and ZO_sp do not recover.\n")
    print('`opzo` is the default feedback scale (`"jacobian"`, the Jacobian itself); `feedback_scale="paper"`')
    print("is the paper's formulation ([options](../guide/options.md#what-the-feedback-estimates-feedback_scale)).")
    print("ZO uses each sample's own loss (eq. 3; `session.loss`).\n")
    print("This table has no readout-only control; benchmarks/finetune_noise.py adds it")
    print("([What the hidden layers' updates are worth](finetune_noise.md)).\n")
    print("| sigma | clean acc. | noisy, before | method | noisy, after | change | clean, after |")
    print("|---|---|---|---|---|---|---|")
    for label, r in zip(labels, rows):
        change = 100 * (r["noisy_acc_after"] - r["noisy_acc_before"])
        print(f"| {r['sigma']} | {100 * r['clean_acc']:.2f} | {100 * r['noisy_acc_before']:.2f} | {label} | "
              f"{100 * r['noisy_acc_after']:.2f} | {change:+.2f} | {100 * r['clean_acc_after']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/table1/mnist-bp/checkpoint.pt")
