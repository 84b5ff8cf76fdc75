"""``method="dfa"``: direct feedback alignment with a fixed random matrix ``B_l`` ``[n_l, m]``
(Kaiming-uniform, fan-in ``m``, drawn from the session's generator): ``g_l = e @ B_l^T``."""
from __future__ import annotations

import torch

from .base import Feedback, matrix_signal


class DFA(Feedback):
    name = "dfa"

    @torch.no_grad()
    def step(self, layers, sizes, z, o, alpha):
        mats = []
        for name, n in zip(layers, sizes):
            b = self.matrix(name, (n, o.shape[-1]), o)
            if b is None:
                b = o.new_empty(n, o.shape[-1])
                torch.nn.init.kaiming_uniform_(b, generator=self.generator_for(o.device))
                self.matrices[name] = b
            mats.append([b])
        return mats

    def signal(self, ctx, layers, z, e, alpha):
        return matrix_signal(ctx, e)
