"""``method="zo"``: single-point zeroth-order node perturbation (ZO_sp, eq. 3 of the paper).

Each hidden layer receives ``g_l = (L / alpha) * z_l``, where ``L`` is the value of the loss the
user calls ``backward()`` on (captured by :class:`LossRecorder`) and ``z_l`` the noise it injected.
With one backward per batch (time loop inside ``forward``), ``L`` is that batch's summed loss.
"""
from __future__ import annotations

import threading

import torch

from ..errors import OpzoError
from .base import Feedback


class LossRecorder:
    """Records the value of the tensor passed to ``torch.autograd.backward`` (which
    ``Tensor.backward`` calls) while at least one ZO session is open."""

    _lock = threading.Lock()
    _users = 0
    _original = None
    value: torch.Tensor | None = None

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._original = torch.autograd.backward
                torch.autograd.backward = cls._backward
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                torch.autograd.backward = cls._original
                cls._original, cls.value = None, None

    @classmethod
    def _backward(cls, tensors, grad_tensors=None, *args, **kwargs):
        root = tensors[0] if isinstance(tensors, (tuple, list)) else tensors
        grad = grad_tensors[0] if isinstance(grad_tensors, (tuple, list)) else grad_tensors
        with torch.no_grad():
            cls.value = (root * grad).sum() if grad is not None else root.detach().sum()
        try:
            return cls._original(tensors, grad_tensors, *args, **kwargs)
        finally:
            cls.value = None


class ZO(Feedback):
    name = "zo"

    def injects_noise(self) -> bool:
        return True

    def open(self) -> None:
        LossRecorder.acquire()

    def close(self) -> None:
        LossRecorder.release()

    def step(self, call, o, in_place=False):
        return call.z

    def signal(self, call, e):
        loss = LossRecorder.value
        if loss is None:
            raise OpzoError(
                "method='zo' needs the loss value: call loss.backward() (or torch.autograd.backward) "
                "on the loss; torch.autograd.grad is not supported for ZO."
            )
        return [z_l * (loss / call.alpha) for z_l in call.ctx]
