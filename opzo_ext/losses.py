"""The instantaneous loss of online training (OTTT, used by the OPZO paper) and prediction by the
output accumulated over time steps.

Per time step ``t`` the network gives ``o[t]`` ``[B, C]`` and the loss is (Xiao et al., 2022)::

    L[t] = ((1 - l) * CE(o[t], y) + l * MSE(o[t], onehot(y))) / T

with ``CE`` the mean cross-entropy over the batch and ``MSE`` the mean squared error over all
``B * C`` entries; ``l`` is the MSE weight (0.05 on CIFAR, 0.001 on DVS data, 0 on ImageNet).
Its gradient with respect to the output is::

    dL/do[t] = ((1 - l) * (softmax(o[t]) - onehot(y)) / B + l * 2 (o[t] - onehot(y)) / (B * C)) / T

The class is predicted from the accumulated output ``u[T] = sum_t o[t]`` (appendix C.3.2 of the
OPZO paper): ``argmax_c u[T]_c``.

    acc = Accumulator()
    for t in range(T):
        out = net(x)
        instantaneous_loss(out, y, mse_weight=0.05, steps=T).backward()
        acc.add(out)
    correct = (acc.predict() == y).sum()
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["instantaneous_loss", "Accumulator", "predict"]


def instantaneous_loss(output: torch.Tensor, target: torch.Tensor, mse_weight: float = 0.05,
                       steps: int = 1, reduction: str = "mean") -> torch.Tensor:
    """``((1 - l) * CE(o, y) + l * MSE(o, onehot(y))) / steps`` for one time step.

    Args:
        output: ``o[t]``, ``[B, C]`` logits of one time step.
        target: class indices ``[B]`` (int64).
        mse_weight: ``l`` in [0, 1]; 0 gives plain cross-entropy (no one-hot is built).
        steps: ``T``; the loss is divided by it so that the gradients summed over the ``T``
            steps of a sample are those of the mean loss over time (OTTT's convention).
        reduction: ``"mean"`` over the batch (a scalar), or ``"none"``: each sample's loss ``[B]``
            (its MSE the mean over the ``C`` classes), whose mean is the ``"mean"`` loss; hand it to
            :meth:`Session.loss <opzo_ext.Session.loss>` (``method="zo"`` needs each sample's loss).
    """
    if not 0.0 <= mse_weight <= 1.0:
        raise ValueError(f"mse_weight must lie in [0, 1], got {mse_weight}")
    if steps < 1:
        raise ValueError(f"steps must be a positive number of time steps, got {steps}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    loss = F.cross_entropy(output, target, reduction=reduction)
    if mse_weight > 0.0:
        onehot = F.one_hot(target, output.shape[-1]).to(output.dtype)
        mse = F.mse_loss(output, onehot) if reduction == "mean" else F.mse_loss(output, onehot, reduction="none").mean(-1)
        loss = (1.0 - mse_weight) * loss + mse_weight * mse
    return loss / steps


class Accumulator:
    """Accumulates the outputs of the time steps of one sample batch: ``u = sum_t o[t]``.

    ``add(o)`` adds one step's output (detached), ``predict()`` returns ``argmax`` of the sum,
    ``reset()`` starts a new batch. ``value`` is the sum (None before the first ``add``),
    ``steps`` the number of outputs added.
    """

    def __init__(self) -> None:
        self.value: Optional[torch.Tensor] = None
        self.steps = 0

    def add(self, output: torch.Tensor) -> "Accumulator":
        out = output.detach()
        self.value = out.clone() if self.value is None else self.value + out
        self.steps += 1
        return self

    def predict(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("Accumulator.predict() before any output was added")
        return self.value.argmax(dim=-1)

    def reset(self) -> None:
        self.value, self.steps = None, 0


def predict(outputs: Union[torch.Tensor, Iterable[torch.Tensor]]) -> torch.Tensor:
    """Class prediction ``argmax_c sum_t o[t]_c`` from a ``[T, B, C]`` tensor (multi-step output)
    or an iterable of ``[B, C]`` per-step outputs."""
    if isinstance(outputs, torch.Tensor):
        if outputs.dim() < 2:
            raise ValueError(f"expected [T, B, C] outputs, got shape {tuple(outputs.shape)}")
        return outputs.detach().sum(0).argmax(dim=-1)
    acc = Accumulator()
    for o in outputs:
        acc.add(o)
    return acc.predict()
