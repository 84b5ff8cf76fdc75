"""The interface of a credit-assignment method (:class:`Feedback`) and the storage of its matrices.

A method forms the error each hidden layer receives. The session asks it, once, what it needs
(:meth:`Feedback.uses_tap`, :meth:`Feedback.injects_noise`, :meth:`Feedback.activity_trace`); at
every readout call it runs :meth:`Feedback.step` (no autograd) and, during ``loss.backward()``,
:meth:`Feedback.signal` through the :class:`~opzo_ext.feedback.tap.Tap`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import OpzoError
from ..traces import TraceState


class Feedback:
    """A credit-assignment method. Subclasses override what they need."""

    name = "?"
    dtype: Optional[torch.dtype] = None  # storage dtype of the matrices (None: the model's)

    def __init__(self, config, generator_for):
        self.config = config
        self.generator_for = generator_for  # device -> torch.Generator of the session
        self.matrices: dict[str, torch.Tensor] = {}  # neuron name -> [n_l, m] feedback matrix
        self.groups: dict[str, tuple[int, int]] = {}  # name -> (rows C, positions P) of a shared matrix

    # ------------------------------------------------------------ what the method needs
    def uses_tap(self) -> bool:
        """Hidden layers get this method's signal through the Tap, and their spikes reach the next
        layer detached (no spatial BP); False: autograd carries the error layer by layer (bp)."""
        return True

    def injects_noise(self) -> bool:
        """Hidden layers get ``alpha * z`` (before or after the neuron, ``inject=``)."""
        return False

    def activity_trace(self, lam: float) -> Optional[TraceState]:
        """A trace of each hidden layer's own spikes, handed to :meth:`step` (None: not needed)."""
        return None

    def stores_matrices(self) -> bool:
        """The method keeps a feedback matrix per hidden layer (sized and created by the session)."""
        return type(self).new_matrix is not Feedback.new_matrix

    def can_share_rows(self) -> bool:
        """Convolutional layers may share one matrix row per channel (``feedback_matrix="channel"``)."""
        return False

    def exchanges_per_step(self) -> bool:
        """With several processes, every step runs collectives (all ranks must take part)."""
        return False

    def open(self) -> None:
        """The session opens (attach what the method needs outside the model)."""

    def close(self) -> None:
        """The session closes (undo :meth:`open`)."""

    # ------------------------------------------------------------ matrices
    def new_matrix(self, shape: tuple[int, int], like: torch.Tensor) -> Optional[torch.Tensor]:
        """The initial feedback matrix ``[n_l, m]`` of a layer (None: the method has none)."""
        return None

    def storage_dtype(self, like: torch.Tensor) -> torch.dtype:
        """The dtype of the stored matrices for a model computing in ``like.dtype``."""
        return self.dtype or like.dtype

    def entry_size(self, like: torch.Tensor) -> int:
        """Bytes of one stored entry."""
        return self.storage_dtype(like).itemsize

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
    def step(self, call, o: torch.Tensor, in_place: bool = False) -> Any:
        """Bookkeeping of one readout :class:`~opzo_ext.feedback.tap.TapCall` (no autograd) with the
        perturbed output ``o`` ``[T, B, m]``; returns what :meth:`signal` needs (the Tap's
        ``call.ctx``). ``in_place``: no earlier Tap is still alive, so state may be updated in place."""
        return None

    def signal(self, call, e: torch.Tensor) -> list[torch.Tensor]:
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
        dtype = self.storage_dtype(like)
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
