"""``method="opzo", feedback_matrix="bf16"``: M stored in bfloat16 (half of float32's bytes).

With ``lam = 0.99999`` an update changes M by a relative ``1e-5``, far below bfloat16's
resolution (``2^-8``): rounded to nearest, M would stop moving. So each update is computed in
float32 and rounded *stochastically* to bfloat16 (up with probability equal to the distance to
the lower neighbour), which keeps ``E[M]`` on the float32 recursion::

    M^T <- SR(lam M^T + scale * o~^T z)

The update runs over blocks of rows of ``M^T`` ``[m, n_l]`` (at most ``BLOCK`` float32 entries
at a time), so the float32 copy never holds the whole matrix. The rounding bits come from the
session's generator (seeded alike on every rank), so all ranks round identically.
The feedback ``e @ M`` is a bfloat16 matrix product (float32 accumulation inside the product,
the result rounded to bfloat16).
"""
from __future__ import annotations

import torch

from ..distributed import all_reduce_sum
from .opzo import OPZO

BLOCK = 1 << 24  # float32 entries per update block (64 MB)


def round_stochastic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float32 -> bfloat16, up or down at random so that ``E[result] = x`` (overwrites ``x``).

    Adding 16 random bits to the float32 bit pattern and cutting them off rounds the magnitude up
    with probability (cut-off part) / 2^16; the sign bit is untouched.
    """
    bits = x.view(torch.int32)
    bits.add_(torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator))
    return bits.bitwise_and_(-(1 << 16)).view(torch.float32).to(torch.bfloat16)


class OPZOBf16(OPZO):
    dtype = torch.bfloat16

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

    def signal(self, call, e):
        out = []
        for name, mats, gains in zip(call.layers, *call.ctx):
            eb = e.to(torch.bfloat16)
            g = eb @ mats[0].t() if len(mats) == 1 else torch.stack([eb[t] @ m.t() for t, m in enumerate(mats)])
            out.append(self.spread(name, self.gain.apply(g.to(e.dtype), gains)))
        return out
