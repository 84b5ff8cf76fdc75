"""Controls the benchmarks share that are not session options: OPZO's noise without its feedback."""
from __future__ import annotations

from unittest import mock

import torch

from opzo_ext.feedback import METHODS
from opzo_ext.feedback.opzo import OPZO


class NoiseOnly(OPZO):
    """OPZO's noise without its feedback: ``M_l`` stays zero, so no error from the output reaches
    the hidden layers, while ``alpha z`` is injected exactly as OPZO injects it. With local
    learning it tells what OPZO's feedback adds beyond its noise."""

    @torch.no_grad()
    def step(self, call, o, in_place=False):
        return [[torch.zeros_like(self.matrices[name])] for name in call.layers], [None] * len(call.layers)


def noise_only():
    """Within this context ``method="opzo"`` builds :class:`NoiseOnly`."""
    return mock.patch.dict(METHODS, {"opzo": NoiseOnly})
