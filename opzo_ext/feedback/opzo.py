"""``method="opzo"``: momentum feedback connections (eq. 6 of the paper).

Per time step ``t`` and hidden layer ``l``, with noise ``z_l[t]`` ``[B, n_l]`` and perturbed output
``o~[t]`` ``[B, m]``::

    M_l <- lam * M_l + (1 - lam) * z_l[t]^T o~[t] / (B alpha)
    g_l[t] = gain_l[t] * e[t] @ M_l^T                   (i.e. M_l e per sample)

M starts at zero. ``gain`` (:mod:`~opzo_ext.feedback.opzo_gain`, set by ``feedback_scale``)
makes the feedback an estimate of the backpropagated error: the bias correction ``1 / (1 -
lam^k)`` after ``k`` updates times the reliability of M (default ``"jacobian"``);
``feedback_scale="paper"`` uses 1 and drops the ``1/alpha`` (appendix C.3.2; ``scale_by_alpha``
keeps it). M is updated in place when every earlier step's backward has run
(``in_place``; a second backward through an old graph after that would see the new M); otherwise
out of place, so a graph built at step ``t`` keeps
``M_l`` as it was at step ``t`` even when backward runs after later steps (time loop inside
``forward``, multi-step models).
"""
from __future__ import annotations

import torch

from ..distributed import all_gather_rows, all_reduce_sum, global_batch, world
from .base import Feedback
from .tap import matrix_signal
from .opzo_gain import FeedbackGain


class OPZO(Feedback):
    name = "opzo"

    def __init__(self, config, generator_for):
        super().__init__(config, generator_for)
        self.gain = FeedbackGain(config)  # bias correction and reliability of the feedback (feedback_scale)

    def injects_noise(self) -> bool:
        return True

    def can_share_rows(self) -> bool:
        return True

    def exchanges_per_step(self) -> bool:
        return True

    def new_matrix(self, shape, like):
        return like.new_zeros(shape[::-1], dtype=self.dtype or like.dtype).t()  # stored as M^T [m, n_l]: both products run row-major

    def scale(self, call, batch: int) -> float:
        """``(1 - lam) / B`` (``/ alpha`` unless ``feedback_scale="paper"`` without ``scale_by_alpha``),
        B the batch over all ranks."""
        return (1.0 - self.config.momentum) / batch / (call.alpha if self.config.divides_by_alpha else 1.0)

    @staticmethod
    def exchange(o: torch.Tensor, t: int, z_t: torch.Tensor, batch: int,
                 gathered: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The factors of step ``t``'s M update ``o~^T z`` (``o[t]`` ``[B_r, m]``, ``z_t``
        ``[B_r, rows]``) and whether the product must still be summed over ranks. Several processes
        either all-reduce the ``[m, rows]`` product (``True``) or, when the global batch's factors
        are smaller (``B (m + rows) < 2 m rows``, a ring all-reduce sending about twice its size),
        all-gather the factors and multiply them on every rank (``False``). ``gathered`` keeps each
        step's all-gathered ``o~`` for the call's other layers."""
        if world()[1] == 1:
            return o[t], z_t, False
        m, rows = o.shape[-1], z_t.shape[1]
        if batch * (m + rows) < 2 * m * rows:
            if t not in gathered:
                gathered[t] = all_gather_rows(o[t])
            return gathered[t], all_gather_rows(z_t), False
        return o[t], z_t, True

    @staticmethod
    def update(mt, o_t, z_t, lam: float, scale: float, in_place: bool, reduce: bool = False):
        """``M^T <- lam M^T + scale * o~^T z``; the product summed over ranks when ``reduce``."""
        if reduce:
            term = all_reduce_sum(o_t.t() @ z_t)
            return mt.mul_(lam).add_(term, alpha=scale) if in_place else torch.add(mt * lam, term, alpha=scale)
        if in_place:
            return mt.addmm_(o_t.t(), z_t, beta=lam, alpha=scale)
        return torch.addmm(mt, o_t.t(), z_t, beta=lam, alpha=scale)

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch = global_batch(o.shape[1], o.device)
        lam, scale = self.config.momentum, self.scale(call, batch)
        per_layer, gains, gathered = [], [], {}
        for name, z_l in zip(call.layers, call.z):
            mt, history = self.matrices[name].t(), []
            z_rows = self.rows(name, z_l)
            for t in range(o.shape[0]):
                o_t, z_t, reduce = self.exchange(o, t, z_rows[t], batch, gathered)
                mt = self.update(mt, o_t, z_t, lam, scale, in_place and o.shape[0] == 1, reduce)
                history.append(mt.t())
            self.matrices[name] = history[-1]
            per_layer.append(history)
            gains.append(self.gain.after(name, history, self.energy, o, z_rows, batch, call.alpha))
        return per_layer, gains

    def signal(self, call, e):
        histories, gains = call.ctx
        return [self.spread(name, self.gain.apply(g, c))
                for name, g, c in zip(call.layers, matrix_signal(histories, e), gains)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.gain.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gain.load_state_dict(state)
