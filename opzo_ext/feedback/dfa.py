"""``method="dfa"``: direct feedback alignment with a fixed random matrix ``B_l`` ``[n_l, m]``
(Kaiming-uniform, fan-in ``m``, drawn from the session's generator): ``g_l = e @ B_l^T``."""
from __future__ import annotations

import torch

from .base import Feedback
from .tap import matrix_signal


class DFA(Feedback):
    name = "dfa"

    def can_share_rows(self) -> bool:
        return True

    def new_matrix(self, shape, like):
        b = like.new_empty(shape)
        return torch.nn.init.kaiming_uniform_(b, generator=self.generator_for(like.device))

    def step(self, call, o, in_place=False):
        return [[self.matrices[name]] for name in call.layers]

    def signal(self, call, e):
        return [self.storage.spread(name, g) for name, g in zip(call.layers, matrix_signal(call.ctx, e))]
