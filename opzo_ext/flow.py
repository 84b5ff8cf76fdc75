"""The data flow of one time step, hook by hook (training mode only; the session installs them).

    neuron pre-hook  StepFlow.before    detach the neuron's state (no BP through time);
                                        inject="before": input + alpha z
    neuron hook      StepFlow.after     inject="after": spikes + alpha z; the next layer gets them
                                        detached (no spatial BP); a LayerStep keeps the spikes that
                                        carry the graph, z and the activity trace until the readout
    conv hook        StepFlow.conv      inject="conv": conv output + alpha z, sent on detached; its
                                        LayerStep keeps the output that carries the graph
    synapse forward  StepFlow.synapse   presynaptic trace a_hat <- lam a_hat + x; the weight
                                        gradient is taken on a_hat (opzo_ext.traces)
    readout          StepFlow.readout   method.step (OPZO's M update, opzo_ext.feedback.opzo) and
                                        the Tap through which feedback enters in loss.backward()
                                        (opzo_ext.feedback.tap)

Extensions (:mod:`opzo_ext.extensions`: local learning, intermediate readout, lags) see every
neuron output and may take over the readout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .adapters import NeuronAdapter
from .errors import OpzoError
from .feedback import LiveTaps, TapCall, tap
from .noise import NoiseSource
from .traces import TraceState, traced_call


@dataclass
class NeuronState:
    """What the session keeps of one neuron module between its calls."""

    name: str
    module: nn.Module
    adapter: NeuronAdapter
    hidden: bool  # receives feedback
    noise: NoiseSource
    activity: Optional[TraceState] = None  # trace of its own spikes (methods that learn from it)
    last_state: Any = None  # the state object the neuron left behind (identity marks continuity)
    fresh: bool = True  # the latest call started a new sequence
    sequences: int = 0  # calls that started a new sequence, so far
    steps: int = 1  # time steps in the latest call
    batch: int = 0
    z: Optional[torch.Tensor] = None  # noise injected before the neuron in the latest call


@dataclass
class ConvSite:
    """A convolution whose output is perturbed and receives the feedback (``inject="conv"``)."""

    name: str
    module: nn.Module
    noise: NoiseSource
    pres: list[NeuronState]  # the neurons feeding it (a new sequence starts with theirs)


@dataclass(frozen=True)
class LayerStep:
    """One hidden layer's call, from its neuron (or conv) hook to the readout."""

    spike: torch.Tensor  # the spikes (conv output) that carry the graph (the feedback enters here)
    z: Optional[torch.Tensor]  # the noise added to it (None without noise)
    activity: Optional[torch.Tensor]  # its activity trace (methods that need it)


