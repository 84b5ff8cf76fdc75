"""Health checks of a training session: cheap counters that turn silent failures into warnings.

A run can sit at chance with nothing visibly wrong: a hidden layer that never spikes, hidden weight
gradients orders of magnitude below the readout's or below Adam's ``eps``, feedback matrices that
never leave zero. Every session owns a :class:`Health` (``session.health``) that watches for these
while you train and warns once per cause and layer with :class:`~opzo_ext.errors.HealthWarning`,
naming the layer and the fix; :func:`~opzo_ext.summary.summary` (``session.summary()``) lists the layers, their
synapses and feedback, the firing rates and what the checks found.

Rules (defaults in brackets, arguments of :class:`Health`):

* **silent layer**: a neuron layer (hidden, or the output neurons when the readout is a neuron
  layer; neurons with an infinite threshold are left out) emitted no spike in any sampled step
  over its last ``silent_steps`` [200] time steps;
* **feedback too small**: over the last ``window`` [8] checks, the mean ``|g|`` of a hidden synapse's
  weight gradient is below ``grad_ratio`` [1e-3] times the readout's, or, when the session knows the
  optimizer (``opzo.train(..., optimizer=opt)``) and its parameter group has an ``eps`` (Adam,
  AdamW, RMSprop, ...), below that ``eps``. A scale-invariant optimizer does not care about the
  ratio, so with a known ``eps`` only the ``eps`` rule applies;
* **feedback still zero**: after ``feedback_after`` [500] time steps a hidden layer's feedback
  matrix (``session.feedback``; methods with matrices) has an RMS entry below ``1e-10``;
* **BatchNorm after the noise** (methods that inject noise): the model has BatchNorm layers with
  running statistics after the first hidden layer; their statistics will include the noise
  (:mod:`~opzo_ext.batchnorm`). Checked once, when the layers are discovered;
* **feedback held back** (OPZO, ``feedback_scale="jacobian"``): after ``held_after`` [50]
  updates of a layer's ``M``, its reliability ``rho`` (the share of its feedback OPZO sends while
  ``M`` is mostly noise, :mod:`~opzo_ext.feedback.opzo_gain`) is below ``held_rho`` [0.1].

Cost: nothing is read on most steps. Each neuron's spike sum, and each synapse weight's mean
``|g|`` (from a post-accumulate-grad hook), is taken on about one call in ``every`` [25]; the stride
cycles through ``every .. every + 6`` so that the samples do not always fall on the same time step
of a sequence (where a deep layer may not have spiked yet). Sampled values stay on the device; the
readout of every ``every``-th step reads all of them at once (one device synchronisation), together
with the feedback norms while those are being checked. Nothing here draws random numbers or
touches a graph: training is bit-identical with the checks on or off (``opzo.train(..., health=False)``
or ``session.health.enabled = False``).
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .errors import HealthWarning
from .feedback.storage import norm

EVERY = 25  # sample one call in about EVERY (neurons per call, weights per backward, checks per readout)
SILENT_STEPS = 200  # time steps without any sampled spike before a layer counts as silent
GRAD_RATIO = 1e-3  # hidden mean |g| below this fraction of the readout's: feedback too small
WINDOW = 8  # checks averaged by the gradient rules
FEEDBACK_AFTER = 500  # time steps before a feedback matrix still at ~0 is reported
FEEDBACK_RMS = 1e-10  # RMS entry of a feedback matrix below which it counts as zero
HELD_AFTER = 50  # updates of OPZO's M before a reliability below HELD_RHO is reported
HELD_RHO = 0.1  # reliability below which a layer counts as held back (M's noise > 90% of its energy)
LOWER_EPS = "lower the optimizer's eps (e.g. eps=1e-12)"  # the remedies the gradient warnings offer
RAISE_LR = "raise this layer's learning rate"
MAX_PENDING = 4096  # sampled values kept on the device at most between two reads


class _Schedule:
    """Which calls to sample: the first after ``every`` calls (the first steps are not typical:
    OPZO's M starts at zero), then strides ``every, every + 1, ..., every + 6`` in turn."""

    __slots__ = ("every", "calls", "next", "samples")

    def __init__(self, every: int):
        self.every, self.calls, self.next, self.samples = every, 0, every - 1, 0

    def tick(self) -> bool:
        call, self.calls = self.calls, self.calls + 1
        if call < self.next:
            return False
        self.samples += 1
        self.next = call + self.every + self.samples % 7
        return True


@dataclass
class _NeuronStats:
    name: str
    kind: str
    output: bool
    schedule: _Schedule
    steps: int = 0  # time steps seen
    spikes: float = 0.0  # over the sampled steps
    elements: int = 0
    samples: int = 0
    zero_since: Optional[int] = None  # step at which the current run of spike-free samples began
    zero_until: int = 0  # and the step after its latest sample
    zero_samples: int = 0

    @property
    def rate(self) -> Optional[float]:
        return self.spikes / self.elements if self.elements else None

    @property
    def silent_for(self) -> int:
        return 0 if self.zero_since is None else self.zero_until - self.zero_since


@dataclass
class _WeightStats:
    synapse: str
    param: str
    readout: bool
    layer: Optional[str]  # the neuron layer it feeds
    inputs: list  # the neuron layers feeding it
    eps: Optional[float]
    schedule: _Schedule
    abs_mean: deque = field(default_factory=deque)  # mean |g| per check (last WINDOW)
    ratio: deque = field(default_factory=deque)  # mean |g| / readout's mean |g| per check


def _skip_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(__file__), os.path.dirname(torch.__file__)]
    for name in ("snntorch", "spikingjelly"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(module.__file__))
    return tuple(d + os.sep for d in dirs)


