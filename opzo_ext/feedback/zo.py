"""``method="zo"``: single-point zeroth-order node perturbation (ZO_sp, eq. 3 of the paper).

Each hidden layer receives, for every sample ``b`` and time step ``t``, its own loss times its own
noise::

    g_l[t, b] = w * L[t, b] / alpha * z_l[t, b]

with ``L[t, b]`` the loss of sample ``b`` the user hands to :meth:`Session.loss
<opzo_ext.Session.loss>` (``F.cross_entropy(out, y, reduction="none")``) and ``w = dR/dL[t, b]``
its weight in what is backpropagated: ``1 / numel`` for the mean ``session.loss`` returns, times
whatever scales it afterwards (``/ T``, a sum with other terms), read in backward
(:class:`LossTap`). A per-sample loss ``[B]`` handed once for several steps (one loss over a
sequence) multiplies the noise of each of those steps. The batch loss for every sample would also
be unbiased, but each sample's signal would carry the losses of all the others: about ``B`` times
larger in size, ``B^2`` in variance (``benchmarks/zo_variance.py``: 15,000x at ``B = 128``).
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch

from ..errors import OpzoError
from .base import Feedback


class ZOStep:
    """One readout call's noise ``[T, B, n_l]`` per layer and, once handed over, the weighted
    per-sample losses ``[T, B]``."""

    __slots__ = ("z", "steps", "batch", "losses", "grad", "__weakref__")

    def __init__(self, z: tuple, steps: int, batch: int):
        self.z, self.steps, self.batch = z, steps, batch
        self.losses: Optional[torch.Tensor] = None  # [T, B], times the reduction's weight
        self.grad: Optional[torch.Tensor] = None  # d(backpropagated)/d(reduced loss), set in backward


class LossTap(torch.autograd.Function):
    """``weight * sum(losses)`` forward; in backward, hands the gradient arriving at it (the scale
    applied after :meth:`Session.loss <opzo_ext.Session.loss>`) to the ZO calls of these losses."""

    @staticmethod
    def forward(ctx, losses, records, weight):
        ctx.records, ctx.weight, ctx.shape = records, weight, losses.shape
        return losses.sum() * weight

    @staticmethod
    def backward(ctx, grad):
        for record in ctx.records:
            record.grad = grad.detach()
        return grad.mul(ctx.weight).expand(ctx.shape), None, None


class ZO(Feedback):
    name = "zo"

    def __init__(self, config, generator_for):
        super().__init__(config, generator_for)
        self._waiting: list = []  # weak references to the calls still without their losses, in order

    def injects_noise(self) -> bool:
        return True

    def step(self, call, o, in_place=False):
        record = ZOStep(call.z, call.steps, call.batch)
        self._waiting.append(weakref.ref(record))
        return record

    def record_loss(self, losses: torch.Tensor, weight: float) -> list:
        """Hand the per-sample ``losses`` to the calls since the last hand-over, each weighted by
        ``weight`` in the loss that will be backpropagated: one loss per sample and step of those
        calls, in time order (``[T, B]`` or ``[T*B]``), or one per sample ``[B]`` for all of them."""
        records = [r for r in (ref() for ref in self._waiting) if r is not None]
        self._waiting = []
        if not records:
            raise OpzoError(
                "session.loss got losses, but no training step since the last call is waiting for them. Call "
                "it once per step after that step's forward, or once for all the steps of a sequence with "
                "their losses [T, B] (or each sample's total [B]).")
        batches = {r.batch for r in records}
        steps = sum(r.steps for r in records)
        flat = losses.reshape(-1) * weight
        if len(batches) == 1 and flat.numel() == records[0].batch:
            for r in records:
                r.losses = flat.reshape(1, r.batch).expand(r.steps, r.batch)
        elif flat.numel() == sum(r.steps * r.batch for r in records):
            for r, part in zip(records, flat.split([r.steps * r.batch for r in records])):
                r.losses = part.reshape(r.steps, r.batch)
        else:
            raise OpzoError(
                f"session.loss got {flat.numel()} losses (shape {tuple(losses.shape)}) for {steps} time step(s) "
                f"of {sorted(batches)} samples: pass one loss per sample and step ([{steps}, {max(batches)}]), or "
                f"one per sample ([{max(batches)}]), e.g. F.cross_entropy(out, y, reduction='none').")
        return records

    def signal(self, call, e):
        record = call.ctx
        if record.losses is None:
            raise OpzoError(
                "method='zo' multiplies each sample's noise by that sample's own loss, so it needs the "
                "per-sample losses: compute the loss without reduction and pass it through the session, "
                "loss = session.loss(F.cross_entropy(out, y, reduction='none')), then loss.backward().")
        if record.grad is None:
            raise OpzoError(
                "method='zo': the loss returned by session.loss(...) is not part of what was backpropagated; "
                "call backward() on it (or on a sum that contains it).")
        scale = (record.losses * record.grad / call.alpha).unsqueeze(-1)  # [T, B, 1]
        return [z_l * scale.to(z_l.dtype) for z_l in record.z]
