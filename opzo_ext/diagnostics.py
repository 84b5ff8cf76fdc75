"""Diagnostics usable inside any training or evaluation loop.

    cos = opzo.diagnostics.gradient_alignment(session, run_batch)   # {weight: cosine to BP}
    variance = opzo.diagnostics.GradientVariance(model)              # per layer, over an epoch

    with opzo.diagnostics.activity(model) as act:
        evaluate(model)
    act.firing_rates()   # {neuron name: spikes per neuron per step}
    act.synops()         # {synapse name: synaptic operations per sample and time step}

    monitor = opzo.diagnostics.AlignmentMonitor(session, every=50, writer=SummaryWriter())
    for x, y in loader:
        monitor(lambda: run_batch(x, y))   # runs the batch; every 50th also measures alignment
        optimizer.step(); optimizer.zero_grad()

Results are plain dicts; :func:`log_scalars` writes any of them to TensorBoard.

A synaptic operation is one accumulate triggered by one presynaptic spike at one target: a spike
entering a Linear layer costs ``out_features`` operations; one entering a convolution costs the
number of (output channel, position) pairs it reaches, computed exactly (borders, stride and
padding mode included) as the input gradient of the sum of a convolution with unit weights
(table 7 of the paper counts SynOps this way).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import find_adapter
from .errors import OpzoError
from .nested import map_tensors
from .feedback import BP
from .traces import is_synapse


class Activity:
    """Spike and synaptic-operation counts collected by :func:`activity`."""

    def __init__(self):
        self.spikes: dict[str, float] = {}
        self.elements: dict[str, int] = {}
        self.ops: dict[str, float] = {}
        self.samples: dict[str, int] = {}
        self._fan_out: dict[tuple, torch.Tensor] = {}

    def firing_rates(self) -> dict[str, float]:
        """Mean spikes per neuron per time step of every spiking layer."""
        return {n: self.spikes[n] / self.elements[n] for n in self.spikes if self.elements[n]}

    def synops(self) -> dict[str, float]:
        """Synaptic operations per sample and time step of every synapse fed by spikes (times T
        for the count per sample)."""
        return {n: self.ops[n] / self.samples[n] for n in self.ops if self.samples[n]}

    def fan_out(self, module: nn.Module, shape: tuple, device: torch.device) -> torch.Tensor:
        """Targets reached by one input element, shape ``shape[1:]`` (cached per layer and shape)."""
        key = (id(module), shape, str(device))
        if key not in self._fan_out:
            if isinstance(module, nn.Linear):
                self._fan_out[key] = torch.full(shape[1:], float(module.out_features), device=device)
            else:  # d/dx of sum(conv(x, ones)): the (output channel, position) pairs each input reaches
                x = torch.zeros(1, *shape[1:], device=device, requires_grad=True)
                ones = torch.ones_like(module.weight, device=device)
                with torch.enable_grad():
                    fan, = torch.autograd.grad(module._conv_forward(x, ones, None).sum(), x)
                self._fan_out[key] = fan[0]
        return self._fan_out[key]


@contextmanager
def activity(model: nn.Module) -> Iterator[Activity]:
    """Count spikes of every neuron and synaptic operations of every Linear/Conv whose input is
    binary (spikes) while the block runs; hooks are removed on exit.

    Spikes are counted as the neuron emits them: the counting hook runs before any other forward
    hook of the neuron (it is prepended), so inside a training session it sees the spikes before the
    session adds its noise ``alpha * z`` (OPZO, ZO), whether ``activity`` is opened before the session
    or inside it. Synaptic operations are counted on the synapse's actual input: inside a training
    session that injects noise after the neurons (``inject="after"``, the default of OPZO and ZO), the
    input of a synapse fed by hidden neurons is ``s + alpha z``, not binary, and it is not counted.
    Count synaptic operations in evaluation (``model.eval()`` or ``torch.no_grad()``, where the session
    is inactive and the forward pass is clean), as the paper reports them."""
    stats = Activity()
    handles = []
    for name, module in model.named_modules():
        adapter = find_adapter(module)
        if adapter is not None:
            def count_spikes(m, args, out, name=name, adapter=adapter):
                s = adapter.spike(out).detach()
                stats.spikes[name] = stats.spikes.get(name, 0.0) + float(s.sum())
                stats.elements[name] = stats.elements.get(name, 0) + s.numel()
            handles.append(module.register_forward_hook(count_spikes, prepend=True))  # before a session's noise
        elif is_synapse(module):
            def count_ops(m, args, out, name=name):
                x = args[0].detach()
                if not bool(((x == 0) | (x == 1)).all()):  # analog input (the image, a residual stream)
                    return
                flat = x.reshape(-1, *x.shape[-1:]) if isinstance(m, nn.Linear) else \
                    x.reshape(-1, *x.shape[-(len(m.kernel_size) + 1):])
                fan = stats.fan_out(m, tuple(flat.shape), flat.device)
                stats.ops[name] = stats.ops.get(name, 0.0) + float((flat * fan).sum())
                stats.samples[name] = stats.samples.get(name, 0) + flat.shape[0]
            handles.append(module.register_forward_hook(count_ops))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


class _NoisyBP(BP):
    """Online spatial BP through the *perturbed* forward pass: the reference for alignment."""

    def injects_noise(self) -> bool:
        return True


def _clone_state(session) -> dict:
    """A copy of the session's state whose tensors are copies (feedback matrices are updated in place)."""
    return map_tensors(torch.Tensor.clone, session.state_dict())


