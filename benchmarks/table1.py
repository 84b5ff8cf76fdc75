"""Table 1 at small scale: test accuracy of bp / opzo / dfa / dkp / zo trained by ``opzo-train``
for the same number of epochs, beside the paper's numbers (50 epochs).

    for m in bp opzo dfa dkp zo; do
      opzo-train --preset mnist --method $m --epochs 5 --out runs/table1/mnist-$m
      opzo-train --preset fashion-mnist --method $m --epochs 3 --out runs/table1/fmnist-$m
    done
    python benchmarks/table1.py runs/table1 > docs/results/table1.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("bp", "opzo", "dfa", "dkp", "zo")
PAPER = {"mnist": {"bp": 98.38, "opzo": 98.34, "dfa": 98.05, "dkp": 98.15, "zo": 86.53}}
NAMES = {"mnist": "MNIST", "fmnist": "Fashion-MNIST"}


def main(root: str) -> None:
    rows = {}
    for path in sorted(Path(root).glob("*/results.jsonl")):
        dataset, method = path.parent.name.rsplit("-", 1)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        rows.setdefault(dataset, {})[method] = records
    print("# Table 1 at small scale (FC 2x800, online training, T = 6)\n")
    print("Runs made on the 2-core CPU machine with `opzo-train` (commands in `benchmarks/table1.py`);")
    print("the paper trains 50 epochs with the same hyperparameters (AdamW 2e-4, wd 2e-4, cosine to 0,")
    print("batch 128, dropout 0.2 except ZO, ZO lr 2e-5, alpha 0.2 -> 0.01, lam 0.99999). Test accuracy")
    print("after the last epoch; the learning-rate and alpha schedules span the epochs run. The s/epoch")
    print("column is wall time with other jobs sharing the 2 cores: not a speed comparison (that is")
    print("`benchmarks/step_cost.py`).\n")
    for dataset, by_method in rows.items():
        epochs = max(len(r) for r in by_method.values())
        print(f"## {NAMES.get(dataset, dataset)} ({epochs} epochs)\n")
        print("| method | test acc. (%) | best epoch acc. (%) | s / epoch | paper, 50 epochs (%) | gap to paper |")
        print("|---|---|---|---|---|---|")
        for method in METHODS:
            records = by_method.get(method)
            if not records:
                continue
            last = 100 * records[-1]["test_acc"]
            best = 100 * max(r["test_acc"] for r in records)
            secs = sum(r["seconds"] for r in records) / len(records)
            paper = PAPER.get(dataset, {}).get(method)
            ref = f"{paper:.2f}" if paper else "—"
            gap = f"{last - paper:+.2f}" if paper else "—"
            print(f"| {method} | {last:.2f} | {best:.2f} | {secs:.0f} | {ref} | {gap} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/table1")
