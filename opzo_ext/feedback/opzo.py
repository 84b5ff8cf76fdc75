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
``forward``, multi-step models). Eq. 6 itself, the exchange between processes and how M is stored
(dense, per channel, bfloat16, low rank) are in :mod:`~opzo_ext.feedback.storage`.
"""
from __future__ import annotations

import torch

from ..distributed import global_batch
from .base import Feedback
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
        return self.storage.zeros(shape, like)

    def scale(self, call, batch: int) -> float:
        """``(1 - lam) / B`` (``/ alpha`` unless ``feedback_scale="paper"`` without ``scale_by_alpha``),
        B the batch over all ranks."""
        return (1.0 - self.config.momentum) / batch / (call.alpha if self.config.divides_by_alpha else 1.0)

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch = global_batch(o.shape[1], o.device)
        lam, scale, storage = self.config.momentum, self.scale(call, batch), self.storage
        per_layer, gains, gathered = [], [], {}
        for name, z_l in zip(call.layers, call.z):
            z_rows = storage.rows(name, z_l)
            history = storage.momentum_steps(self.matrices[name], o, z_rows, lam, scale,
                                             in_place and o.shape[0] == 1, batch, gathered)
            self.matrices[name] = history[-1]
            per_layer.append(history)
            gains.append(self.gain.after(name, history, storage.energy, o, z_rows, batch, call.alpha))
        return per_layer, gains

    def signal(self, call, e):
        histories, gains = call.ctx
        return [self.storage.spread(name, self.gain.apply(self.storage.signal(h, e), c))
                for name, h, c in zip(call.layers, histories, gains)]

    def state_dict(self) -> dict:
        return {**super().state_dict(), **self.gain.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.gain.load_state_dict(state)
