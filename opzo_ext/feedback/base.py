"""What every credit-assignment method shares: the :class:`Tap` that sends feedback to hidden layers.

At the readout, once per call, the session calls ``method.step(...)`` (no autograd: OPZO updates
its M here) and wraps the readout output ``o`` in :class:`Tap`. Tap is the identity forward; in
backward it hands ``e = dL/do`` on to the readout unchanged and ``method.signal(...)`` (for OPZO:
``M_l e``) to every hidden layer's spike tensor, from where autograd applies the neuron's own
surrogate derivative and reaches the synapse weights through their traces.

Shapes: ``o`` and ``e`` are ``[T, B, m]``; ``z_l`` and the signal of layer ``l`` are ``[T, B, n_l]``
(``T = 1`` for a single-step call).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import OpzoError


class Feedback:
    """A credit-assignment method. Subclasses set the class flags and override what they need."""

    name = "?"
    cuts_spatial_bp = True  # hidden spikes are detached downstream; feedback enters through Tap
    injects_noise = False  # hidden layers get alpha * z
    needs_loss = False  # the signal uses the scalar loss value (ZO)
    signal_uses_noise = False  # signal() reads z (else z is dropped after step() to save memory)
    needs_activity = False  # step() reads each hidden layer's own spike trace (DKP)
    dtype: Optional[torch.dtype] = None  # storage dtype of the matrices (None: the model's)

    def __init__(self, config, generator_for):
        self.config = config
        self.generator_for = generator_for  # device -> torch.Generator of the session
        self.matrices: dict[str, torch.Tensor] = {}  # neuron name -> [n_l, m] feedback matrix
        self.groups: dict[str, tuple[int, int]] = {}  # name -> (rows C, positions P) of a shared matrix

    def new_matrix(self, shape: tuple[int, int], like: torch.Tensor) -> Optional[torch.Tensor]:
        """The initial feedback matrix ``[n_l, m]`` of a layer (None: the method has none)."""
        return None

    def entry_size(self, like: torch.Tensor) -> int:
        """Bytes of one stored entry (``dtype``'s, else those of the model's ``like``)."""
        return self.dtype.itemsize if self.dtype else like.element_size()

    def matrix_bytes(self, shape: tuple[int, int], like: torch.Tensor) -> int:
        """Bytes of the feedback matrix of a layer of shape ``[n_l, m]``, before allocating it."""
        return shape[0] * shape[1] * self.entry_size(like)

    @staticmethod
    def energy(m: torch.Tensor) -> torch.Tensor:
        """``|F|_F^2`` of a stored feedback matrix (float32 accumulation), on its device."""
        return torch.linalg.vector_norm(m.detach(), dtype=torch.float32).square()

    def feedback_matrices(self) -> dict[str, torch.Tensor]:
        """Neuron name -> feedback matrix ``[n_l, m]`` as used by :meth:`signal`."""
        return self.matrices

    def init_matrices(self, shapes: dict[str, tuple[int, int]], like: torch.Tensor) -> None:
        """Create the feedback matrices once the layers are known; loaded ones are checked."""
        for name, shape in shapes.items():
            if self.matrix(name, shape, like) is None:
                m = self.new_matrix(shape, like)
                if m is not None:
                    self.matrices[name] = m

    @torch.no_grad()
    def step(self, call: "TapCall", o: torch.Tensor, in_place: bool = False) -> Any:
        """Bookkeeping of one readout call (no autograd) with the perturbed output ``o`` ``[T, B, m]``;
        returns what :meth:`signal` needs (stored as ``call.ctx``). ``in_place``: no earlier Tap is
        still alive, so state may be updated in place."""
        return None

    def signal(self, call: "TapCall", e: torch.Tensor) -> list[torch.Tensor]:
        """Errors ``[T, B, n_l]`` for each layer of ``call.layers``, from ``e = dL/do`` ``[T, B, m]``."""
        raise NotImplementedError

    def matrix(self, name: str, shape: tuple[int, int], like: torch.Tensor) -> Optional[torch.Tensor]:
        """The stored feedback matrix of ``name`` on ``like``'s device, checked against ``shape``."""
        m = self.matrices.get(name)
        if m is None:
            return None
        if tuple(m.shape) != tuple(shape):
            raise OpzoError(
                f"The feedback matrix of layer '{name}' has shape {tuple(m.shape)} but the layer needs "
                f"{tuple(shape)} ([neurons, outputs]): the loaded session state was made for another "
                "model or input size."
            )
        dtype = self.dtype or like.dtype
        if m.device != like.device or m.dtype != dtype:
            m = self.matrices[name] = m.to(like.device, dtype)
        return m

    def share_rows(self, groups: dict[str, tuple[int, int]]) -> None:
        """Layers whose matrix has one row per channel ``C`` shared by ``P`` positions."""
        self.groups = dict(groups)

    def rows(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``[..., n_l]`` per neuron -> ``[..., C]`` per row (mean over the positions sharing it)."""
        group = self.groups.get(name)
        return x if group is None else x.reshape(*x.shape[:-1], *group).mean(-1)

    def spread(self, name: str, g: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` per row -> ``[..., n_l]`` per neuron (each position gets its row's value)."""
        group = self.groups.get(name)
        return g if group is None else g.unsqueeze(-1).expand(*g.shape, group[1]).reshape(*g.shape[:-1], -1)

    def state_dict(self) -> dict:
        return {"matrices": dict(self.matrices)}

    def load_state_dict(self, state: dict) -> None:
        """Copies the matrices: later in-place updates must not write into ``state``."""
        self.matrices = {k: tuple(t.clone() for t in v) if isinstance(v, tuple) else v.clone()
                         for k, v in state["matrices"].items()}


@dataclass(eq=False)  # hashed by identity: the session tracks live calls in a WeakSet
class TapCall:
    """One readout call: the method, what its ``step`` returned, and the layout of ``o``."""

    method: Feedback
    layers: list[str]  # hidden layers of this call
    z: list[Optional[torch.Tensor]]  # their noise [T, B, n_l] (None without noise)
    activity: list[Optional[torch.Tensor]]  # their spike traces [T, B, n_l] (methods that need it)
    alpha: float
    steps: int
    batch: int
    ctx: Any = None  # what method.step returned
    done: bool = False  # backward has run through this call

    def as_steps(self, x: torch.Tensor) -> torch.Tensor:
        """View a per-call tensor (``[B, ...]``, ``[T, B, ...]`` or ``[T*B, ...]``) as ``[T, B, n]``."""
        return x.reshape(self.steps, self.batch, -1)


class Tap(torch.autograd.Function):
    """Identity on the readout output ``o``; backward returns ``e`` to ``o`` and the method's
    feedback to each hidden spike tensor in ``spikes`` (reshaped to each tensor's shape)."""

    @staticmethod
    def forward(ctx, o, call, *spikes):
        ctx.call = call
        ctx.spike_shapes = [s.shape for s in spikes]
        return o

    @staticmethod
    def backward(ctx, e):
        call = ctx.call
        signals = call.method.signal(call, call.as_steps(e))
        call.done = True
        return (e, None, *(g.reshape(shape) for g, shape in zip(signals, ctx.spike_shapes)))


def matrix_signal(matrices_per_step: list[list[torch.Tensor]], e: torch.Tensor) -> list[torch.Tensor]:
    """``g_l[t] = e[t] @ F_l[t]^T`` for per-step feedback matrices ``F_l[t]`` of shape [n_l, m]."""
    out = []
    for mats in matrices_per_step:
        if len(mats) == 1:
            out.append(e @ mats[0].t())
        else:
            out.append(torch.stack([e[t] @ m.t() for t, m in enumerate(mats)]))
    return out