def _warn(message: str) -> None:
    """Warn at the first frame outside opzo_ext, torch and the SNN libraries (the user's loop)."""
    skip, level, frame = _skip_dirs(), 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, HealthWarning, stacklevel=level if frame is not None else 2)


def per_sample(session, name: str) -> int:
    """Values per sample of layer ``name``'s output (a neuron layer, or a convolution with
    ``inject="conv"``): its shape without the batch (and time, for multi-step neurons) axes."""
    shape, rec = session.topology.out_shapes[name], session.flow.neurons.get(name)
    lead = 2 if rec is not None and rec.adapter.is_multistep(rec.module) else 1
    return math.prod(shape[lead:])


def reliabilities(session) -> dict[str, tuple[int, torch.Tensor]]:
    """Layer -> (updates of its M, reliability ``rho`` on the device) for OPZO with
    ``feedback_scale="jacobian"``, the intermediate readout's matrices included; empty otherwise."""
    found, layers = {}, set(session.layers)
    for method in (session.method, session.igl_method):
        gain = getattr(method, "gain", None)
        for name, rho in (getattr(gain, "reliability", None) or {}).items():
            if name in layers:
                found[name] = (gain.updates.get(name, 0), rho)
    return found


def _never_spikes(module: nn.Module) -> bool:
    """Neurons with an infinite threshold (a membrane readout) are silent by design."""
    threshold = getattr(module, "v_threshold", getattr(module, "threshold", None))
    try:
        return threshold is not None and bool(torch.as_tensor(threshold).isinf().all())
    except (TypeError, RuntimeError):
        return False


def _names(names) -> str:
    return ", ".join(f"'{n}'" for n in names)


