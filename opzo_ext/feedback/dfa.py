"""``method="dfa"``: direct feedback alignment with a fixed random matrix ``B_l`` ``[n_l, m]``
(Kaiming-uniform, fan-in ``m``, drawn from the session's generator): ``g_l = e @ B_l^T``."""
from __future__ import annotations

import torch

from .base import Feedback, matrix_signal


class DFA(Feedback):
    name = "dfa"

    def new_matrix(self, shape, like):
        b = like.new_empty(shape)
        return torch.nn.init.kaiming_uniform_(b, generator=self.generator_for(like.device))

    def step(self, layers, z, o, alpha, in_place=False):
        return [[self.matrices[name]] for name in layers]

    def signal(self, ctx, layers, z, e, alpha):
        return matrix_signal(ctx, e)
