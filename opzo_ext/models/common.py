"""Building blocks shared by the paper's networks: the paper's LIF neuron and a constant scale.

Every network in :mod:`opzo_ext.models` is made of stock SpikingJelly modules (``layer.*`` and
``neuron.LIFNode``) plus :class:`Scale`, a parameter-free multiplication; opzo_ext attaches to
them exactly as to a user's own model.
"""
from __future__ import annotations

from typing import Any

import torch
from spikingjelly.activation_based import neuron, surrogate
from torch import nn

#: Scale applied to spikes before a scaled weight-standardised layer (OTTT's ``ws_scale``).
WS_SCALE = 2.74


def lif(step_mode: str = "s", **overrides: Any) -> neuron.LIFNode:
    """The paper's LIF neuron (appendix C.3.2; OTTT's ``OnlineLIFNode`` without its own online
    training): ``V_th = 1``, leak ``lam = 1 - 1/tau = 0.5`` (``tau = 2``, ``decay_input=False``:
    ``u[t] = lam * u[t-1] + I[t]``), soft reset (``v_reset=None``) with the reset detached, and
    the sigmoid surrogate ``psi(u) = (1/a1) e^{(V_th-u)/a1} / (1 + e^{(V_th-u)/a1})^2`` with
    ``a1 = 0.25``, i.e. SpikingJelly's ``surrogate.Sigmoid(alpha=1/a1=4)``.

    ``overrides`` replace any of these ``LIFNode`` arguments."""
    kwargs: dict[str, Any] = dict(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None,
                                  detach_reset=True, surrogate_function=surrogate.Sigmoid(alpha=4.0))
    kwargs.update(overrides)
    return neuron.LIFNode(step_mode=step_mode, **kwargs)


class Scale(nn.Module):
    """``x * scale`` (parameter-free, works in single- and multi-step mode)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def check_step_mode(step_mode: str) -> str:
    if step_mode not in ("s", "m"):
        raise ValueError(f"step_mode must be 's' (one time step per call) or 'm' ([T, B, ...] per call), got {step_mode!r}")
    return step_mode
