"""Where feedback enters the hidden layers: the :class:`Tap` on the readout output.

At the readout, once per call, the session hands the method a :class:`TapCall` (the hidden layers
of this call, their noise and activity, the call's layout), the method's ``step`` does its
bookkeeping without autograd (OPZO updates M here) and returns a context, and the readout output
``o`` is wrapped in :class:`Tap` with the call *and* that context. Tap is the identity forward; in
backward it hands ``e = dL/do`` on to the readout unchanged and ``method.signal(call, e)`` (for
OPZO: ``M_l e``) to every hidden layer's spike tensor, from where autograd applies the neuron's own
surrogate derivative and reaches the synapse weights through their traces.

Shapes: ``o`` and ``e`` are ``[T, B, m]``; ``z_l`` and the signal of layer ``l`` are ``[T, B, n_l]``
(``T = 1`` for a single-step call).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass(frozen=True, eq=False)
class TapCall:
    """One readout call. Before the method's ``step``, ``z`` and ``activity`` hold the layers'
    noise and spike traces ``[T, B, n_l]`` (None where there is none) and ``ctx`` is None; the call
    the Tap keeps drops them (a method that needs them in ``signal`` returns them in its context)."""

    method: Any  # the Feedback that forms the signal
    layers: tuple  # hidden layers of this call (``(name, lag)`` pairs for lags)
    alpha: float
    steps: int
    batch: int
    z: tuple = ()
    activity: tuple = ()
    ctx: Any = None  # what method.step returned

    def as_steps(self, x: torch.Tensor) -> torch.Tensor:
        """View a per-call tensor (``[B, ...]``, ``[T, B, ...]`` or ``[T*B, ...]``) as ``[T, B, n]``."""
        return x.reshape(self.steps, self.batch, -1)


class LiveTaps:
    """The Taps whose graph has not been backpropagated yet. A method may update its state in place
    only when there are none: a graph kept for a later backward (a time loop inside ``forward``)
    must see the matrices of its own step."""

    def __init__(self):
        self._live: "weakref.WeakSet[TapToken]" = weakref.WeakSet()

    def all_done(self) -> bool:
        return not any(not token.done for token in self._live)

    def token(self) -> "TapToken":
        token = TapToken()
        self._live.add(token)
        return token


class TapToken:
    """Marks whether the backward of one Tap has run (``done``)."""

    __slots__ = ("done", "__weakref__")

    def __init__(self):
        self.done = False


def tap(o: torch.Tensor, call: TapCall, spikes: list[torch.Tensor], token: Optional[TapToken] = None) -> torch.Tensor:
    """``o`` wrapped so that ``loss.backward()`` sends ``call.method.signal(call, e)`` to ``spikes``
    (and marks ``token`` done)."""
    return Tap.apply(o, call, token if token is not None else TapToken(), *spikes)


class Tap(torch.autograd.Function):
    """Identity on the readout output ``o``; backward returns ``e`` to ``o`` and the method's
    feedback to each hidden spike tensor in ``spikes`` (reshaped to each tensor's shape)."""

    @staticmethod
    def forward(ctx, o, call, token, *spikes):
        ctx.call, ctx.token = call, token
        ctx.spike_shapes = [s.shape for s in spikes]
        return o

    @staticmethod
    def backward(ctx, e):
        call = ctx.call
        signals = call.method.signal(call, call.as_steps(e))
        ctx.token.done = True
        return (e, None, None, *(None if g is None else g.reshape(shape)  # None: no error (method 'none')
                                 for g, shape in zip(signals, ctx.spike_shapes)))


def matrix_signal(matrices_per_step: list[list[torch.Tensor]], e: torch.Tensor) -> list[torch.Tensor]:
    """``g_l[t] = e[t] @ F_l[t]^T`` for per-step feedback matrices ``F_l[t]`` of shape [n_l, m]."""
    out = []
    for mats in matrices_per_step:
        if len(mats) == 1:
            out.append(e @ mats[0].t())
        else:
            out.append(torch.stack([e[t] @ m.t() for t, m in enumerate(mats)]))
    return out
