"""How a feedback matrix is stored (``feedback_matrix=``), apart from how a method forms it.

A method (:mod:`~opzo_ext.feedback.opzo`, ``dfa``, ``dkp``) keeps one state per hidden layer in its
storage, which allocates and checks it, forms the feedback ``e @ M^T`` from it and applies OPZO's
momentum recursion (eq. 6, :func:`momentum`) to it:

* :class:`Dense`: ``[n_l, m]`` in the model's dtype; with ``groups`` one row per channel ``[C, m]``
  shared by the channel's positions (``feedback_matrix="channel"``);
* :class:`Bf16`: dense in bfloat16, every update rounded stochastically;
* :class:`LowRank`: factors ``(A, B)`` with ``M = A B^T`` of rank ``feedback_rank``.

With several processes every rank must hold the same M: :meth:`Dense.momentum_steps` sums the
product ``o~^T z`` over ranks, or all-gathers its factors (:meth:`Dense.exchange`), around eq. 6.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..distributed import all_gather_rows, all_reduce_sum, world
from ..errors import OpzoError
from .tap import matrix_signal

BLOCK = 1 << 24  # float32 entries per bf16 update block (64 MB)
Factors = tuple[torch.Tensor, torch.Tensor]  # (A [n_l, k], B [m, k]); M = A @ B.T


def norm(x: torch.Tensor, ord: float = 2) -> torch.Tensor:
    """``|x|_ord`` as float32, accumulated in float32 (bfloat16, float32) or float64 (float64)."""
    return torch.linalg.vector_norm(x, ord, dtype=torch.promote_types(x.dtype, torch.float32)).float()


def momentum(mt: torch.Tensor, o_t: torch.Tensor, z_t: torch.Tensor, lam: float, scale: float,
             in_place: bool = False) -> torch.Tensor:
    """Eq. 6 for one step on ``M^T`` ``[m, rows]``: ``lam M^T + scale o~^T z`` (``o_t`` ``[B, m]``,
    ``z_t`` ``[B, rows]``); a new tensor unless ``in_place``."""
    if in_place:
        return mt.addmm_(o_t.t(), z_t, beta=lam, alpha=scale)
    return torch.addmm(mt, o_t.t(), z_t, beta=lam, alpha=scale)


class Dense:
    """One float row per neuron (or per channel with ``groups``: name -> ``(C, P)``)."""

    name = "dense"

    def __init__(self, groups: Optional[dict[str, tuple[int, int]]] = None, master_float32: bool = False):
        self.groups = dict(groups or {})
        self.master_float32 = master_float32  # keep half-precision models' matrices in float32

    # ------------------------------------------------------------ allocation
    def dtype(self, like: torch.Tensor) -> torch.dtype:
        if self.master_float32 and like.dtype in (torch.float16, torch.bfloat16):
            return torch.float32
        return like.dtype

    def entry_size(self, like: torch.Tensor) -> int:
        return self.dtype(like).itemsize

    def matrix_bytes(self, shape: tuple[int, int], like: torch.Tensor) -> int:
        return shape[0] * shape[1] * self.entry_size(like)

    def zeros(self, shape: tuple[int, int], like: torch.Tensor) -> Any:
        """M = 0, stored as ``M^T`` ``[m, n_l]`` (both products of eq. 6 and the feedback run row-major)."""
        return like.new_zeros(shape[::-1], dtype=self.dtype(like)).t()

    def check(self, name: str, m: Any, shape: tuple[int, int], like: torch.Tensor) -> Any:
        """``m`` on ``like``'s device and in the storage dtype, after checking its shape ``[n_l, m]``."""
        if tuple(m.shape) != tuple(shape):
            raise OpzoError(
                f"The feedback matrix of layer '{name}' has shape {tuple(m.shape)} but the layer needs "
                f"{tuple(shape)} ([neurons, outputs]): the loaded session state was made for another "
                "model or input size.")
        dtype = self.dtype(like)
        return m if m.device == like.device and m.dtype == dtype else m.to(like.device, dtype)

    @staticmethod
    def energy(m: Any) -> torch.Tensor:
        """``|M|_F^2`` in float32 (accumulated in float32, or float64 for a float64 M), on its device."""
        return norm(m.detach()).square()

    @staticmethod
    def dense(m: Any) -> torch.Tensor:
        """The matrix ``[n_l, m]`` itself."""
        return m

    # ------------------------------------------------------------ rows shared per channel
    def rows(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``[..., n_l]`` per neuron -> ``[..., C]`` per row (mean over the positions sharing it)."""
        group = self.groups.get(name)
        return x if group is None else x.reshape(*x.shape[:-1], *group).mean(-1)

    def spread(self, name: str, g: torch.Tensor) -> torch.Tensor:
        """``[..., C]`` per row -> ``[..., n_l]`` per neuron (each position gets its row's value)."""
        group = self.groups.get(name)
        return g if group is None else g.unsqueeze(-1).expand(*g.shape, group[1]).reshape(*g.shape[:-1], -1)

    # ------------------------------------------------------------ eq. 6 and the feedback
    @staticmethod
    def exchange(o: torch.Tensor, t: int, z_t: torch.Tensor, batch: int,
                 gathered: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The factors of step ``t``'s product ``o~^T z`` (``o[t]`` ``[B_r, m]``, ``z_t``
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

    def update(self, mt, o_t, z_t, lam: float, scale: float, in_place: bool, reduce: bool = False):
        """:func:`momentum` on ``M^T``, the product summed over ranks first when ``reduce``."""
        if reduce:
            term = all_reduce_sum(o_t.t() @ z_t)
            return mt.mul_(lam).add_(term, alpha=scale) if in_place else torch.add(mt * lam, term, alpha=scale)
        return momentum(mt, o_t, z_t, lam, scale, in_place)

    def momentum_steps(self, m, o: torch.Tensor, z_rows: torch.Tensor, lam: float, scale: float,
                       in_place: bool, batch: int, gathered: dict) -> list:
        """The states after each step of eq. 6 with ``o~`` ``[T, B_r, m]`` and ``z`` ``[T, B_r, rows]``."""
        mt, history = m.t(), []
        for t in range(o.shape[0]):
            o_t, z_t, reduce = self.exchange(o, t, z_rows[t], batch, gathered)
            mt = self.update(mt, o_t, z_t, lam, scale, in_place, reduce)
            history.append(mt.t())
        return history

    def signal(self, history: list, e: torch.Tensor) -> torch.Tensor:
        """``e[t] @ M[t]^T`` ``[T, B, rows]`` with each step's state."""
        return matrix_signal([history], e)[0]


def round_stochastic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 -> bfloat16, up or down at random so that ``E[result] = x`` (overwrites ``x``).

    Adding 16 random bits to the float32 bit pattern and cutting them off rounds the magnitude up
    with probability (cut-off part) / 2^16; the sign bit is untouched.
    """
    bits = x.view(torch.int32)
    bits.add_(torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator))
    return bits.bitwise_and_(-(1 << 16)).view(torch.float32).to(torch.bfloat16)


class Bf16(Dense):
    """Dense in bfloat16 (half of float32's bytes). With ``lam = 0.99999`` an update changes M by a
    relative ``1e-5``, far below bfloat16's resolution (``2^-8``): rounded to nearest, M would stop
    moving. So each update is computed in float32 and rounded *stochastically* (bits from the
    session's generator, alike on every rank), which keeps ``E[M]`` on the float32 recursion::

        M^T <- SR(lam M^T + scale * o~^T z)

    over blocks of rows of ``M^T`` (at most ``BLOCK`` float32 entries at a time). The feedback
    ``e @ M`` is a bfloat16 product (float32 accumulation inside), rounded to bfloat16."""

    name = "bf16"

    def __init__(self, generator_for: Callable[[torch.device], torch.Generator]):
        super().__init__()
        self.generator_for = generator_for

    def dtype(self, like):
        return torch.bfloat16

    def update(self, mt, o_t, z_t, lam, scale, in_place, reduce=False):
        out = mt if in_place else torch.empty_like(mt)
        rows = max(1, BLOCK // max(1, mt.shape[1]))
        generator = self.generator_for(mt.device)
        for i in range(0, mt.shape[0], rows):  # blocks of output rows, not a loop over neurons
            term = o_t[:, i:i + rows].t().float() @ z_t.float()
            if reduce:
                all_reduce_sum(term)
            block = term.mul_(scale).add_(mt[i:i + rows].float(), alpha=lam)
            out[i:i + rows] = round_stochastic(block, generator)
        return out

    def signal(self, history, e):
        eb = e.to(torch.bfloat16)
        g = eb @ history[0].t() if len(history) == 1 else torch.stack([eb[t] @ m.t() for t, m in enumerate(history)])
        return g.to(e.dtype)


class LowRank(Dense):
    """``M = A B^T``: ``A`` ``[n_l, k]`` and ``B`` ``[m, k]`` (``k <= r``, ``B`` with orthonormal
    columns) take ``(n_l + m) k`` entries instead of ``n_l m``. Each step applies eq. 6 to the
    factors and cuts the result back to rank ``r`` (a streaming truncated SVD)::

        M' = lam A B^T + s z^T o~ = [lam A, s z^T] [B, o~^T]^T        (rank <= k + B_t)
        [B, o~^T] = Q R  (QR, Q [m, q]),   G = [lam A, s z^T] R^T      so M' = G Q^T
        G^T G = W S^2 W^T (eigh, [q, q]):  A <- G W_r,  B <- Q W_r     (the top r directions)

    While ``q <= r`` (e.g. ``m <= r``) nothing is cut and the factors hold M exactly. The cost per
    step is ``O(n_l q^2)`` with ``q = min(m, k + B_t)``, below the dense update's ``O(n_l m B_t)``
    when ``(r + B_t)^2 < m B_t``; the feedback is ``g = (e @ B) @ A^T``. Updates are out of place.
    With several processes every rank truncates the same global batch (``o~`` and ``z`` all-gathered).
    Half-precision models keep the factors in float32 (PyTorch has no QR in float16 or bfloat16)."""

    name = "lowrank"

    def __init__(self, rank: int):
        super().__init__(master_float32=True)
        self.rank = rank

    def matrix_bytes(self, shape, like):
        n, m = shape
        return (n + m) * min(self.rank, n, m) * self.entry_size(like)

    def zeros(self, shape, like):
        n, m = shape
        dtype = self.dtype(like)
        return like.new_zeros(n, 0, dtype=dtype), like.new_zeros(m, 0, dtype=dtype)  # M = 0: rank 0

    def check(self, name, factors, shape, like):
        a, b = factors
        if (a.shape[0], b.shape[0]) != tuple(shape):
            raise OpzoError(
                f"The low-rank feedback factors of layer '{name}' are for a [{a.shape[0]}, {b.shape[0]}] matrix "
                f"but the layer needs {tuple(shape)} ([neurons, outputs]): the loaded session state was made "
                "for another model or input size.")
        dtype = self.dtype(like)
        return a.to(like.device, dtype), b.to(like.device, dtype)

    @staticmethod
    def energy(factors: Factors) -> torch.Tensor:
        """``|A B^T|_F^2 = |A|_F^2`` (``B`` has orthonormal columns)."""
        return norm(factors[0]).square()

    @staticmethod
    def dense(factors: Factors) -> torch.Tensor:
        a, b = factors
        return a @ b.t()

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

    def momentum_steps(self, factors, o, z_rows, lam, scale, in_place, batch, gathered):
        history = []
        for t in range(o.shape[0]):
            if t not in gathered:  # every rank truncates the global batch
                gathered[t] = all_gather_rows(o[t])
            factors = self.truncate(factors, gathered[t], all_gather_rows(z_rows[t]), lam, scale)
            history.append(factors)
        return history

    def signal(self, history, e):
        e_f = e.to(history[0][0].dtype)  # the factors' dtype (float32 for half models)
        if len(history) == 1:
            a, b = history[0]
            g = (e_f @ b) @ a.t()
        else:
            g = torch.stack([(e_f[t] @ b) @ a.t() for t, (a, b) in enumerate(history)])
        return g.to(e.dtype)


def storage_for(config, generator_for) -> Dense:
    """The storage ``config.feedback_matrix`` asks for (``"auto"`` and ``"channel"`` start dense;
    the session shares rows per channel once it knows the layers)."""
    if config.feedback_matrix == "bf16":
        return Bf16(generator_for)
    if config.feedback_matrix == "lowrank":
        return LowRank(config.feedback_rank)
    return Dense()
