"""Training trajectories of every method and feedback layout, for checking that a change of the core
leaves training bit-identical.

Each case trains a tiny network for a few batches (fixed seeds, SGD) inside a session and records
every parameter and buffer of the model and every tensor of ``session.state_dict()`` (feedback
matrices, gains, optimizer states of DKP, noise and RNG states). ``tests/test_trajectories.py``
compares them with the record of this kind of CPU: float32 kernels round differently on other
instruction sets (AVX2 against AVX-512: last bits, amplified by ZO), so each kind has its own
record, ``tests/data/trajectories-<vendor>-<capability>.pt``, and ``tests/data/trajectories.pt``
(the first record, made on another kind) serves the kinds without one, matched within float
rounding. After a deliberate change of behaviour, record again on every kind of CPU that has a
record (or delete those you cannot run, saying so) and say which cases changed and why::

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.trajectories   # rewrites this CPU kind's record
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import snntorch as snn
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import opzo_ext as opzo

DATA = Path(__file__).parent / "data"
FIRST_RECORD = DATA / "trajectories.pt"


def cpu_kind() -> str:
    """``<vendor>-<capability>`` of this CPU, e.g. ``authenticamd-avx512``: what decides float32 rounding."""
    vendor = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}".lower()


def record_path() -> Path:
    """This CPU kind's record (where ``python -m tests.trajectories`` writes)."""
    return DATA / f"trajectories-{cpu_kind()}.pt"


def reference_path() -> Path:
    """The record to compare with: this CPU kind's, else the first record."""
    return record_path() if record_path().exists() else FIRST_RECORD


T, B, BATCHES, CLASSES = 3, 4, 3, 4


# ------------------------------------------------------------------ networks
def snn_fc() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 10), snn.Leaky(beta=0.8, init_hidden=True),
                         nn.Linear(10, 8), snn.Leaky(beta=0.8, init_hidden=True), nn.Linear(8, CLASSES))


def snn_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), snn.Leaky(beta=0.8, init_hidden=True), nn.AvgPool2d(2),
                         nn.Conv2d(3, 4, 3, padding=1), snn.Leaky(beta=0.8, init_hidden=True), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, CLASSES))


def sj_fc(step_mode: str) -> nn.Module:
    sg = surrogate.Sigmoid(alpha=4.0)
    net = nn.Sequential(layer.Linear(12, 10), neuron.LIFNode(surrogate_function=sg, v_threshold=0.5),
                        layer.Linear(10, 8), neuron.LIFNode(surrogate_function=sg, v_threshold=0.5), layer.Linear(8, CLASSES))
    functional.set_step_mode(net, step_mode)
    return net


def sj_conv(step_mode: str) -> nn.Module:
    sg = surrogate.ATan()
    net = nn.Sequential(layer.Conv2d(1, 3, 3, padding=1), layer.BatchNorm2d(3), neuron.IFNode(surrogate_function=sg),
                        layer.AvgPool2d(2), layer.Conv2d(3, 4, 3, padding=1), neuron.LIFNode(surrogate_function=sg, v_threshold=0.5),
                        layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 2 * 2, CLASSES))
    functional.set_step_mode(net, step_mode)
    return net


NETS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], str]] = {
    # name: (builder, input shape per sample, loop: "step" = a backward per step, "seq" = one per
    # sequence of single-step calls, "multi" = one multi-step call)
    "snn_fc": (snn_fc, (12,), "step"),
    "snn_conv": (snn_conv, (1, 8, 8), "step"),
    "sj_fc_s": (lambda: sj_fc("s"), (12,), "step"),
    "sj_fc_seq": (lambda: sj_fc("s"), (12,), "seq"),
    "sj_fc_m": (lambda: sj_fc("m"), (12,), "multi"),
    "sj_conv_s": (lambda: sj_conv("s"), (1, 8, 8), "step"),
    "sj_conv_m": (lambda: sj_conv("m"), (1, 8, 8), "multi"),
}

