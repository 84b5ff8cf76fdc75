"""How much of OPZO's gap to BP on snnTorch's tutorial 6 is the estimation of M, and how much the
idea of one expected Jacobian per layer? A control with an exact M, and variants of M's average.

OPZO's ``M_l`` estimates ``E[d o / d s_l]`` (the Jacobian of the readout's output ``o`` with respect
to hidden layer ``l``'s output, averaged over samples and time) from the noise it injects. Here the
same network, loop, budget and seeds are trained with that estimate replaced by the exact value:

* ``oracle, averaged``: ``M_l`` is the momentum average (OPZO's ``lam`` with the bias correction,
  i.e. the mean over every step so far) of the exact batch-mean Jacobian ``J_l[t] = (1/B) sum_b
  d o_b[t] / d s_l,b[t]``. This is what OPZO's ``M`` tends to with unlimited noise samples: the run
  tells what estimation noise costs.
* ``oracle, this step``: ``M_l = J_l[t]``, the expected Jacobian of the current batch and weights:
  the best any method that sends one matrix per layer (OPZO, DFA, DKP) could do.

With the exact M, the feedback reaches layer ``l`` as ``psi(u_l) * (M_l e)`` where BP sends
``psi(u_l) * (J_l,b^T e_b)`` with each sample's own Jacobian. Tutorial 6's net is
``conv1-pool-sn1-conv2-pool-sn2-fc-out``; for ``sn2`` the Jacobian is ``W_fc`` for every sample
(so the oracle equals BP there); for ``sn1`` it passes through ``sn2``'s surrogate and the max-pool
routing, which depend on the sample.

Beside them run variants of OPZO's own estimate, everything else being OPZO's (``inject="after"``,
the surrogate derivative, the traces): control variates for the other layers' noise
(:class:`ControlVariates`), averages that forget the early steps (:class:`RecentOPZO`), and local
learning (appendix C.1) with OPZO, with DFA, with bp, alone (``method="none"``) and alone with OPZO's
noise (:class:`_controls.NoiseOnly`); ``opzo, measured``
records how close OPZO's M is to the exact Jacobians (:class:`MeasuredOPZO`).

    .venv/bin/python benchmarks/oracle_feedback.py --seeds 0 1 2     # ~2-3 min per run on one thread

bp, opzo and dfa run beside the two oracles in the same process and conditions (the thread count
changes a run's floating-point order, and with it OPZO's accuracy by several points). Each run
appends a JSON line to ``--runs`` (runs already there are skipped); ``--out`` is rewritten from
them, keeping its hand-written reading after the marker line.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _controls import noise_only  # noqa: E402 (benchmarks/ is on the path)
from _runs import append_run, check_destinations, load_runs, write_page  # noqa: E402
from examples.third_party import snntorch_tutorial6 as t6  # noqa: E402
from opzo_ext.distributed import global_batch  # noqa: E402
from opzo_ext.feedback import METHODS  # noqa: E402
from opzo_ext.feedback.opzo import OPZO  # noqa: E402

BUDGET = dict(train_samples=6000, test_samples=1000)
ORACLES = ("oracle, averaged", "oracle, this step")
RECENT = {"opzo, plain average": (1, False), "opzo, plain average, shrunk": (1, True),  # variant -> (c, shrink)
          "opzo, recent average c=2": (2, False), "opzo, recent average c=4": (4, False),
          "opzo, recent average c=4, shrunk": (4, True), "opzo, recent average c=8, shrunk": (8, True)}
LOCAL = {"opzo, local learning": "opzo", "dfa, local learning": "dfa", "local learning alone": "none",
         "local learning with opzo's noise": "opzo", "bp, local learning": "bp"}
# (a, b): a - b on the seeds both ran, the comparisons the page's reading rests on
PAIRS = (("opzo", "dfa"), ("opzo", "bp"), ("opzo, local learning", "local learning alone"),
         ("opzo, local learning", "local learning with opzo's noise"),
         ("local learning with opzo's noise", "local learning alone"), ("bp, local learning", "local learning alone"),
         ("local learning alone", "bp"))
VARIANTS = ("bp", "opzo", *ORACLES, "opzo, control variates", *RECENT, *LOCAL, "dfa", "opzo, measured")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-30))


class MeasuredOPZO(OPZO):
    """OPZO as it is, recording at every step the cosine of its ``M_l`` to the exact Jacobians
    (averaged as OPZO averages, and of this step) and its reliability factor ``rho_l``."""

    def __init__(self, config, generator_for):
        super().__init__(config, generator_for)
        self.jacobians, self.sums, self.trace = {}, {}, []

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        ctx = super().step(call, o, in_place)
        lam, row = self.config.momentum, {}
        for name in call.layers:
            j = self.jacobians.pop(name)
            self.sums[name] = lam * self.sums.get(name, torch.zeros_like(j)) + (1 - lam) * j
            m = self.matrices[name]
            row[name] = (_cos(m, self.sums[name]), _cos(m, j), float(self.gain.reliability.get(name, float("nan"))))
        self.trace.append(row)
        return ctx


class ControlVariates(OPZO):
    """OPZO whose M update for layer ``l`` takes ``o~ - alpha sum_{k != l} rho_k z_k M_k`` instead of
    ``o~``: the other layers' noise, predicted by their current M shrunk by its reliability ``rho_k``,
    is taken out of ``o~``. It is independent of ``z_l``, so M stays unbiased; only the variance of
    its estimate changes."""

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch = global_batch(o.shape[1], o.device)
        lam, scale, storage = self.config.momentum, self.scale(call, batch), self.storage
        known = {name: self.matrices[name] * float(self.gain.reliability.get(name, 0.0))
                 / (1 - lam ** max(self.gain.updates.get(name, 0), 1)) for name in call.layers}
        per_layer, gains = [], []
        for name, z_l in zip(call.layers, call.z):
            o_l = o - call.alpha * sum(z_k @ known[k] for k, z_k in zip(call.layers, call.z) if k != name)
            history = storage.momentum_steps(self.matrices[name], o_l, z_l, lam, scale, False, batch, {})
            self.matrices[name] = history[-1]
            per_layer.append(history)
            gains.append(self.gain.after(name, history, storage.energy, o_l, z_l, batch, call.alpha))
        return per_layer, gains


class RecentOPZO(OPZO):
    """OPZO whose M averages its estimates with weights growing as ``t^(c-1)`` over the steps so far
    (polynomial-decay averaging): ``M_l <- (1 - b_k) M_l + b_k z_l^T o~ / (B alpha)`` with
    ``b_k = max(c / (k + c - 1), 1 - lam)``. ``c = 1`` is the plain average of every step (OPZO's
    ``M`` with the bias correction, without the reliability factor); larger ``c`` forgets the early
    steps while still averaging over a share of all of them. ``shrink``: times a reliability
    ``max(0, 1 - U / |M|^2)`` as OPZO's default, ``U`` the summed variance of M's entries."""

    def __init__(self, config, generator_for, c: int, shrink: bool):
        super().__init__(config, generator_for)
        self.c, self.shrink, self.counts, self.noise_power = c, shrink, {}, {}

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch, lam, histories, gains = global_batch(o.shape[1], o.device), self.config.momentum, [], []
        for name, z_l in zip(call.layers, call.z):
            history, rho = [], []
            for t in range(o.shape[0]):
                k = self.counts[name] = self.counts.get(name, 0) + 1
                b = max(self.c / (k + self.c - 1), 1 - lam)
                m = self.matrices[name] = ((1 - b) * self.matrices[name]  # the order the recorded runs used
                                           + b * (z_l[t].t() @ o[t]) / (batch * call.alpha))
                history.append(m)
                # the variance of M's entries summed, as for independent terms: U <- (1-b)^2 U + b^2 |z^T o~|^2 noise
                power = (z_l[t].square().sum(1) * o[t].square().sum(1)).sum() / (batch * call.alpha) ** 2
                u = self.noise_power[name] = (1 - b) ** 2 * self.noise_power.get(name, 0.0) + b ** 2 * power
                rho.append((1 - u / m.square().sum().clamp_min(1e-30)).clamp_min(0.0))
            histories.append(history)
            gains.append(rho if self.shrink else None)
        return histories, gains


class ExactM(OPZO):
    """OPZO with ``M_l`` from the exact batch-mean Jacobians in ``self.jacobians`` (set each step)."""

    def __init__(self, config, generator_for, average: bool):
        super().__init__(config, generator_for)
        self.average, self.jacobians, self.sums, self.updates = average, {}, {}, {}

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        lam, histories = self.config.momentum, []
        for name in call.layers:
            j = self.jacobians.pop(name)  # [n_l, m]
            if self.average:
                k = self.updates[name] = self.updates.get(name, 0) + 1
                self.sums[name] = lam * self.sums.get(name, torch.zeros_like(j)) + (1 - lam) * j
                j = self.sums[name] / (1 - lam ** k)
            self.matrices[name] = j
            histories.append([j])
        return histories, [None] * len(histories)


def attach_oracle(net, session) -> list:
    """Hooks that give ``session.method`` each step's exact ``J`` of tutorial 6's two hidden layers."""
    conv2, sn2, fc = net[3], net[5], net[7]

    def sn1_jacobian(module, args):  # conv2 receives sn1's output (+ alpha z); sn2 has not run yet
        x = args[0].detach().requires_grad_()
        with torch.enable_grad():
            current = net[4](torch.nn.functional.conv2d(x, conv2.weight.detach(), conv2.bias.detach()))
            mem = sn2.mem.detach() if sn2.mem.shape == current.shape else torch.zeros_like(current)  # lazy init
            reset = (mem > sn2.threshold).to(mem.dtype)  # snnTorch's subtractive reset, from the last step
            u = sn2.beta * mem + current - reset * sn2.threshold
            o = torch.nn.functional.linear(sn2.spike_grad(u - sn2.threshold).flatten(1), fc.weight.detach())
            rows = [torch.autograd.grad(o[:, j].sum(), x, retain_graph=True)[0].flatten(1).mean(0)
                    for j in range(o.shape[1])]
        session.method.jacobians["2"] = torch.stack(rows, 1)
        session.method.jacobians["5"] = fc.weight.detach().t().clone()  # o = W_fc s2 + b

    return [conv2.register_forward_pre_hook(sn1_jacobian)]


def run(variant: str, seed: int) -> dict:
    """One tutorial-6 run of ``variant``: its accuracy, training seconds and, for ``opzo,
    measured``, the cosines of M to the exact Jacobians at the last step of every batch."""
    method, local, patches, methods = variant, False, [], []
    if variant in LOCAL:  # the example's local=True (appendix C.1) with opzo, dfa or "none"
        method, local = LOCAL[variant], True
        if variant == "local learning with opzo's noise":
            patches.append(noise_only())
    elif variant in RECENT:
        method = "opzo"
        recent = RECENT[variant]
        patches.append(mock.patch.dict(METHODS, {"opzo": lambda config, gen: RecentOPZO(config, gen, *recent)}))
    elif variant == "opzo, control variates":
        method = "opzo"
        patches.append(mock.patch.dict(METHODS, {"opzo": ControlVariates}))
    elif variant in (*ORACLES, "opzo, measured"):
        method, original = "opzo", t6.opzo.train

        def train(net, method, **options):
            session = original(net, method="opzo", **options)
            if variant == "opzo, measured":
                session.method = MeasuredOPZO(session.config, session._generator)
            else:
                session.method = ExactM(session.config, session._generator, average=variant == "oracle, averaged")
            methods.append((session.method, attach_oracle(net, session)))
            return session

        patches.append(mock.patch.object(t6.opzo, "train", train))
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        r = t6.run(method, seed=seed, local=local, **BUDGET)
    out = {"variant": variant, "seed": seed, "accuracy": r["accuracy"], "seconds": time.perf_counter() - start}
    for m, handles in methods:
        for h in handles:
            h.remove()
        if variant == "opzo, measured":  # layer -> (cos to averaged, to this step, rho)
            out["trace"] = m.trace[24::25]
    return out


def page(runs: list[dict]) -> str:
    by = {v: {r["seed"]: r["accuracy"] for r in runs if r["variant"] == v} for v in VARIANTS}
    lines = ["# OPZO with an exact M: what the estimate of M costs on snnTorch's tutorial 6", "",
             "snnTorch tutorial 6 (CSNN, `ce_rate_loss`, Adam 1e-2), MNIST 6000 / 1000, T = 25, one epoch, as in",
             "[third_party.md](third_party.md). OPZO's `M_l` estimates `E[d o / d s_l]` from its noise; the two",
             "oracle rows train the same way with that estimate replaced by the exact value (computed by",
             "autograd on the downstream layers at every step): `averaged` is the momentum average of the",
             "exact batch-mean Jacobian (what OPZO's `M` tends to with unlimited noise samples), `this step`",
             "the exact batch-mean Jacobian of the current batch and weights (the best one matrix per layer",
             "can do). For the second hidden layer the Jacobian is the readout's weight for every sample, so",
             "there the oracles send exactly BP's error; the first hidden layer's Jacobian passes through the",
             "second layer's surrogate derivative and the max-pool routing, which differ between samples.",
             "`opzo, control variates` is OPZO whose M update for layer `l` takes `o~ - alpha sum_k rho_k z_k M_k`",
             "over the other layers `k` (their noise as their current M, shrunk by its reliability, predicts",
             "it): an unbiased reduction of the variance of M's estimate. The `average` rows replace OPZO's",
             "momentum average by an average that weighs step `t` as `t^(c-1)` (`c = 1`: every step alike,",
             "OPZO's bias-corrected `M`; larger `c` forgets the early steps while averaging over a share of",
             "all of them), without OPZO's reliability factor or, `shrunk`, with one computed as for",
             "independent noise at every step (it overestimates the noise of antithetic pairs, so it shrinks",
             "more than OPZO's own: compare the `shrunk` rows with each other, not with `opzo`).",
             "`opzo, local learning` is OPZO with the paper's local learning (appendix C.1; `local=True`,",
             "`optimizer=` and `loss + session.local_loss(targets)` in the loop): a Linear readout per hidden",
             "layer, trained with its own loss, which also reaches that layer; `dfa, local learning` the same",
             "with DFA, and `local learning alone` the control with no error from the output reaching the",
             "hidden layers (`method=\"none\", local=True`): what the local readouts do by themselves;",
             "`local learning with opzo's noise` injects OPZO's noise but keeps `M` at zero (what OPZO's",
             "feedback adds beyond its noise), `bp, local learning` adds the local readouts to online BP.",
             "All rows ran in one process on one thread, seeds as listed. Command:",
             "`benchmarks/oracle_feedback.py`.", "",
             "| method | test accuracy (%), mean | per seed |", "|---|---|---|"]
    for v in VARIANTS[:-1]:
        if by[v]:
            seeds = sorted(by[v])
            mean = sum(by[v].values()) / len(seeds)
            lines.append(f"| {v} | {mean:.1f} | {' / '.join(f'{by[v][s]:.1f}' for s in seeds)} (seeds "
                         f"{', '.join(map(str, seeds))}) |")
    lines += ["", "## Paired differences", "",
              "`a - b` in points over the seeds both rows ran (each seed gives both the same initial weights and",
              "batch order), with the standard error of the mean difference: a difference within about two",
              "standard errors of zero is not resolved by these seeds.", "",
              "| a | b | seeds | a - b | standard error |", "|---|---|---|---|---|"]
    for a, b in PAIRS:
        diffs = [by[a][s] - by[b][s] for s in sorted(by[a]) if s in by[b]]
        if len(diffs) > 1:
            mean = sum(diffs) / len(diffs)
            se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
            lines.append(f"| {a} | {b} | {len(diffs)} | {mean:+.1f} | {se:.1f} |")
    measured = [r for r in runs if r["variant"] == "opzo, measured"]
    if measured:
        lines += ["", "## How close OPZO's own M is to the exact Jacobians", "",
                  "Plain OPZO (the `opzo` row's training), measuring at the last step of every tenth batch the cosine",
                  "of each layer's `M` to the exact Jacobian averaged as OPZO averages (`avg`) and to this step's",
                  "(`now`), and the reliability `rho` that scales its feedback (`feedback_scale=\"jacobian\"`). Seeds "
                  + ", ".join(str(r["seed"]) for r in measured) + " (mean; accuracy "
                  + " / ".join(f"{r['accuracy']:.1f}" for r in measured) + ").", "",
                  "| batch | sn1 cos avg | sn1 cos now | sn1 rho | sn2 cos avg | sn2 cos now | sn2 rho |",
                  "|---|---|---|---|---|---|---|"]
        traces = [r["trace"] for r in measured]
        for i in range(0, min(map(len, traces)), 10):
            cells = [sum(t[i][layer][c] for t in traces) / len(traces) for layer in ("2", "5") for c in range(3)]
            lines.append(f"| {i + 1} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--runs", type=Path, default=ROOT / "docs/results/oracle_feedback_runs.jsonl")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/oracle_feedback.md")
    args = p.parse_args(argv)
    check_destinations(args.runs, args.out)
    runs = load_runs(args.runs, lambda r: (r["variant"], r["seed"]))
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) not in runs:
                r = runs[variant, seed] = run(variant, seed)
                append_run(args.runs, r)
                print(f"{variant} seed {seed}: {r['accuracy']:.1f}% ({r['seconds']:.0f} s)", flush=True)
    write_page(args.out, page(list(runs.values())))


if __name__ == "__main__":
    main()
