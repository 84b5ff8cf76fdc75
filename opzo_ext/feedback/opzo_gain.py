"""How much of OPZO's momentum feedback to use: the factor applied to ``e @ M_l^T``, per layer and step.

``M`` averages ``D_k = z^T o~ / (B alpha)`` over updates with weights ``(1 - lam) lam^(k - i)``;
started at zero, after ``k`` updates those weights sum to ``1 - lam^k``. ``feedback_scale``:

* ``"paper"``: factor 1 (M as the paper trains with it: ``alpha (1 - lam^k)`` of the Jacobian);
* ``"corrected"``: ``1 / (1 - lam^k)``, the bias correction of Adam's moments, so that
  ``M_hat = M / (1 - lam^k)`` estimates the Jacobian itself;
* ``"jacobian"`` (default): the bias correction times a reliability ``rho``, the shrinkage that
  minimises the expected squared error of ``rho M_hat`` (James-Stein / Wiener)::

      rho = max(0, 1 - nu / |M_hat|^2),      nu = sum_i w_i^2 E|D_i - E D_i|^2

  ``nu`` is the noise energy of ``M_hat``: the single-update noise ``E|D_i - E D_i|^2 ~
  sum_b |z_b|^2 |o~_b|^2 / (B alpha)^2`` (the term ``z o^T`` of the unperturbed output, whose mean
  is zero, dominates it) averaged with the squared weights. ``nu / |M_hat|^2 = U / |M|^2`` with
  ``U <- lam^2 U + (1 - lam)^2 sum_b |z_b|^2 |o~_b|^2 / (B alpha)^2``: one scalar per layer, no
  host synchronisation. An antithetic pair (``z``, then ``-z``) adds ``z^T (lam o~' - o~)``, whose
  noise is far smaller when the two steps' outputs are alike (and larger when they alternate):
  :meth:`FeedbackGain.noise_step` counts the pair as such. Early, when ``M`` is mostly noise (few
  updates, many neurons), ``rho`` is near 0 and the hidden layers wait; once the average has seen
  enough updates ``rho -> 1``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ..distributed import all_reduce_sum, world

Gains = Optional[Union[list, torch.Tensor]]  # per step of a call: floats ("corrected"), a tensor ("jacobian")


class FeedbackGain:
    """Update counts and noise energies of OPZO's matrices (keyed like ``OPZO.matrices``)."""

    def __init__(self, config):
        self.config = config
        self.updates: dict[str, int] = {}  # key -> number of momentum updates so far
        self.noise: dict[str, torch.Tensor] = {}  # key -> U, the weighted noise energy of M
        self.reliability: dict[str, torch.Tensor] = {}  # key -> rho of the latest update ("jacobian")
        # key -> (U before the last update, its o~ [B_r, m], per-sample sums of its z [B_r]): antithetic pairs
        self.previous: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def after(self, key: str, history: list[torch.Tensor], energy, o: torch.Tensor, z: torch.Tensor,
              batch: int, alpha: float) -> Gains:
        """The factors of the call's ``len(history)`` steps, after ``key``'s M took the values
        ``history`` (``energy(M)``: its squared Frobenius norm) from ``o~`` ``[T, B_r, m]`` and the
        noise per row ``z`` ``[T, B_r, rows]``; ``batch``: the global batch."""
        steps, lam, mode = len(history), self.config.momentum, self.config.feedback_scale
        k = self.updates.get(key, 0)
        self.updates[key] = k + steps
        if mode == "paper":
            return None
        corrections = [1.0 / (1.0 - lam ** (k + i)) for i in range(1, steps + 1)]
        if mode == "corrected":
            return corrections
        scale = (batch * (alpha if self.config.divides_by_alpha else 1.0)) ** 2
        u = self.noise.get(key)
        u = o.new_zeros((), dtype=torch.float32) if u is None else u.to(o.device)
        rho = []
        for t in range(steps):
            u = self.noise_step(key, u, o[t].float(), z[t].float(), lam, scale)
            rho.append((1.0 - u / energy(history[t]).clamp_min(torch.finfo(torch.float32).tiny)).clamp_min(0.0))
        self.noise[key] = u
        self.reliability[key] = rho[-1]
        return torch.stack(rho) * torch.tensor(corrections, dtype=torch.float32, device=o.device)

    def noise_step(self, key: str, u: torch.Tensor, o: torch.Tensor, z: torch.Tensor, lam: float,
                   scale: float) -> torch.Tensor:
        """``U`` after one update from ``o~`` ``[B_r, m]`` and ``z`` ``[B_r, rows]``.

        Alone, the update adds ``(1 - lam)^2 sum_b |z_b|^2 |o~_b|^2 / scale``. When it completes an
        antithetic pair (``z = -z'`` of the step before, with output ``o~'``), the pair's noise is that
        of ``z^T (lam o~' - o~)``, far smaller when the outputs of the two steps are alike, so ``U``
        is recomputed from before the pair: ``lam^4 U'' + (1 - lam)^2 sum_b |z_b|^2 |lam o~'_b -
        o~_b|^2 / scale``. A pair is recognised by its per-sample sums ``sum_j z_bj = -sum_j z'_bj``
        (exact for a negated tensor), without a host synchronisation."""
        z_sq, mark = z.square().sum(-1), z.sum(-1)
        prev = self.previous.get(key) if self.config.antithetic else None
        if prev is not None and prev[1].shape != o.shape:  # another batch: a new sequence
            prev = None
        single = (z_sq * o.square().sum(-1)).sum()
        pair = (z_sq * (lam * prev[1] - o).square().sum(-1)).sum() if prev is not None else torch.zeros_like(single)
        single, pair = _sum_ranks(torch.stack([single, pair]))  # the same collective on every rank
        new = u * lam ** 2 + (1.0 - lam) ** 2 * single / scale
        if prev is not None:
            u_before, _, mark_prev = prev
            paired = (mark + mark_prev).eq(0).all()
            new = torch.where(paired, u_before * lam ** 4 + (1.0 - lam) ** 2 * pair / scale, new)
        if self.config.antithetic:
            self.previous[key] = (u, o.clone(), mark)
        return new

    @staticmethod
    def apply(g: torch.Tensor, gains: Gains) -> torch.Tensor:
        """``g`` ``[T, B, n]`` times each step's factor (in place)."""
        if gains is None:
            return g
        if isinstance(gains, list):
            if len(gains) == 1:
                return g.mul_(gains[0])
            gains = torch.tensor(gains, device=g.device)
        return g.mul_(gains.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))

    def state_dict(self) -> dict:
        return {"updates": dict(self.updates), "noise": {k: v.clone() for k, v in self.noise.items()},
                "noise_previous": {k: tuple(t.clone() for t in v) for k, v in self.previous.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = dict(state.get("updates", {}))
        self.noise = {k: v.clone() for k, v in state.get("noise", {}).items()}
        self.previous = {k: tuple(t.clone() for t in v) for k, v in state.get("noise_previous", {}).items()}


def _sum_ranks(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes of a multi-process run (the global batch's power)."""
    return all_reduce_sum(x.clone()) if world()[1] > 1 else x
