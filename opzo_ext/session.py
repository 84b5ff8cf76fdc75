"""The training session: what :func:`train` returns and ``with`` opens.

Opening attaches the per-step hooks of :mod:`opzo_ext.flow` to the unmodified model (through one
:class:`~opzo_ext.attachment.Attachment`), closing removes every one of them; the layers are
discovered at the first training step (or from ``example_input``), and the feedback matrices, noise
sources and the readouts of the extensions are created then, once. The session also holds
everything that must survive a restart (:meth:`Session.state_dict`, :mod:`opzo_ext.resume`).
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import nn

from . import guards
from . import health as _health
from . import resume
from . import summary as _summary
from .adapters import check_model, find_adapter
from .attachment import Attachment, inject
from .batchnorm import CleanStatistics
from .config import TrainConfig
from .discovery import Topology, discover
from .distributed import shared_seed, world
from .errors import OpzoError
from .extensions import IntermediateReadout, extensions_for, readout_loss
from .feedback import method_class
from .feedback.zo import LossTap
from .build import build, init_matrices
from .flow import NeuronState, StepFlow

_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def claimed_modules() -> dict[int, nn.Module]:
    """``id`` of every module of a model with an open session -> that model."""
    return {id(m): active for active in _ACTIVE for m in active.modules()}


class Session:
    """A training session on ``model``; create it with :func:`opzo_ext.train`.

    Attributes:
        layers: names of the hidden neuron modules receiving feedback (with ``inject="conv"``:
            the hidden convolutions), in forward order (known after the first training step, or
            at once with ``example_input``).
        feedback: layer name -> feedback matrix ``[n_l, m]`` in use (M for opzo, B for dfa);
            with ``feedback_matrix="lowrank"`` the product ``A B^T`` is formed on each access (the
            factors themselves are in ``session.method.matrices``).
        epoch: current epoch, read by an alpha schedule; advance it with :meth:`next_epoch` at the
            end of each epoch (or set it).
        steps: number of time steps trained so far.
        local_readouts: the session's own readouts (``local``, ``igl``); train them with
            :meth:`parameters` and :meth:`local_loss`.
        health: the :class:`~opzo_ext.health.Health` checks (silent layers, feedback too small),
            which warn once per cause and layer; the option ``health=False`` turns them off.
            :meth:`summary` shows what they found.
        clean_bn: the recomputation of BatchNorm statistics without the noise
            (:class:`~opzo_ext.batchnorm.CleanStatistics`, option ``recompute_bn``), or None.
    """

    def __init__(self, model: nn.Module, config: TrainConfig, example_input: Any = None,
                 optimizer: Optional[torch.optim.Optimizer] = None):
        check_model(model)
        self.model, self.config = model, config
        self._example_input = example_input
        self._optimizer = optimizer
        self._group = guards.OptimizerGroup(optimizer)  # the local readouts in the user's optimizer
        self.local_readouts = nn.ModuleDict()  # local learning, intermediate readout
        self.local_outputs: dict[str, list] = {}  # readout outputs since the last local_loss
        self._epoch, self._epoch_set, self.steps = 0, False, 0
        self.topology: Optional[Topology] = None
        self.layout: Optional[str] = None  # how the feedback matrices are stored, once created
        seed = config.seed if config.seed is not None else int(torch.randint(2**62, (1,)))
        self._seed = shared_seed(seed)  # the same on every rank (DFA's B); noise adds the rank
        self._rank = world()[0]
        self._generators: dict[str, torch.Generator] = {}
        self.method = method_class(config)(config, self._generator)
        self.extensions = extensions_for(self)
        self.flow = StepFlow(self)
        self.health = _health.Health(self, enabled=config.health)
        self._attachment = Attachment()
        self.deferred = resume.Deferred()  # parts of a loaded state waiting for the layers
        self._open = False
        self._warned_eval = False
        self.clean_bn: Optional[CleanStatistics] = None  # recompute_bn: BatchNorm statistics without noise
        self._unopened = guards.forgotten_with(self)

    # ----------------------------------------------------------------- public API
    @property
    def layers(self) -> list[str]:
        return list(self.flow.layers)

    @property
    def igl_method(self):
        """The feedback method of the intermediate readout (``igl=``), else None."""
        return next((e.method for e in self.extensions if isinstance(e, IntermediateReadout)), None)

    @property
    def igl_layers(self) -> list[str]:
        """Hidden layers fed back from the intermediate readout (empty without ``igl``)."""
        return next((e.layers for e in self.extensions if isinstance(e, IntermediateReadout)), [])

    @property
    def feedback(self) -> dict[str, torch.Tensor]:
        return {**(self.igl_method.feedback_matrices() if self.igl_method else {}),
                **self.method.feedback_matrices()}

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch, self._epoch_set = int(value), True

    @property
    def alpha(self) -> float:
        """The noise scale now: ``config.alpha``, or its schedule at :attr:`epoch`."""
        return self.config.alpha_at(self.epoch)

    def next_epoch(self) -> float:
        """End of an epoch, like an LR scheduler's ``step()``: advances :attr:`epoch` (read by an
        alpha schedule such as :func:`~opzo_ext.linear_alpha`) and returns the new alpha."""
        self.epoch += 1
        return self.alpha

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
        for rec in self.flow.neurons.values():
            rec.last_state = None

    def state_dict(self) -> dict:
        """Feedback matrices, counters, RNG and antithetic state: enough to resume exactly."""
        return resume.session_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Load what :meth:`state_dict` saved; all or nothing (see :func:`opzo_ext.resume.load`)."""
        resume.load(self, state)

    def loss(self, losses: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The loss to backpropagate, from each sample's loss ``losses`` (``[B]``, or ``[T, B]`` /
        ``[T*B]`` for a multi-step call), e.g. ``F.cross_entropy(out, y, reduction="none")``:
        ``losses.mean()`` (or ``.sum()`` with ``reduction="sum"``). ``method="zo"`` needs it (each
        sample's noise is multiplied by that sample's own loss, eq. 3); for the other methods it
        only reduces, so one loop serves every method::

            loss = session.loss(F.cross_entropy(net(x[t]), y, reduction="none"))
            loss.backward()
        """
        if reduction not in ("mean", "sum"):
            raise OpzoError(f"session.loss: reduction={reduction!r} is not valid; choose 'mean' or 'sum'.")
        weight = 1.0 / losses.numel() if reduction == "mean" else 1.0
        records = [r for method in (self.method, self.igl_method) if method is not None
                   for r in method.record_loss(losses.detach(), weight)]
        if records:  # ZO: the scale applied to the returned loss reaches the records in backward
            return LossTap.apply(losses, records, weight)
        return losses.mean() if reduction == "mean" else losses.sum()

    def parameters(self):
        """Parameters the session owns and the optimizer must train: the local readouts
        (``local=...``) and the intermediate readout (``igl=...``). Known once the layers are
        (first training step or ``example_input``)."""
        if (self.config.local or self.config.igl) and self.topology is None:
            raise OpzoError(
                "The local readouts are created when the session first sees the model: call "
                "session.parameters() after the first training step, or pass example_input=... "
                "(or optimizer=...) to opzo.train.")
        return iter(self.local_readouts.parameters())

    def local_loss(self, target: torch.Tensor, loss_fn=None) -> torch.Tensor:
        """The loss of the session's own readouts over the steps since the last call:
        ``local * sum_l loss_fn(R_l s_l, target)`` over hidden layers ``l`` (local learning,
        appendix C.1) plus ``loss_fn(R s_igl, target)`` for the intermediate readout (``igl``), for
        each time step. Add it to your loss before ``backward()``. ``loss_fn``: cross-entropy."""
        if not (self.config.local or self.config.igl):
            raise OpzoError("session.local_loss needs local learning or an intermediate readout: open the "
                            "session with local=0.01 (or True) or igl='<layer name>'.")
        total = readout_loss(self.local_outputs, target, loss_fn or torch.nn.functional.cross_entropy)
        self.local_outputs.clear()
        return total

    # ------------------------------------------------------------ open / close
    def __enter__(self) -> "Session":
        return self.open()

    def __exit__(self, *exc) -> bool:
        if exc[0] is not None and self.clean_bn is not None:
            self.clean_bn.clear()  # leaving on an error: no forward passes on the way out
        self.close()
        return False

    def open(self) -> "Session":
        """Attach to the model (again, after :meth:`close`: the same layers, matrices and state)."""
        if self._open:
            raise OpzoError("This session is already open; close it before opening it again.")
        self._unopened.remove()
        claimed = claimed_modules()
        for name, module in self.model.named_modules():
            if id(module) in claimed:
                raise OpzoError(
                    f"{type(self.model).__name__} already has an open opzo_ext session: its module "
                    f"'{name or type(module).__name__}' belongs to the session on "
                    f"{type(claimed[id(module)]).__name__}; close that session before opening another one.")
        _ACTIVE.add(self.model)
        self._open = True
        try:
            self._attachment.pre_hook(self.model, self._root_pre)
            self._attachment.post_hook(self.model, self._root_post)
            if self.topology is not None:
                self._hook()
            elif self._example_input is not None:
                example = self._example_input
                self._discover(example if isinstance(example, tuple) else (example,), {})
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove every hook and override; the model is left as it was, but for its BatchNorm
        statistics, recomputed without the noise (``recompute_bn``) (idempotent)."""
        self._attachment.detach()
        if self._optimizer is None:
            self.update_feedback()
        if self._open:
            guards.check_schedule(self)
        self.flow.pending.clear()
        self.local_outputs.clear()
        if self._open:
            self._open = False
            _ACTIVE.discard(self.model)
            self._group.leave()
        if self.clean_bn is not None:
            try:
                self.clean_bn.refresh(self.model)  # the model leaves the session normalised without noise
            finally:
                self.clean_bn.clear()

    # ------------------------------------------------------------ attaching
    def active(self, module: nn.Module) -> bool:
        """Whether the hooks act on this call: training mode with gradients."""
        return module.training and torch.is_grad_enabled()

    def _root_pre(self, model, args, kwargs):
        self.flow.pending.clear()
        if self.active(model):
            guards.check_input(model, args, kwargs)
            guards.check_join(self)
            if self.topology is None:
                self._discover(args, kwargs)
            if self.clean_bn is not None:
                self.clean_bn.before(args, kwargs, self._first_neuron().sequences)
            return None
        if not model.training and self.clean_bn is not None:
            self.clean_bn.refresh(model)  # evaluation after training: BatchNorm statistics without noise
        if not model.training and torch.is_grad_enabled() and not self._warned_eval:
            self._warned_eval = True
            guards.warn_eval(model)
        return None

    def _root_post(self, model, args, output):
        if self.clean_bn is not None and self.active(model):
            self.clean_bn.after(self._first_neuron().sequences)
        return None

    def _first_neuron(self) -> NeuronState:
        return self.flow.neurons[self.topology.neurons[0]]

    def _discover(self, args: tuple, kwargs: dict) -> None:
        topology = discover(self.model, args, kwargs, lambda m: find_adapter(m) is not None)
        self._build(topology)
        self._hook()

    def _build(self, topology: Topology) -> None:
        """Once, when the layers are known (:func:`opzo_ext.build.build`)."""
        build(self, topology)

    def _init_matrices(self) -> None:
        """Create (or check loaded) feedback matrices (:func:`opzo_ext.build.init_matrices`)."""
        init_matrices(self)

    def _hook(self) -> None:
        """Every hook and override of an open session (at each open, once the layers are known)."""
        inject(self, self._attachment)
        self._group.join(self.local_readouts.parameters())

    def update_feedback(self) -> None:
        """The methods' update of learned feedback (DKP's Adam step), once per optimizer step: the
        session calls it after ``optimizer.step()`` of the optimizer it was given, else at the
        start of each sequence and on close."""
        for method in (self.method, self.igl_method):
            if method is not None:
                method.update_feedback()

    def trace_lambda(self, rec: NeuronState) -> float:
        """Decay of the traces of ``rec``'s spikes: the option, else the neuron's own leak."""
        if self.config.trace == "spike" or self.config.lags:
            return 0.0
        return self.config.trace_lambda if self.config.trace_lambda is not None else rec.adapter.leak(rec.module)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device)
            gen.manual_seed(self._seed)
        return gen


