"""The training session: attaches hooks to an unmodified model, runs the per-step bookkeeping,
and removes every trace of itself on exit.

Where things happen (one time step, training mode):

* neuron pre-hook (:meth:`Session._neuron_pre`): detect a new sequence, detach the state (no BP
  through time), add ``alpha * z`` to the input when ``inject="before"``;
* neuron forward hook (:meth:`Session._neuron_post`): add ``alpha * z`` to the spikes
  (``inject="after"``), pass on a *detached* copy (no spatial BP), keep the graph-carrying spikes;
* synapse forward override (:meth:`Session._traced_forward`): update the presynaptic trace, take
  the weight gradient on it (:mod:`opzo_ext.traces`);
* readout (:meth:`Session._tap`): the method's bookkeeping (OPZO's M update, in
  :mod:`opzo_ext.feedback.opzo`) and the :class:`~opzo_ext.feedback.Tap` through which feedback
  enters the hidden layers during ``loss.backward()``.
"""
from __future__ import annotations

import math
import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from .adapters import NeuronAdapter, check_model, find_adapter
from .config import TrainConfig
from .discovery import Topology, discover
from .distributed import share_parameters, shared_seed, world
from . import health as _health
from . import summary as _summary
from .errors import OpzoError
from .feedback import Feedback, LossRecorder, Tap, TapCall, method_class
from .noise import NoiseSource
from .patching import override
from .traces import TraceState, fused_rule, traced_call

_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


@dataclass
class _Neuron:
    """Per-neuron bookkeeping of the session."""

    name: str
    module: nn.Module
    adapter: NeuronAdapter
    hidden: bool
    noise: NoiseSource
    last_state: Any = None  # the state object the neuron left behind (identity marks continuity)
    fresh: bool = True  # the latest call started a new sequence
    steps: int = 1  # time steps in the latest call
    batch: int = 0
    z: Optional[torch.Tensor] = None  # noise injected before the neuron in the latest call
    activity: Optional[TraceState] = None  # trace of its own spikes (methods that learn from it)
    history: list = field(default_factory=list)  # (spikes, z) of every step of the sequence (lags)