OPZO_VARIANTS: dict[str, dict] = {
    "": {},
    "paper": dict(feedback_scale="paper"),
    "corrected": dict(feedback_scale="corrected"),
    "before": dict(inject="before", antithetic=False, noise="rademacher"),
    "sphere": dict(noise="sphere", trace="spike"),
    "bf16": dict(feedback_matrix="bf16"),
    "lowrank": dict(feedback_matrix="lowrank", feedback_rank=2),
}


def cases() -> dict[str, tuple[str, str, dict]]:
    """Case name -> (network, method, options)."""
    out = {}
    for net in NETS:
        for method in ("bp", "dfa", "dkp", "zo"):
            out[f"{net}/{method}"] = (net, method, {})
        for variant, options in OPZO_VARIANTS.items():
            out[f"{net}/opzo{'/' + variant if variant else ''}"] = (net, "opzo", options)
        if "conv" in net:
            out[f"{net}/opzo/channel"] = (net, "opzo", dict(feedback_matrix="channel"))
            out[f"{net}/dfa/channel"] = (net, "dfa", dict(feedback_matrix="channel"))
    for net in ("snn_fc", "sj_fc_s"):
        out[f"{net}/opzo/local"] = (net, "opzo", dict(local=0.1))
        out[f"{net}/dfa/local"] = (net, "dfa", dict(local=True))
    out["sj_fc_s/opzo/igl"] = ("sj_fc_s", "opzo", dict(igl="3"))
    out["sj_fc_seq/opzo/lags"] = ("sj_fc_seq", "opzo", dict(lags=True, antithetic=False))
    out["sj_fc_seq/opzo/lags/paper"] = ("sj_fc_seq", "opzo", dict(lags=True, antithetic=False, feedback_scale="paper"))
    return out


# ------------------------------------------------------------------ one run
def _tensors(prefix: str, obj, out: dict) -> None:
    """Every tensor inside ``obj`` (nested dicts, lists, tuples) under a path-like key."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(f"{prefix}/{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(f"{prefix}/{i}", v, out)


def loss_of(session, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; ZO gets each sample's loss through ``session.loss`` (eq. 3 per sample)."""
    if session.config.method == "zo":
        return session.loss(F.cross_entropy(out, y, reduction="none"))
    return F.cross_entropy(out, y)


def run_case(net_name: str, method: str, options: dict) -> dict[str, torch.Tensor]:
    """Train ``BATCHES`` batches of ``T`` steps; the model's and the session's tensors afterwards."""
    build, shape, loop = NETS[net_name]
    torch.manual_seed(0)
    net = build()
    with torch.no_grad():  # strong enough that every layer spikes
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(T, B, *shape, generator=g) * 3, torch.randint(0, CLASSES, (B,), generator=g))
               for _ in range(BATCHES)]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    with opzo.train(net, method=method, seed=3, momentum=0.9, alpha=0.3, optimizer=optimizer, **options) as s:
        for x, y in batches:
            optimizer.zero_grad()
            if loop == "multi":
                out = net(x)
                loss_of(s, out.flatten(0, 1), y.repeat(T)).backward()
            else:
                total = 0.0
                for t in range(T):
                    loss = loss_of(s, net(x[t]), y)
                    if s.config.local or s.config.igl:
                        loss = loss + s.local_loss(y)
                    if loop == "step":
                        loss.backward()
                    else:
                        total = total + loss
                if loop == "seq":
                    total.backward()
            optimizer.step()
            functional.reset_net(net)
            for m in net.modules():
                if isinstance(m, snn.SpikingNeuron):
                    m.reset_hidden()
            s.reset()
        out: dict[str, torch.Tensor] = {}
        _tensors("model", net.state_dict(), out)
        _tensors("session", s.state_dict(), out)
        _tensors("optimizer", optimizer.state_dict()["state"], out)
    return out


def record_all() -> dict[str, dict[str, torch.Tensor]]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: run_case(*case) for name, case in cases().items()}
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    DATA.mkdir(exist_ok=True)
    results = record_all()
    torch.save(results, record_path())
    print(f"{len(results)} trajectories -> {record_path()}", file=sys.stderr)
