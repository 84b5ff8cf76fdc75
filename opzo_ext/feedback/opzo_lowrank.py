"""``method="opzo", feedback_matrix="lowrank"``: M kept as a rank-``r`` product ``M = A B^T``.

``A`` ``[n_l, k]`` and ``B`` ``[m, k]`` (``k <= r``, ``B`` with orthonormal columns) take
``(n_l + m) k`` entries instead of ``n_l m``. Each step the momentum update is applied to the
factors and the result cut back to rank ``r`` (a streaming truncated SVD)::

    M' = lam A B^T + s z^T o~ = [lam A, s z^T] [B, o~^T]^T        (rank <= k + B_t)
    [B, o~^T] = Q R  (QR, Q [m, q]),   G = [lam A, s z^T] R^T      so M' = G Q^T
    G^T G = W S^2 W^T (eigh, [q, q]):  A <- G W_r,  B <- Q W_r     (the top r directions)

with ``s = (1 - lam) / B`` as for the dense M. While ``q <= r`` (e.g. ``m <= r``) nothing is cut
and the factors hold M exactly. The cost per step is ``O(n_l q^2)`` with ``q = min(m, k + B_t)``,
below the dense update's ``O(n_l m B_t)`` when ``(r + B_t)^2 < m B_t``; the feedback is
``g = (e @ B) @ A^T``. Updates are out of place (the factors are replaced), so a graph built at
step ``t`` keeps the factors of step ``t``. With several processes every rank truncates the same
global batch (``o~`` and ``z`` are all-gathered), so all ranks hold identical factors.
"""
from __future__ import annotations

import torch

from ..distributed import all_gather_rows, global_batch
from ..errors import OpzoError
from .opzo import OPZO

Factors = tuple[torch.Tensor, torch.Tensor]  # (A [n_l, k], B [m, k]); M = A @ B.T


class OPZOLowRank(OPZO):
    @property
    def rank(self) -> int:
        return self.config.feedback_rank

    def storage_dtype(self, like):
        """float32 for half-precision models: PyTorch has no QR in float16 or bfloat16."""
        return torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype

    def new_matrix(self, shape, like):
        n, m = shape
        dtype = self.storage_dtype(like)
        return like.new_zeros(n, 0, dtype=dtype), like.new_zeros(m, 0, dtype=dtype)  # M = 0: rank 0

    def matrix_bytes(self, shape, like):
        n, m = shape
        return (n + m) * min(self.rank, n, m) * self.entry_size(like)

    def feedback_matrices(self):
        return {name: a @ b.t() for name, (a, b) in self.matrices.items()}

    def matrix(self, name, shape, like):
        factors = self.matrices.get(name)
        if factors is None:
            return None
        a, b = factors
        if (a.shape[0], b.shape[0]) != tuple(shape):
            raise OpzoError(
                f"The low-rank feedback factors of layer '{name}' are for a [{a.shape[0]}, {b.shape[0]}] matrix "
                f"but the layer needs {tuple(shape)} ([neurons, outputs]): the loaded session state was made "
                "for another model or input size.")
        dtype = self.storage_dtype(like)
        factors = self.matrices[name] = (a.to(like.device, dtype), b.to(like.device, dtype))
        return factors

    def truncate(self, factors: Factors, o_t: torch.Tensor, z_t: torch.Tensor, lam: float, scale: float) -> Factors:
        """The rank-``r`` factors of ``lam A B^T + scale z^T o~`` (``o_t`` [B, m], ``z_t`` [B, n_l])."""
        a, b = factors
        q, r = torch.linalg.qr(torch.cat([b, o_t.t().to(b.dtype)], 1))  # [m, q], [q, k + B]
        k = a.shape[1]  # G = lam A R[:, :k]^T + scale z^T R[:, k:]^T, without concatenating [n_l, k + B]
        g = torch.mm(a, r[:, :k].t()).mul_(lam).addmm_(z_t.t().to(a.dtype), r[:, k:].t(), alpha=scale)
        if q.shape[1] <= self.rank:
            return g, q
        s2, w = torch.linalg.eigh((g.t() @ g).double())  # ascending eigenvalues
        w = w[:, -self.rank:].flip(1).to(g.dtype)
        return g @ w, q @ w

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        batch = global_batch(o.shape[1], o.device)
        lam, scale = self.config.momentum, self.scale(call, batch)
        per_layer = []
        gathered = [all_gather_rows(o_t) for o_t in o]  # multi-process: every rank truncates the global batch
        for name, z_l in zip(call.layers, call.z):
            factors, history = self.matrices[name], []
            for t in range(len(gathered)):
                factors = self.truncate(factors, gathered[t], all_gather_rows(z_l[t]), lam, scale)
                history.append(factors)
            self.matrices[name] = factors
            per_layer.append(history)
        gains = [self.gain.after(name, history, self.energy, o, z_l, batch, call.alpha)
                 for name, z_l, history in zip(call.layers, call.z, per_layer)]
        return per_layer, gains

    @staticmethod
    def energy(factors: Factors) -> torch.Tensor:
        """``|A B^T|_F^2 = |A|_F^2`` (``B`` has orthonormal columns)."""
        return torch.linalg.vector_norm(factors[0], dtype=torch.float32).square()

    def signal(self, call, e):
        out = []
        for hist, gains in zip(*call.ctx):
            e_f = e.to(hist[0][0].dtype)  # the factors' dtype (float32 for half models)
            if len(hist) == 1:
                a, b = hist[0]
                g = (e_f @ b) @ a.t()
            else:
                g = torch.stack([(e_f[t] @ b) @ a.t() for t, (a, b) in enumerate(hist)])
            out.append(self.gain.apply(g, gains).to(e.dtype))
        return out