class StepFlow:
    """The per-step hooks of a :class:`~opzo_ext.session.Session` and the records they pass on."""

    def __init__(self, session):
        self.session = session
        self.neurons: dict[str, NeuronState] = {}
        self.convs: dict[str, ConvSite] = {}  # inject="conv": the perturbed convolutions
        self.layers: list[str] = []  # the layers receiving feedback (hidden neurons, or the convs), forward order
        self.pending: dict[str, LayerStep] = {}  # hidden layer -> its call of this step, until the readout
        self.live = LiveTaps()  # Taps whose backward has not run yet
        self.last_neuron: Optional[NeuronState] = None  # the neuron called last (its step layout)

    def before(self, rec: NeuronState, args: tuple, kwargs: dict):
        """Neuron pre-hook."""
        s, x = self.session, args[0]
        multistep = rec.adapter.is_multistep(rec.module)
        step_shape = x.shape[1:] if multistep else x.shape
        token = rec.adapter.incoming_state(rec.module, args, kwargs)
        rec.fresh = token is not rec.last_state or (isinstance(token, torch.Tensor) and token.shape != step_shape)
        rec.sequences += rec.fresh
        rec.steps, rec.batch = (x.shape[0] if multistep else 1), step_shape[0]
        self.last_neuron = rec
        if not s.config.lags:  # lags=True keeps each layer's path through time within the sequence
            args, kwargs = rec.adapter.detach_state(rec.module, args, kwargs)
        if rec.hidden and s.method.injects_noise() and s.config.inject == "before":
            rec.z = rec.noise.draw(x, rec.steps, rec.fresh)
            args = (torch.add(x, rec.z, alpha=s.alpha), *args[1:])
        if s.topology.tap == ("neuron", rec.name):
            args = (self.readout(args[0], rec), *args[1:])
        return args, kwargs

    def after(self, rec: NeuronState, args: tuple, output: Any):
        """Neuron forward hook: returns the output the next layer sees (None: unchanged)."""
        s = self.session
        s.health.neuron(rec, output)
        rec.last_state = rec.adapter.outgoing_state(rec.module, output)
        passed, step = None, None
        if rec.hidden:
            if rec.name in self.pending:
                raise OpzoError(
                    f"Neuron '{rec.name}' was called twice in one time step (before the readout); "
                    "opzo_ext needs each hidden neuron module to be used once per step. Use separate "
                    "neuron modules for each use.")
            spike = rec.adapter.spike(output)
            carried = spike.detach() if s.method.uses_tap() else spike  # the cut of spatial BP
            z, sent = None, carried
            if s.method.injects_noise():
                if s.config.inject == "after":
                    z = rec.noise.draw(spike, rec.steps, rec.fresh)
                    sent = torch.add(carried, z, alpha=s.alpha)
                else:
                    z = rec.z
            activity = rec.activity.update(spike, rec.steps, rec.fresh) if rec.activity is not None else None
            step = self.pending[rec.name] = LayerStep(spike, z, activity)
            passed = rec.adapter.replace_spike(output, sent)
        for extension in s.extensions:
            extension.on_neuron_output(rec, output, step)
        return passed

    def conv(self, site: ConvSite, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Conv forward hook (``inject="conv"``): the next layer gets ``output + alpha z``, detached
        (no spatial BP); the error enters at ``output``, whose graph reaches only the conv's weights."""
        if site.name in self.pending:
            raise OpzoError(f"Convolution '{site.name}' was called twice in one time step (before the readout); "
                            "inject='conv' needs each convolution to be used once per step.")
        z = site.noise.draw(output, 1, any(p.fresh for p in site.pres))
        self.pending[site.name] = LayerStep(output, z, None)
        return torch.add(output.detach(), z, alpha=self.session.alpha)

    def synapse(self, module: nn.Module, original: Callable, rule, trace: TraceState,
                pres: list[NeuronState]) -> Callable:
        """The ``forward`` of a synapse fed by the neurons ``pres``: its weight gradient uses the trace."""
        def forward(x, *args, **kwargs):
            if args or kwargs or not self.session.active(module):
                return original(x, *args, **kwargs)
            a_hat = trace.update(x, pres[0].steps, fresh=any(p.fresh for p in pres))
            return traced_call(module, rule, x, a_hat, original)
        return forward

    def readout(self, o: torch.Tensor, pre: Optional[NeuronState]) -> torch.Tensor:
        """The readout output ``o`` of one call (``pre``: the neuron giving its step layout)."""
        s = self.session
        s.steps += pre.steps if pre is not None else 1
        s.health.readout()
        if s._optimizer is None and pre is not None and pre.fresh:  # a new sequence: once per batch
            s.update_feedback()
        if not s.method.uses_tap() or not self.pending:
            self.pending.clear()
            return o
        layers = [n for n in self.layers if n in self.pending]
        for extension in s.extensions:
            tapped = extension.on_readout(self, o, layers, pre)
            if tapped is not None:
                return tapped
        return self.feedback_tap(s.method, o, layers, pre)

    def feedback_tap(self, method, o: torch.Tensor, layers: list[str], pre: Optional[NeuronState]) -> torch.Tensor:
        """``o`` wrapped in a Tap feeding ``method``'s signal back to the pending ``layers``."""
        names = tuple(n for n in layers if n in self.pending)
        if not names:
            return o
        records = [self.pending.pop(n) for n in names]
        steps = pre.steps if pre is not None else 1
        batch = pre.batch if pre is not None else o.shape[0]
        alpha = self.session.alpha
        z = tuple(None if r.z is None else r.z.reshape(steps, batch, -1) for r in records)
        activity = tuple(None if r.activity is None else r.activity.reshape(steps, batch, -1) for r in records)
        call = TapCall(method, names, alpha, steps, batch, z, activity)
        ctx = method.step(call, o.detach().reshape(steps, batch, -1), self.live.all_done())
        return tap(o, TapCall(method, names, alpha, steps, batch, ctx=ctx), [r.spike for r in records],
                   self.live.token())