class Health:
    """Counters and warnings of one session (``session.health``); see the module docstring.

    Attributes:
        enabled: set to False to stop sampling (the hooks stay, and return at once).
        raised: the messages of the warnings raised so far, in order.
        checks: how many times the sampled values were read.
    """

    def __init__(self, session, enabled: bool = True, every: int = EVERY, silent_steps: int = SILENT_STEPS,
                 grad_ratio: float = GRAD_RATIO, window: int = WINDOW, feedback_after: int = FEEDBACK_AFTER,
                 held_after: int = HELD_AFTER, held_rho: float = HELD_RHO):
        self.session = session
        self.enabled = enabled
        self.every, self.silent_steps, self.grad_ratio = every, silent_steps, grad_ratio
        self.window, self.feedback_after = window, feedback_after
        self.held_after, self.held_rho = held_after, held_rho
        self.neurons: dict[str, _NeuronStats] = {}
        self.weights: dict[str, _WeightStats] = {}  # parameter name -> stats
        self.feedback_norms: dict[str, float] = {}  # layer -> Frobenius norm when checked
        self.raised: list[str] = []
        self.checks = 0
        self.readout_grad: Optional[float] = None  # the readout's mean |g| at the latest check
        self._warned: set = set()
        self._pending: list = []
        self._readouts = 0
        self._feedback_done: set = set()

    # ------------------------------------------------------------------ hooks
    def attach(self) -> list:
        """Start watching the session's discovered layers; returns the hook handles (the session
        removes them on close)."""
        session = self.session
        if not self.enabled:
            return []
        topo, modules = session.topology, dict(session.model.named_modules())
        for name in topo.neurons:
            module = modules[name]
            if not _never_spikes(module):
                self.neurons[name] = _NeuronStats(name, type(module).__name__, name in topo.output_neurons,
                                                  _Schedule(self.every))
        kind, site = topo.tap
        readout = {site} if kind == "synapse" else set(topo.afferent.get(site, []))
        fed = {s: n for n, synapses in topo.afferent.items() for s in synapses}
        eps = {}
        for group in getattr(session._optimizer, "param_groups", []):
            if isinstance(group.get("eps"), (int, float)):
                eps.update({id(p): float(group["eps"]) for p in group["params"]})
        params = {id(p): n for n, p in session.model.named_parameters()}
        if topo.norms and session.method.injects_noise() and session.clean_bn is None:
            self._noisy_norms(topo.norms)  # recompute_bn is off, or several processes
        handles, seen = [], set()
        for synapse in topo.presynaptic:
            weight = getattr(modules[synapse], "weight", None)
            if not isinstance(weight, nn.Parameter) or not weight.requires_grad or id(weight) in seen:
                continue
            seen.add(id(weight))
            stats = _WeightStats(synapse, params.get(id(weight), f"{synapse}.weight"), synapse in readout,
                                 fed.get(synapse), topo.presynaptic[synapse], eps.get(id(weight)),
                                 _Schedule(self.every), deque(maxlen=self.window), deque(maxlen=self.window))
            self.weights[stats.param] = stats
            handles.append(weight.register_post_accumulate_grad_hook(self._grad_hook(stats)))
        return handles

    def neuron(self, rec, output: Any) -> None:
        """Neuron forward (training): count its steps, take its spike sum on a sampled call."""
        if not self.enabled:
            return
        stats = self.neurons.get(rec.name)
        if stats is None:
            return
        start, stats.steps = stats.steps, stats.steps + rec.steps
        if stats.schedule.tick() and len(self._pending) < MAX_PENDING:
            spike = rec.adapter.spike(output).detach()
            self._pending.append(("spikes", stats, spike.sum(dtype=torch.float32), (spike.numel(), start, stats.steps)))

    def _grad_hook(self, stats: _WeightStats):
        def hook(param: torch.Tensor) -> None:
            if self.enabled and stats.schedule.tick() and len(self._pending) < MAX_PENDING:
                g = param.grad.detach()
                self._pending.append(("grad", stats, norm(g, 1), g.numel()))
        return hook

    def readout(self) -> None:
        """Readout call (one per step): every ``every``-th one reads what was sampled."""
        if not self.enabled:
            return
        self._readouts += 1
        if self._readouts % self.every == 0:
            self.check()

    # ------------------------------------------------------------------ checks
    def _feedback_due(self) -> list[tuple[str, int, torch.Tensor]]:
        """(layer, entries, norm on the device) of the feedback matrices still to check."""
        session = self.session
        if session.steps < self.feedback_after or session.topology is None:
            return []
        due, layers = [], set(session.layers)
        for method in (session.method, session.igl_method):
            for name, m in (getattr(method, "matrices", None) or {}).items():
                if name in self._feedback_done or name not in layers:
                    continue  # lags: "layer@k" matrices are not checked, the lag-0 one is
                entries = m[0].shape[0] * m[1].shape[0] if isinstance(m, tuple) else m.numel()  # tuple: factors
                due.append((name, entries, method.energy(m).sqrt()))
        return due

    def _held_due(self) -> list[tuple[str, int, torch.Tensor]]:
        """(layer, updates of its M, reliability on the device) of OPZO's layers not yet reported
        whose M has had ``held_after`` updates."""
        return [(name, updates, rho) for name, (updates, rho) in reliabilities(self.session).items()
                if updates >= self.held_after and ("held", name) not in self._warned]

    @torch.no_grad()
    def check(self) -> None:
        """Read every sampled value now (one synchronisation) and apply the rules."""
        pending, self._pending = self._pending, []
        feedback, held = self._feedback_due(), self._held_due()
        tensors = [entry[2] for entry in pending] + [norm for _, _, norm in feedback] + [rho for _, _, rho in held]
        if not tensors:
            return
        device = tensors[0].device
        values = torch.stack([t.reshape(()).to(device) for t in tensors]).tolist()
        self.checks += 1
        readout = [v / extra for (kind, stats, _, extra), v in zip(pending, values)
                   if kind == "grad" and stats.readout]
        if readout:
            self.readout_grad = sum(readout) / len(readout)
        for (kind, stats, _, extra), v in zip(pending, values):
            if kind == "spikes":
                self._spikes(stats, v, *extra)
            elif not stats.readout:
                self._gradient(stats, v / extra)
        for (name, entries, _), v in zip(feedback, values[len(pending):]):
            self._feedback(name, entries, v)
        for (name, updates, _), v in zip(held, values[len(pending) + len(feedback):]):
            if v < self.held_rho:
                self._held(name, updates, v)

    def _once(self, cause: str, layer: str, message: str) -> None:
        if (cause, layer) not in self._warned:
            self._warned.add((cause, layer))
            self.raised.append(message)
            _warn(message)

    def _spikes(self, stats: _NeuronStats, total: float, elements: int, start: int, end: int) -> None:
        stats.samples += 1
        stats.spikes += total
        stats.elements += elements
        if total > 0:
            stats.zero_since, stats.zero_samples = None, 0
            return
        if stats.zero_since is None:
            stats.zero_since = start
        stats.zero_until = end
        stats.zero_samples += 1
        if stats.silent_for >= self.silent_steps:
            synapses = self.session.topology.afferent.get(stats.name, [])
            what = "The output layer" if stats.output else "Hidden layer"
            self._once("silent", stats.name, (
                f"{what} '{stats.name}' ({stats.kind}) has not spiked in {stats.silent_for} time steps (no spike "
                f"in any of the {stats.zero_samples} steps sampled since its step {stats.zero_since}): while silent it "
                "passes nothing on, and its weight gradient rests on the tail of its surrogate derivative. A "
                "layer that is silent at initialisation may start firing as training goes on; if it does not, "
                "lower its threshold, raise the input scale or the weight init"
                + (f" of the synapses feeding it ({_names(synapses)})" if synapses else "")
                + ", or use a neuron that integrates faster (e.g. a larger leak factor / tau). "
                "session.summary() shows every layer's firing rate."))

    def _gradient(self, stats: _WeightStats, abs_mean: float) -> None:
        stats.abs_mean.append(abs_mean)
        if self.readout_grad:
            stats.ratio.append(abs_mean / self.readout_grad)
        if stats.eps is not None:  # a scale-invariant optimizer: only the absolute size matters
            g = sum(stats.abs_mean) / self.window
            if len(stats.abs_mean) == self.window and g < stats.eps:
                self._once("eps", stats.param, (
                    f"The weight gradient of {self._where(stats)} has mean |g| {g:.1e} over the last {self.window} "
                    f"checks, below the optimizer's eps={stats.eps:g}: an Adam-type update g / (sqrt(v) + eps) "
                    f"shrinks to about g / eps, so this layer barely learns. "
                    f"{self._cause(stats, LOWER_EPS)} Inspect with session.summary()."))
        elif len(stats.ratio) == self.window and sum(stats.ratio) / self.window < self.grad_ratio:
            ratio = sum(stats.ratio) / self.window
            self._once("ratio", stats.param, (
                f"The weight gradient of {self._where(stats)} is {ratio:.1e} times the readout's (mean |g| over the "
                f"last {self.window} checks): too small for a scale-sensitive optimizer such as SGD to move it. "
                f"{self._cause(stats, RAISE_LR)} With Adam the scale does not "
                "matter as long as |g| stays above its eps: pass optimizer=opt to opzo.train and this check compares "
                "with eps instead. Inspect with session.summary()."))

    @staticmethod
    def _where(stats: _WeightStats) -> str:
        return f"'{stats.param}'" + (f" (feeding hidden layer '{stats.layer}')" if stats.layer else "")

    def _cause(self, stats: _WeightStats, fix: str) -> str:
        """The likely cause, with its fix (``fix``: the optimizer's own remedy), as sentences: a silent
        layer around the synapse (no input, or no surrogate derivative), OPZO holding back feedback
        while M is noise, the paper's feedback scale, or feedback (under BP, the error) too small."""
        config = self.session.config
        quiet = [n for n in (*stats.inputs, stats.layer) if n in self.neurons and self.neurons[n].zero_samples >= 2]
        reliability = reliabilities(self.session).get(stats.layer, (0, None))[1]
        if config.method == "bp":
            cause = f"the backpropagated error reaching it is too small (vanishing gradients): normalise the layers, or {fix}."
        elif config.method == "opzo" and config.feedback_scale == "paper":
            cause = ("the feedback reaching it is too small: feedback_scale='paper' keeps M at alpha (1 - lam^k) of the "
                     "Jacobian, far below online BP's scale for the first thousands of steps; use "
                     f"feedback_scale='jacobian' (the default), which estimates the Jacobian itself, or {fix}.")
        elif reliability is not None and float(reliability) < 0.5:
            cause = (f"OPZO holds back this layer's feedback while its M is mostly noise (estimated reliability "
                     f"{float(reliability):.2f}, feedback_scale='jacobian'); it grows as M averages more updates (more "
                     f"steps; a larger batch makes each update less noisy). If it stays this small, {fix}, or use "
                     "feedback_scale='corrected', which does not hold it back.")
        else:
            cause = f"the feedback reaching it is too small: {fix}."
        if not quiet:
            return cause[0].upper() + cause[1:]
        which = f"Layer {_names(quiet)} around it has" if len(quiet) == 1 else f"Layers {_names(quiet)} around it have"
        return f"{which} not spiked lately (no input or no surrogate derivative): fix that first. Otherwise {cause}"

    def _feedback(self, name: str, entries: int, norm: float) -> None:
        self.feedback_norms[name] = norm
        self._feedback_done.add(name)
        if norm > FEEDBACK_RMS * math.sqrt(entries):
            return
        method = self.session.config.method
        why = {
            "opzo": "M is estimated from the injected noise z and the readout's output o~ (M ~ z o~^T): a readout "
                    "whose output never varies (zero or frozen weights) keeps M at 0; check the readout and that "
                    "alpha > 0",
            "dkp": "B is learned from the layer's own spike trace times the output error: a silent layer or a zero "
                   "error keeps B at 0",
        }.get(method, "check what was loaded into the session (load_state_dict)")
        self._once("feedback", name, (
            f"The feedback matrix of hidden layer '{name}' (method '{method}') is still ~0 (Frobenius norm "
            f"{norm:.1e}) after {self.session.steps} steps: the layer receives no error and does not learn. {why}. "
            "session.summary() shows the layers and their feedback matrices."))

    def _noisy_norms(self, names: list[str]) -> None:
        method = self.session.config.method
        self._once("batchnorm", "", (
            f"BatchNorm layer(s) {_names(names)} come after the noise that method '{method}' injects: in training "
            "they accumulate their running statistics from noisy activations, so the model evaluated without noise "
            "(model.eval()) is normalised with too wide a variance and its neurons fire less (SpikingJelly's "
            "conv_fashion_mnist example with OPZO: 52% test accuracy, 64% after recomputing the statistics). The "
            "session recomputes them itself with recompute_bn=True (the default, in single-process runs); here, "
            "recompute them without noise before evaluating: opzo.update_bn(model, train_loader) after the "
            "`with opzo.train(...)` block (a few hundred training inputs are enough)."))

    def _held(self, name: str, updates: int, rho: float) -> None:
        size = per_sample(self.session, name)
        quiet = [n for n, stats in self.neurons.items() if not stats.output and stats.zero_samples >= 2]
        silent = (f" {'Layer' if len(quiet) == 1 else 'Layers'} {_names(quiet)} {'has' if len(quiet) == 1 else 'have'} "
                  "not spiked lately: a layer's noise reaches the output only through spiking layers, so M may "
                  "have nothing to estimate; fix that first.") if quiet else ""
        self._once("held", name, (
            f"OPZO sends hidden layer '{name}' only {rho:.0%} of its feedback (reliability {rho:.2f} after {updates} "
            f"updates of its M, {size:,} values per sample): M, estimated from the injected noise, is still mostly "
            f"noise, so OPZO holds the feedback back and the layer barely learns.{silent} The reliability grows as M "
            "averages more updates (more steps; a larger batch makes each update less noisy). On a short run, or "
            "for a convolutional layer whose reliability stays low, add local learning (local=True, optimizer=opt "
            "and loss + session.local_loss(y)), which gives every hidden layer a signal of its own. "
            "session.summary() shows each layer's reliability."))