def gradient_alignment(session, run_batch: Callable[[], None]) -> dict[str, float]:
    """Cosine, per weight, between the gradient the session's method gives for one batch and the
    online spatial-BP gradient (same surrogate, traces, batch, spikes and noise).

    ``run_batch()`` runs the user's forward and backward passes over whole sequences (it starts
    with the network's reset, so traces start afresh). It runs twice: once for real, then with the
    session state (M, noise generators, counters) and torch's RNG rewound and spatial BP through
    the same perturbed forward. Afterwards gradients, buffers (BatchNorm statistics), session state
    and RNG are as after the real pass alone: training is not disturbed. The optimizer step is the caller's.
    """
    if session.topology is None:
        raise OpzoError("gradient_alignment needs a session that has seen the model: call it after the "
                        "first training step, or open the session with example_input=...")
    model = session.model
    params = list(model.parameters()) + list(session.local_readouts.parameters())
    before = [None if p.grad is None else p.grad.clone() for p in params]
    state, rng = _clone_state(session), _rng_state()
    for p in params:
        p.grad = None
    run_batch()
    by_method = [None if p.grad is None else p.grad.clone() for p in params]
    state_after, rng_after = _clone_state(session), _rng_state()
    buffers_after = [b.clone() for b in model.buffers()]  # BatchNorm statistics of the real pass

    session.load_state_dict(state)
    _set_rng_state(rng)
    for p in params:
        p.grad = None
    method = session.method
    session.method = _NoisyBP(session.config, session._generator) if method.injects_noise() else BP(session.config, session._generator)
    try:
        run_batch()
    finally:
        session.method = method
    by_bp = [None if p.grad is None else p.grad.clone() for p in params]

    session.load_state_dict(state_after)
    _set_rng_state(rng_after)
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers_after):
            b.copy_(saved)
    for p, g0, g in zip(params, before, by_method):
        p.grad = g if g0 is None else (g0 if g is None else g0 + g)
    cosines = {}
    for (name, p), g, ref in zip(model.named_parameters(), by_method, by_bp):
        if p.dim() > 1 and g is not None and ref is not None:
            cosines[name] = F.cosine_similarity(g.flatten(), ref.flatten(), dim=0).item()
    return cosines


def _rng_state():
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class GradientVariance:
    """Gradient variance per layer as the paper defines it (appendix C.3.2): over the batch
    gradients ``g_i`` of one epoch, ``var = sum_i ||g_i - mean(g)||^2 / (n_batches * n_elements)``.

        variance = GradientVariance(model)
        for batch in epoch:
            ...  # forward and backward
            variance.update()            # before optimizer.zero_grad()
            optimizer.step(); optimizer.zero_grad()
        variance.result()                # {weight name: variance}

    Kept as running sums per element (Welford), so memory is twice the weights.
    """

    def __init__(self, model: nn.Module):
        self.params = {n: p for n, p in model.named_parameters() if p.dim() > 1}
        self.count = 0
        self.mean = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.m2 = {n: torch.zeros_like(p) for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Add the current ``.grad`` of every weight as one batch gradient."""
        self.count += 1
        for n, p in self.params.items():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            delta = g - self.mean[n]
            self.mean[n] += delta / self.count
            self.m2[n] += delta * (g - self.mean[n])

    def result(self) -> dict[str, float]:
        return {n: float(self.m2[n].sum()) / (self.count * self.m2[n].numel()) for n in self.params} \
            if self.count else {}


class AlignmentMonitor:
    """:func:`gradient_alignment` every ``every`` batches, switched on in one line.

    Call it with each batch's ``run_batch`` (forward and backward over the whole sequence) in place
    of calling ``run_batch()`` yourself. Every ``every``-th call (the first included) measures the
    cosine to online BP; it is appended to :attr:`history` as ``(batch, {weight: cosine})`` and, with
    a ``writer`` (e.g. ``torch.utils.tensorboard.SummaryWriter``), logged as scalars
    ``alignment/<weight>`` at step ``batch``. Training is the same with or without the monitor.
    """

    def __init__(self, session, every: int = 50, writer: Any = None):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every={every!r} must be a positive number of batches.")
        self.session, self.every, self.writer = session, every, writer
        self.batches = 0
        self.history: list[tuple[int, dict[str, float]]] = []

    def __call__(self, run_batch: Callable[[], None]) -> Optional[dict[str, float]]:
        """Run one batch; return the cosines when this batch was measured, else None."""
        batch, self.batches = self.batches, self.batches + 1
        if batch % self.every:
            run_batch()
            return None
        cosines = gradient_alignment(self.session, run_batch)
        self.history.append((batch, cosines))
        if self.writer is not None:
            log_scalars(self.writer, {"alignment": cosines}, batch)
        return cosines


def log_scalars(writer: Any, values: dict, step: int, prefix: str = "") -> None:
    """Write a (nested) dict of numbers to TensorBoard: ``{"alignment": {"fc1.weight": 0.9}}`` becomes
    the scalar ``alignment/fc1.weight``. ``writer`` is anything with ``add_scalar(tag, value, step)``,
    e.g. ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package)."""
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            log_scalars(writer, value, step, tag)
        else:
            writer.add_scalar(tag, float(value), step)