class Session:
    """A training session on ``model``; create it with :func:`opzo_ext.train`.

    Attributes:
        layers: names of the hidden neuron modules receiving feedback, in forward order
            (known after the first training step, or at once with ``example_input``).
        feedback: neuron name -> feedback matrix ``[n_l, m]`` in use (M for opzo, B for dfa);
            with ``feedback_matrix="lowrank"`` the product ``A B^T`` is formed on each access (the
            factors themselves are in ``session.method.matrices``).
        epoch: current epoch, read by an alpha schedule; set it at the start of each epoch.
        steps: number of time steps trained so far.
        local_readouts: the session's own readouts (``local``, ``igl``); train them with
            :meth:`parameters` and :meth:`local_loss`.
        health: the :class:`~opzo_ext.health.Health` checks (silent layers, feedback too small),
            which warn once per cause and layer; the option ``health=False`` turns them off.
            :meth:`summary` shows what they found.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, example_input: Any = None,
                 optimizer: Optional[torch.optim.Optimizer] = None):
        check_model(model)
        self.model = model
        self._example_input = example_input
        self._optimizer = optimizer
        self.local_readouts = nn.ModuleDict()  # local learning: one Linear readout per hidden layer
        self._local_outputs: dict[str, list] = {}
        self._local_state: Optional[dict] = None
        self._last_neuron: Optional[_Neuron] = None  # the neuron called last (its step layout)
        self.config = config
        self.method = method_class(config)(config, self._generator)
        # intermediate global learning: the layers before config.igl get feedback from its readout
        self.igl_method = method_class(config)(config, self._generator) \
            if config.igl and self.method.cuts_spatial_bp else None
        self.epoch = 0
        self.steps = 0
        self.topology: Optional[Topology] = None
        seed = config.seed if config.seed is not None else int(torch.randint(2**62, (1,)))
        self._seed = shared_seed(seed)  # the same on every rank (DFA's B); noise adds the rank
        self._rank = world()[0]
        self._generators: dict[str, torch.Generator] = {}
        self._neurons: dict[str, _Neuron] = {}
        # hidden layer -> (graph-carrying spikes, noise z, activity trace) of this step, until the tap
        self._pending: dict[str, tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]] = {}
        self._live_taps: "weakref.WeakSet[TapCall]" = weakref.WeakSet()  # taps whose graph is alive
        self._handles: list = []
        self._removers: list = []
        self._pending_state: Optional[dict] = None
        self._open = False
        self._warned_eval = False
        self.health = _health.Health(self, enabled=config.health)

    # ----------------------------------------------------------------- public API
    @property
    def layers(self) -> list[str]:
        return list(self.topology.hidden) if self.topology else []

    @property
    def feedback(self) -> dict[str, torch.Tensor]:
        return {**(self.igl_method.feedback_matrices() if self.igl_method else {}),
                **self.method.feedback_matrices()}

    @property
    def alpha(self) -> float:
        return self.config.alpha_at(self.epoch)

    def summary(self) -> str:
        """What the session trains and how it is doing: the model, the method and its options, each
        hidden layer (neuron type, neurons per sample, its synapses and their weight shapes, its
        feedback matrix and bytes, firing rate so far), the readout, the feedback memory, the steps
        trained and the health checks' counters and warnings (``print(session.summary())``)."""
        return _summary.summary(self)

    def __repr__(self) -> str:
        return _summary.short(self)

    def reset(self) -> None:
        """Start a new sequence at the next step (traces, antithetic pairs), for loops that give
        no reset signal of their own (``functional.reset_net`` and ``snntorch.utils.reset`` do)."""
        for rec in self._neurons.values():
            rec.last_state = None

    def state_dict(self) -> dict:
        """Feedback matrices, counters, RNG and antithetic state: enough to resume exactly."""
        return {
            "method": self.config.method,
            "config": self.config.as_dict(),
            "epoch": self.epoch,
            "steps": self.steps,
            "feedback": self.method.state_dict(),
            "igl_feedback": self.igl_method.state_dict() if self.igl_method else None,
            "generators": {d: g.get_state() for d, g in self._generators.items()},
            "noise": {n: r.noise.state_dict() for n, r in self._neurons.items()},
            "seed": self._seed,
            "local": self.local_readouts.state_dict() if len(self.local_readouts) else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.config.method:
            raise OpzoError(
                f"This session state was saved with method={state.get('method')!r}, but the session "
                f"uses method={self.config.method!r}; open the session with the same method."
            )
        saved_scale = state.get("config", {}).get("feedback_scale", "paper")  # older states: the paper's
        if self.config.method == "opzo" and saved_scale != self.config.feedback_scale:
            raise OpzoError(
                f"This session state was saved with feedback_scale={saved_scale!r}, but the session uses "
                f"feedback_scale={self.config.feedback_scale!r}: its M is on another scale. Open the session "
                f"with feedback_scale={saved_scale!r} to resume it.")
        self.epoch, self.steps, self._seed = state["epoch"], state["steps"], state["seed"]
        self.method.load_state_dict(state["feedback"])
        if self.igl_method is not None and state.get("igl_feedback") is not None:
            self.igl_method.load_state_dict(state["igl_feedback"])
        self._generators = {}  # a device without a saved state starts again from the seed
        for device, rng in state["generators"].items():
            self._generator(torch.device(device)).set_state(rng)
        self._pending_state = state["noise"]
        self._load_noise_state()
        if self.topology is not None:
            self._init_matrices()
        if state.get("local") is not None:
            self._local_state = state["local"]
            self._load_local_state()

    def parameters(self):
        """Parameters the session owns and the optimizer must train: the local readouts
        (``local=...``) and the intermediate readout (``igl=...``). Known once the layers are
        (first training step or ``example_input``)."""
        if (self.config.local or self.config.igl) and self.topology is None:
            raise OpzoError(
                "The local readouts are created when the session first sees the model: call "
                "session.parameters() after the first training step, or pass example_input=... "
                "(or optimizer=...) to opzo.train."
            )
        return iter(self.local_readouts.parameters())

    def local_loss(self, target: torch.Tensor, loss_fn=None) -> torch.Tensor:
        """The loss of the session's own readouts over the steps since the last call:
        ``local * sum_l loss_fn(R_l s_l, target)`` over hidden layers ``l`` (local learning,
        appendix C.1) plus ``loss_fn(R s_igl, target)`` for the intermediate readout (``igl``), for
        each time step. Add it to your loss before ``backward()``. ``loss_fn``: cross-entropy."""
        if not (self.config.local or self.config.igl):
            raise OpzoError("session.local_loss needs local learning or an intermediate readout: open the "
                            "session with local=0.01 (or True) or igl='<layer name>'.")
        loss_fn = loss_fn or torch.nn.functional.cross_entropy
        total = 0.0
        for outputs in self._local_outputs.values():
            for r, steps, scale in outputs:
                for r_t in r.reshape(steps, -1, r.shape[-1]):
                    total = total + scale * loss_fn(r_t, target)
        self._local_outputs.clear()
        return total

    # ------------------------------------------------------------ attach / detach
    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def open(self) -> "Session":
        claimed = {id(m): active for active in _ACTIVE for m in active.modules()}
        for name, module in self.model.named_modules():
            if id(module) in claimed:
                raise OpzoError(
                    f"{type(self.model).__name__} already has an open opzo_ext session: its module "
                    f"'{name or type(module).__name__}' belongs to the session on "
                    f"{type(claimed[id(module)]).__name__}; close that session before opening another one."
                )
        _ACTIVE.add(self.model)
        self._open = True
        if self.method.needs_loss:
            LossRecorder.acquire()
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        if self._example_input is not None:
            try:
                example = self._example_input
                args = example if isinstance(example, tuple) else (example,)
                self._discover(args, {})
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Remove every hook and override; the model is left as it was (idempotent)."""
        for h in self._handles:
            h.remove()
        for remove in self._removers:
            remove()
        self._handles, self._removers = [], []
        self._pending.clear()
        self._local_outputs.clear()
        if self._open:
            self._open = False
            _ACTIVE.discard(self.model)
            if self.method.needs_loss:
                LossRecorder.release()

    @staticmethod
    def _is_neuron(module: nn.Module) -> bool:
        return find_adapter(module) is not None

    def _active(self, module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _root_pre(self, model, args, kwargs):
        self._pending.clear()
        if self.topology is None and self._active(model):
            self._discover(args, kwargs)
        elif not model.training and torch.is_grad_enabled() and not self._warned_eval:
            self._warned_eval = True
            warnings.warn(
                f"{type(model).__name__} runs in eval mode with gradients enabled inside an opzo_ext "
                "session: the session is inactive (no noise, no feedback, no state detaching), so a "
                "backward() here is plain BPTT. Call model.train() before training steps, or wrap "
                "evaluation in torch.no_grad().", stacklevel=3)
        return None

    def _discover(self, args: tuple, kwargs: dict) -> None:
        self._attach(discover(self.model, args, kwargs, self._is_neuron))

    def _attach(self, topology: Topology) -> None:
        self.topology = topology
        modules = dict(self.model.named_modules())
        hidden = set(topology.hidden) if self.method.cuts_spatial_bp else set()
        for index, name in enumerate(topology.neurons):
            module = modules[name]
            adapter = find_adapter(module)
            noise = NoiseSource(self.config.noise, self.config.antithetic,
                                seed=self._seed + 7919 * (index + 1) + 1_000_003 * self._rank)
            rec = _Neuron(name, module, adapter, name in hidden, noise)
            if rec.hidden and self.method.needs_activity:
                rec.activity = TraceState(self._trace_lambda(rec))
            self._neurons[name] = rec
            self._handles.append(module.register_forward_pre_hook(self._hook(self._neuron_pre, rec), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._hook(self._neuron_post, rec)))
            if hasattr(adapter, "install_stepwise"):
                self._removers.append(adapter.install_stepwise(module, lambda m=module: self._active(m)))
        self._load_noise_state()
        like = next(self.model.parameters())
        if self.config.igl is not None and self.config.igl not in topology.hidden[1:]:
            raise OpzoError(
                f"igl={self.config.igl!r} is not a hidden neuron layer after the first one; choose one of "
                f"{topology.hidden[1:]}.")
        self._init_matrices()
        shapes = self._layer_shapes()
        readouts = {name.replace(".", "_"): shapes[name] for name in (topology.hidden if self.config.local else [])}
        if self.config.igl is not None:
            readouts["igl"] = shapes[self.config.igl]
        if readouts:
            self.local_readouts = nn.ModuleDict({
                key: nn.Linear(n, m, device=like.device, dtype=like.dtype) for key, (n, m) in readouts.items()})
            self._load_local_state()
            share_parameters(self.local_readouts.parameters())  # multi-process: not inside the user's DDP
            if self._optimizer is not None:
                self._optimizer.add_param_group({"params": list(self.local_readouts.parameters())})
        for name, pres in topology.presynaptic.items():
            if pres and self.config.trace == "trace" and not self.config.lags:
                self._override_synapse(modules[name], [self._neurons[p] for p in pres])
        kind, name = topology.tap
        if kind == "synapse":
            syn = modules[name]
            pres = [self._neurons[p] for p in topology.presynaptic.get(name, [])]
            self._handles.append(syn.register_forward_hook(
                lambda m, a, out: self._tap(out, pres[0] if pres else self._last_neuron) if self._active(m) else None))
        self._handles.extend(self.health.attach())

    def _init_matrices(self) -> None:
        """Create (or check loaded) feedback matrices ``[n_l, m]``: the layers before the
        intermediate readout (``igl``) get theirs from it, the others from the output."""
        like = next(self.model.parameters())
        shapes = {n: shape for n, shape in self._layer_shapes().items() if self._neurons[n].hidden}
        if type(self.method).new_matrix is Feedback.new_matrix:  # bp, zo: no matrices
            return
        limit = feedback_limit(like, self.config.max_feedback_gb)
        layout = self.config.feedback_matrix
        groups = {n: g for n, g in self._channel_groups().items() if n in shapes}
        if layout == "auto":
            shareable = self.config.method in ("opzo", "dfa") and not self.config.lags and groups
            dense = feedback_bytes(shapes, self.method, like)
            layout = "channel" if shareable and dense > limit else "dense"
            if layout == "channel":
                warnings.warn(f"Dense feedback matrices would take {dense / 1e9:.2f} GB, "
                              f"more than {limit / 1e9:.2f} GB: using one row per channel for convolutional "
                              "layers (feedback_matrix='channel'), which suits readouts after global average "
                              "pooling; for a readout of the flattened map, feedback_matrix='lowrank' keeps "
                              "the spatial detail. Pass feedback_matrix='dense' to insist.")
        if layout == "channel":
            for method in (self.method, self.igl_method):
                if method is not None:
                    method.share_rows(groups)
            shapes = {n: ((groups[n][0], m) if n in groups else (rows, m)) for n, (rows, m) in shapes.items()}
        check_feedback_size(shapes, self.method, like, limit)
        before = self._igl_layers()
        self.method.init_matrices({n: s for n, s in shapes.items() if n not in before}, like)
        if self.igl_method is not None:
            self.igl_method.init_matrices({n: s for n, s in shapes.items() if n in before}, like)

    def _igl_layers(self) -> list[str]:
        """Hidden layers before the intermediate readout (empty without ``igl``)."""
        if self.igl_method is None:
            return []
        hidden = self.topology.hidden
        return hidden[:hidden.index(self.config.igl)]

    def _layer_shapes(self) -> dict[str, tuple[int, int]]:
        """``[n_l, m]`` per hidden layer, from the probe's shapes (per step and sample)."""
        topo = self.topology

        def steps_batch(name: str) -> tuple[int, int]:
            shape, rec = topo.out_shapes[name], self._neurons[name]
            return (shape[0], shape[1]) if rec.adapter.is_multistep(rec.module) else (1, shape[0])

        kind, site = topo.tap
        # the time/batch layout of the readout's input: from the neuron feeding it, else from any
        # neuron (an analog readout input, e.g. a residual stream, runs in the network's step mode)
        ref = site if kind == "neuron" else (topo.presynaptic.get(site) or topo.neurons)[0]
        tap_shape = topo.in_shapes[site] if kind == "neuron" else topo.out_shapes[site]
        steps, batch = steps_batch(ref)
        m = math.prod(tap_shape) // (steps * batch)
        return {n: (math.prod(topo.out_shapes[n]) // math.prod(steps_batch(n)), m) for n in topo.hidden}

    def _channel_groups(self) -> dict[str, tuple[int, int]]:
        """(channels, positions) of every hidden layer whose spikes have a spatial layout."""
        groups = {}
        for n in self.topology.hidden:
            rec, shape = self._neurons[n], self.topology.out_shapes[n]
            per_sample = shape[2:] if rec.adapter.is_multistep(rec.module) else shape[1:]
            if len(per_sample) >= 2:
                groups[n] = (per_sample[0], math.prod(per_sample[1:]))
        return groups

    def _trace_lambda(self, rec: _Neuron) -> float:
        """Decay of the traces of ``rec``'s spikes: the option, else the neuron's own leak."""
        if self.config.trace == "spike" or self.config.lags:
            return 0.0
        return self.config.trace_lambda if self.config.trace_lambda is not None else rec.adapter.leak(rec.module)

    @staticmethod
    def _hook(fn, rec):
        return lambda module, *rest: fn(rec, *rest) if module.training and torch.is_grad_enabled() else None

    def _override_synapse(self, module: nn.Module, pres: list[_Neuron]) -> None:
        lam = self._trace_lambda(pres[0])
        patched = "forward" in module.__dict__  # someone replaced this instance's forward: honour it
        trace, original = TraceState(lam), module.forward
        rule = None if patched else fused_rule(module)

        def forward(x, *args, **kwargs):
            if args or kwargs or not self._active(module):
                return original(x, *args, **kwargs)
            return self._traced_forward(module, rule, original, trace, pres, x)

        self._removers.append(override(module, "forward", forward))

    # ------------------------------------------------------------ per-step hooks
    def _neuron_pre(self, rec: _Neuron, args: tuple, kwargs: dict):
        x = args[0]
        multistep = rec.adapter.is_multistep(rec.module)
        step_shape = x.shape[1:] if multistep else x.shape
        token = rec.adapter.incoming_state(rec.module, args, kwargs)
        rec.fresh = token is not rec.last_state or (isinstance(token, torch.Tensor) and token.shape != step_shape)
        rec.steps, rec.batch = (x.shape[0] if multistep else 1), step_shape[0]
        self._last_neuron = rec
        args, kwargs = rec.adapter.detach_state(rec.module, args, kwargs)
        if rec.hidden and self.method.injects_noise and self.config.inject == "before":
            rec.z = rec.noise.draw(x, rec.steps, rec.fresh)
            args = (torch.add(x, rec.z, alpha=self.alpha), *args[1:])
        if self.topology.tap == ("neuron", rec.name):
            args = (self._tap(args[0], rec), *args[1:])
        return args, kwargs

    def _neuron_post(self, rec: _Neuron, args: tuple, output: Any):
        self.health.neuron(rec, output)
        rec.last_state = rec.adapter.outgoing_state(rec.module, output)
        if self.config.local and rec.name in self.topology.hidden:
            readout = self.local_readouts[rec.name.replace(".", "_")]
            r = readout(rec.adapter.spike(output).reshape(rec.steps * rec.batch, -1))
            self._local_outputs.setdefault(rec.name, []).append((r, rec.steps, self.config.local_scale))
        if rec.name == self.config.igl:  # the intermediate readout: the output for earlier layers
            r = self.local_readouts["igl"](rec.adapter.spike(output).reshape(rec.steps * rec.batch, -1))
            if self.igl_method is not None:
                r = self._feedback_tap(self.igl_method, r, self._igl_layers(), rec)
            self._local_outputs.setdefault("igl", []).append((r, rec.steps, 1.0))
        if not rec.hidden:
            return None
        if rec.name in self._pending:
            raise OpzoError(
                f"Neuron '{rec.name}' was called twice in one time step (before the readout); "
                "opzo_ext needs each hidden neuron module to be used once per step. Use separate "
                "neuron modules for each use."
            )
        spike = rec.adapter.spike(output)
        carried = spike.detach() if self.method.cuts_spatial_bp else spike  # the cut of spatial BP
        z = None
        if self.method.injects_noise:
            if self.config.inject == "after":
                z = rec.noise.draw(spike, rec.steps, rec.fresh)
                passed = torch.add(carried, z, alpha=self.alpha)
            else:
                z, passed = rec.z, carried
        else:
            passed = carried
        activity = rec.activity.update(spike, rec.steps, rec.fresh) if rec.activity is not None else None
        self._pending[rec.name] = (spike, z, activity)
        if self.config.lags:
            if rec.steps != 1:
                raise OpzoError(f"lags=True needs single-step calls; '{rec.name}' ran {rec.steps} steps in one "
                                "call. Use step_mode 's' and a loop over time.")
            if rec.fresh:
                rec.history = []
            rec.history.append((spike, z))
        return rec.adapter.replace_spike(output, passed)

    def _traced_forward(self, module, rule, original, trace: TraceState, pres: list[_Neuron], x):
        steps = pres[0].steps
        a_hat = trace.update(x, steps, fresh=any(p.fresh for p in pres))
        return traced_call(module, rule, x, a_hat, original)

    def _tap(self, o: torch.Tensor, pre: Optional[_Neuron]) -> torch.Tensor:
        """Readout of one call: method bookkeeping, then the Tap that carries feedback."""
        steps = pre.steps if pre is not None else 1
        self.steps += steps
        self.health.readout()
        if not self.method.cuts_spatial_bp or not self._pending:
            self._pending.clear()
            return o
        names = [n for n in self.topology.hidden if n in self._pending]
        if self.config.lags:
            return self._lagged_tap(o, names, pre)
        return self._feedback_tap(self.method, o, names, pre)

    def _lagged_tap(self, o: torch.Tensor, layers: list[str], pre: Optional[_Neuron]) -> torch.Tensor:
        """Like :meth:`_feedback_tap`, with one entry per (layer, lag): this step's output feeds
        back to the spikes of every earlier step of the sequence."""
        entries, spikes, z = [], [], []
        for name in layers:
            self._pending.pop(name)
            history = self._neurons[name].history
            for k in range(len(history)):
                entries.append((name, k))
                spikes.append(history[-1 - k][0])
                z.append(history[-1 - k][1])
        call = TapCall(self.method, entries, [], [], self.alpha, 1, pre.batch if pre is not None else o.shape[0])
        call.z = [call.as_steps(t) for t in z]
        call.ctx = self.method.step(call, call.as_steps(o.detach()))
        call.z = []
        return Tap.apply(o, call, *spikes)

    def _feedback_tap(self, method, o: torch.Tensor, layers: list[str], pre: Optional[_Neuron]) -> torch.Tensor:
        """Wrap ``o`` in a Tap feeding ``method``'s signal back to the pending ``layers``."""
        steps = pre.steps if pre is not None else 1
        batch = pre.batch if pre is not None else o.shape[0]
        names = [n for n in layers if n in self._pending]
        if not names:
            return o
        spikes, z, activity = zip(*(self._pending.pop(n) for n in names))
        call = TapCall(method, names, [], [], self.alpha, steps, batch)
        call.z = [call.as_steps(t) if t is not None else None for t in z]
        call.activity = [call.as_steps(t) if t is not None else None for t in activity]
        # in place only when every earlier step's graph has been backpropagated (a graph kept for a
        # later backward, as with a time loop inside forward, keeps the matrices of its own step)
        in_place = all(c.done for c in self._live_taps)
        call.ctx = method.step(call, call.as_steps(o.detach()), in_place)
        self._live_taps.add(call)
        if not method.signal_uses_noise:
            call.z = []
        return Tap.apply(o, call, *spikes)

    # ------------------------------------------------------------------ helpers
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device)
            gen.manual_seed(self._seed)
        return gen

    def _load_local_state(self) -> None:
        if self._local_state is not None and len(self.local_readouts):
            self.local_readouts.load_state_dict(self._local_state)
            self._local_state = None

    def _load_noise_state(self) -> None:
        if self._pending_state is None or not self._neurons:
            return
        for name, state in self._pending_state.items():
            if name in self._neurons:
                self._neurons[name].noise.load_state_dict(state)
        self._pending_state = None


def feedback_bytes(shapes: dict[str, tuple[int, int]], method: Feedback, like: torch.Tensor) -> int:
    """Bytes of ``method``'s feedback matrices for layers of ``[n_l, m]`` ``shapes``."""
    return sum(method.matrix_bytes(shape, like) for shape in shapes.values())


def feedback_limit(like: torch.Tensor, limit_gb: Optional[float]) -> float:
    """Bytes allowed for feedback matrices: ``limit_gb``, else a quarter of the memory of ``like``'s device
    (the model, its activations and the optimizer need the rest)."""
    if limit_gb is not None:
        return limit_gb * 1e9
    if like.device.type == "cuda":
        return torch.cuda.get_device_properties(like.device).total_memory / 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4


def check_feedback_size(shapes: dict[str, tuple[int, int]], method: Feedback, like: torch.Tensor,
                        limit: float) -> None:
    """Refuse feedback matrices larger than ``limit`` bytes, naming the largest layers."""
    size = feedback_bytes(shapes, method, like)
    if size > limit:
        entry = method.entry_size(like)
        largest = sorted(shapes.items(), key=lambda kv: -kv[1][0] * kv[1][1])[:3]
        detail = ", ".join(f"'{n}' {a} x {b}" for n, (a, b) in largest)
        raise OpzoError(
            f"The feedback matrices would take {size / 1e9:.2f} GB ({size // entry:,} entries; "
            f"largest: {detail}), more than the {limit / 1e9:.2f} GB allowed on {like.device}. Use "
            "feedback_matrix='channel' (one row per conv channel), 'lowrank' (rank feedback_rank) or 'bf16' "
            "(half the bytes), a smaller input or fewer classes, or raise max_feedback_gb if the memory is there."
        )


def train(model: nn.Module, method: str = "opzo", *, config: Optional[TrainConfig] = None,
          example_input: Any = None, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> Session:
    """Train ``model`` with ``method`` inside a ``with`` block::

        with opzo.train(net, method="opzo") as session:
            ...  # the usual loop: out = net(x[t]); loss.backward(); optimizer.step()

    ``options`` are the fields of :class:`TrainConfig` (``alpha``, ``momentum``, ``noise``,
    ``inject``, ``antithetic``, ``scale_by_alpha``, ``trace``, ``trace_lambda``, ``seed``).
    ``example_input`` (one step's input) discovers the model's layers on entry instead of at the
    first training step. ``optimizer``: the session adds the parameters it owns (local readouts)
    to it as soon as they exist. The returned :class:`Session` is also usable without ``with``:
    ``session = opzo.train(net).open()`` ... ``session.close()``.
    """
    if config is None:
        config = TrainConfig(method=method, **options)
    elif options or method != "opzo":
        raise TypeError("Pass either config=TrainConfig(...) or method/options, not both.")
    return Session(model, config, example_input, optimizer)