def train(model: nn.Module, method: str = "opzo", *, config: Optional[TrainConfig] = None,
          example_input: Any = None, optimizer: Optional[torch.optim.Optimizer] = None, **options) -> Session:
    """Train ``model`` with ``method`` inside a ``with`` block::

        with opzo.train(net, method="opzo") as session:
            ...  # the usual loop: out = net(x[t]); loss.backward(); optimizer.step()

    ``options`` are the fields of :class:`TrainConfig` (see it for each one's meaning and the
    paper's value): ``alpha`` (a number or a schedule such as ``linear_alpha(0.2, 0.01, epochs)``),
    ``momentum``, ``noise``, ``inject``, ``antithetic``, ``feedback_scale``, ``scale_by_alpha``,
    ``trace``, ``trace_lambda``, ``seed``, ``dkp_lr``, ``dkp_weight_decay``, ``local``, ``igl``,
    ``lags``, ``max_feedback_gb``, ``feedback_matrix``, ``feedback_rank``, ``health``,
    ``recompute_bn``.
    ``example_input`` (one step's input) discovers the model's layers on entry instead of at the
    first training step. ``optimizer``: the session adds the parameters it owns (local readouts)
    to it while it is open. The returned :class:`Session` is also usable without ``with``:
    ``session = opzo.train(net).open()`` ... ``session.close()``.
    """
    if config is None:
        config = TrainConfig(method=method, **options)
    elif options or method != "opzo":
        raise TypeError("Pass either config=TrainConfig(...) or method/options, not both.")
    return Session(model, config, example_input, optimizer)
