"""``method="opzo", lags=True``: pseudo-zeroth-order feedback without temporal truncation
(appendix E.2 of the paper), for training with one backward per sequence (a BPTT budget).

The output at step ``t`` feeds back to the features of every earlier step ``t - k`` through one
momentum matrix per lag ``k`` (shared by all ``t``)::

    M_l^(k) <- lam M_l^(k) + (1 - lam) z_l[t-k]^T o~[t] / B     for k = 0..t
    dL/ds_l[t-k] += e[t] @ M_l^(k)^T

The session hands this method one entry per (layer, lag) in ``call.layers``: ``(name, k)``.
Matrices are keyed ``name`` for ``k = 0`` and ``"name@k"`` for ``k >= 1``. Updates are out of
place, so each step's graph keeps the matrices of its own step.
"""
from __future__ import annotations

import torch

from ..distributed import global_batch
from .tap import matrix_signal
from .opzo import OPZO


def lag_key(name: str, k: int) -> str:
    return name if k == 0 else f"{name}@{k}"


class LaggedOPZO(OPZO):
    def can_share_rows(self) -> bool:
        return False

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch = global_batch(o.shape[1], o.device)
        lam, scale = self.config.momentum, self.scale(call, batch)
        per_entry, gathered = [], {}
        for (name, k), z in zip(call.layers, call.z):
            key = lag_key(name, k)
            if key not in self.matrices:  # a longer sequence than seen so far: a new lag
                self.matrices[key] = torch.zeros_like(self.matrices[name])
            o_t, z_t, reduce = self.storage.exchange(o, 0, z[0], batch, gathered)
            mt = self.storage.update(self.matrices[key].t(), o_t, z_t, lam, scale, in_place=False, reduce=reduce)
            self.matrices[key] = mt.t()
            per_entry.append([mt.t()])
        gains = [self.gain.after(lag_key(name, k), h, self.storage.energy, o, z, batch, call.alpha)
                 for (name, k), z, h in zip(call.layers, call.z, per_entry)]
        return per_entry, gains

    def signal(self, call, e):
        histories, gains = call.ctx
        return [self.gain.apply(g, c) for g, c in zip(matrix_signal(histories, e), gains)]  # dense matrices
