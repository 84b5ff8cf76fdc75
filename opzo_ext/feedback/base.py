"""The interface of a credit-assignment method (:class:`Feedback`) and the storage of its matrices.

A method forms the error each hidden layer receives. The session asks it, once, what it needs
(:meth:`Feedback.uses_tap`, :meth:`Feedback.injects_noise`, :meth:`Feedback.activity_trace`); at
every readout call it runs :meth:`Feedback.step` (no autograd) and, during ``loss.backward()``,
:meth:`Feedback.signal` through the :class:`~opzo_ext.feedback.tap.Tap`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..traces import TraceState
from .storage import Dense, storage_for


class Feedback:
    """A credit-assignment method. Subclasses override what they need."""

    name = "?"

    def __init__(self, config, generator_for):
        self.config = config
        self.generator_for = generator_for  # device -> torch.Generator of the session
        self.storage: Dense = storage_for(config, generator_for)  # how the matrices are kept
        self.matrices: dict[str, Any] = {}  # neuron name -> its feedback matrix, as the storage keeps it

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

    def update_feedback(self) -> None:
        """Once per optimizer step of the network: update learned feedback (only DKP)."""

    def record_loss(self, losses: torch.Tensor, weight: float) -> list:
        """Each sample's loss of the latest steps (:meth:`Session.loss <opzo_ext.Session.loss>`),
        weighted by ``weight`` in the reduced loss; returns the calls that take them (only ZO)."""
        return []

    # ------------------------------------------------------------ matrices (in self.storage)
    def new_matrix(self, shape: tuple[int, int], like: torch.Tensor) -> Optional[Any]:
        """The initial feedback matrix ``[n_l, m]`` of a layer (None: the method has none)."""
        return None

    def entry_size(self, like: torch.Tensor) -> int:
        """Bytes of one stored entry."""
        return self.storage.entry_size(like)

    def matrix_bytes(self, shape: tuple[int, int], like: torch.Tensor) -> int:
        """Bytes of the feedback matrix of a layer of shape ``[n_l, m]``, before allocating it."""
        return self.storage.matrix_bytes(shape, like)

    def energy(self, m: Any) -> torch.Tensor:
        """``|F|_F^2`` of a stored feedback matrix (float32 accumulation), on its device."""
        return self.storage.energy(m)

    def feedback_matrices(self) -> dict[str, torch.Tensor]:
        """Neuron name -> feedback matrix ``[n_l, m]`` as used by :meth:`signal`."""
        return {name: self.storage.dense(m) for name, m in self.matrices.items()}

    def init_matrices(self, shapes: dict[str, tuple[int, int]], like: torch.Tensor) -> None:
        """Create the feedback matrices once the layers are known; loaded ones are checked."""
        for name, shape in shapes.items():
            if name in self.matrices:
                self.matrices[name] = self.storage.check(name, self.matrices[name], shape, like)
            else:
                m = self.new_matrix(shape, like)
                if m is not None:
                    self.matrices[name] = m

    def share_rows(self, groups: dict[str, tuple[int, int]]) -> None:
        """Layers whose matrix has one row per channel ``C`` shared by ``P`` positions."""
        self.storage = Dense(groups, self.storage.master_float32)

    @torch.no_grad()
    def step(self, call, o: torch.Tensor, in_place: bool = False) -> Any:
        """Bookkeeping of one readout :class:`~opzo_ext.feedback.tap.TapCall` (no autograd) with the
        perturbed output ``o`` ``[T, B, m]``; returns what :meth:`signal` needs (the Tap's
        ``call.ctx``). ``in_place``: no earlier Tap is still alive, so state may be updated in place."""
        return None

    def signal(self, call, e: torch.Tensor) -> list[torch.Tensor]:
        """Errors ``[T, B, n_l]`` for each layer of ``call.layers``, from ``e = dL/do`` ``[T, B, m]``."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"matrices": dict(self.matrices)}

    def load_state_dict(self, state: dict) -> None:
        """Copies the matrices: later in-place updates must not write into ``state``."""
        self.matrices = {k: tuple(t.clone() for t in v) if isinstance(v, tuple) else v.clone()
                         for k, v in state["matrices"].items()}
