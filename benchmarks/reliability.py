"""How long OPZO holds each hidden layer's feedback back on the third-party setups: the reliability
``rho`` of every layer's ``M`` (``feedback_scale="jacobian"``, the share of its feedback OPZO sends,
:mod:`opzo_ext.feedback.opzo_gain`) over one run of ``opzo`` (seed 0, the budgets of
``third_party.py``), with each layer's size. The session warns when a layer's reliability is below
0.1 after 50 updates of its ``M``.

    .venv/bin/python benchmarks/reliability.py                # ~3 min on one CPU core
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import third_party  # noqa: E402 (benchmarks/ is on the path)
from _runs import check_destinations, write_page  # noqa: E402
from opzo_ext.feedback import METHODS  # noqa: E402
from opzo_ext.feedback.opzo import OPZO  # noqa: E402
from opzo_ext.health import per_sample  # noqa: E402

SHARES = (0.02, 0.1, 0.3, 0.5, 0.99)  # where in the run the reliability is read


class Traced(OPZO):
    """OPZO recording every layer's reliability after each call."""

    trace: list = []

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        ctx = super().step(call, o, in_place)
        Traced.trace.append({name: float(rho) for name, rho in self.gain.reliability.items()})
        return ctx


def measure(setup: str, data_root: str) -> tuple[dict, dict, float]:
    """(layer -> reliability at each share of the run, layer -> values per sample, accuracy)."""
    module = importlib.import_module(f"examples.third_party.{third_party.SETUPS[setup][0]}")
    real_train, sessions = module.opzo.train, []

    def train(net, **kw):  # keep the session, for the layers' sizes
        sessions.append(real_train(net, **kw))
        return sessions[-1]

    Traced.trace = []
    with mock.patch.dict(METHODS, {"opzo": Traced}), mock.patch.object(module.opzo, "train", train):
        r = third_party.run_one(setup, "opzo", 0, data_root)
    trace = Traced.trace
    rho = {name: [trace[min(int(len(trace) * f), len(trace) - 1)][name] for f in SHARES] for name in trace[-1]}
    return rho, {name: per_sample(sessions[0], name) for name in rho}, r["accuracy"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", choices=["t5", "t6", "t7", "sj"], default=["t5", "t6", "t7", "sj"])
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/reliability.md")
    p.add_argument("--data-root", default=str(ROOT / "data"))
    args = p.parse_args(argv)
    check_destinations(args.out)
    lines = ["# How long OPZO holds a layer's feedback back", "",
             "The reliability `rho` of each hidden layer's `M` (`feedback_scale=\"jacobian\"`: the share of its",
             "feedback OPZO sends while `M` is mostly noise) over one `opzo` run of each",
             "[third-party setup](third_party.md) (seed 0, the same budgets), read at a share of the run's calls.",
             "The session warns when a layer's reliability is below 0.1 after 50 updates of its `M`; "
             "`session.summary()` shows the current values. Command: `benchmarks/reliability.py`.", "",
             "| setup | layer | values per sample | " + " | ".join(f"{f:.0%} of the run" for f in SHARES)
             + " | accuracy (%) |", "|---|---|---|" + "---|" * len(SHARES) + "---|"]
    for setup in args.setups:
        rho, sizes, accuracy = measure(setup, args.data_root)
        for name, values in rho.items():
            lines.append(f"| {setup} | `{name}` | {sizes[name]:,} | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {accuracy:.1f} |")
        print(f"{setup}: {accuracy:.1f}%", flush=True)
    write_page(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
