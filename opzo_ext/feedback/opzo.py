"""``method="opzo"``: momentum feedback connections (eq. 6 of the paper).

Per time step ``t`` and hidden layer ``l``, with noise ``z_l[t]`` ``[B, n_l]`` and perturbed output
``o~[t]`` ``[B, m]``::

    M_l <- lam * M_l + (1 - lam) * z_l[t]^T o~[t] / B   (/ alpha if scale_by_alpha)
    g_l[t] = e[t] @ M_l^T                               (i.e. M_l e per sample)

M starts at zero. The update is out of place, so a graph built at step ``t`` keeps ``M_l`` as it
was at step ``t`` even when backward runs after later steps (time loop inside ``forward``).
"""
from __future__ import annotations

import torch

from .base import Feedback, matrix_signal


class OPZO(Feedback):
    name = "opzo"
    injects_noise = True

    def new_matrix(self, shape, like):
        return like.new_zeros(shape)

    @torch.no_grad()
    def step(self, layers, z, o, alpha):
        lam = self.config.momentum
        batch = o.shape[1]
        scale = (1.0 - lam) / batch / (alpha if self.config.scale_by_alpha else 1.0)
        per_layer = []
        for name, z_l in zip(layers, z):
            m, history = self.matrices[name], []
            for t in range(o.shape[0]):
                m = torch.addmm(m, z_l[t].t(), o[t], beta=lam, alpha=scale)
                history.append(m)
            self.matrices[name] = m
            per_layer.append(history)
        return per_layer

    def signal(self, ctx, layers, z, e, alpha):
        return matrix_signal(ctx, e)
