"""Presynaptic traces and the synapse rules that make weight gradients use them (OTTT).

For a synapse ``y = W s + b`` fed by spikes ``s[t]``, online training through time uses the trace
``a_hat[t] = lam * a_hat[t-1] + s[t]`` in place of ``s[t]`` for the weight gradient::

    dL/dW = sum_t delta[t] a_hat[t]^T,      delta[t] = dL/dy[t]

while the forward value still uses ``s[t]``. :class:`TracedLinear` and :class:`TracedConv` do this
in one forward and one backward (no second run of the layer). A synapse *rule* tells, per module
type, how to get its effective weight, bias and op; modules whose ``forward`` we do not know fall
back to :func:`replace_for_grad` (the layer runs twice, as in OTTT's reference code).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

SYNAPSE_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def is_synapse(module: nn.Module) -> bool:
    """Synapses are the layers whose weight gradient uses a presynaptic trace: Linear and ConvNd
    (and subclasses such as SpikingJelly's ``layer.Linear``/``layer.Conv2d``/``layer.WSConv2d``)."""
    return isinstance(module, SYNAPSE_TYPES)


class TraceState:
    """The trace ``a_hat`` of one synapse's input, carried across calls of that synapse.

    ``update(x, steps, fresh)`` takes the input of one call (``steps`` time steps, time-major:
    ``[T, B, ...]`` or ``[T*B, ...]``; ``steps=1`` for a single-step call) and returns ``a_hat`` of
    the same shape; ``fresh=True`` starts a new sequence (``a_hat[-1] = 0``).
    """

    def __init__(self, lam: float):
        self.lam = lam
        self.value: Optional[torch.Tensor] = None

    @torch.no_grad()
    def update(self, x: torch.Tensor, steps: int, fresh: bool) -> torch.Tensor:
        seq = x.detach().reshape(steps, -1)  # the trace is elementwise: only time matters
        prev = self.value
        if fresh or prev is None or prev.shape != seq.shape[1:] or prev.dtype != seq.dtype:
            prev = None
        out = torch.empty_like(seq) if steps > 1 else None
        for t in range(steps):
            prev = seq[t].clone() if prev is None else torch.add(seq[t], prev, alpha=self.lam)
            if out is not None:
                out[t] = prev
        self.value = prev
        return (prev if out is None else out).view(x.shape)


class TracedLinear(torch.autograd.Function):
    """``y = x W^T + b`` forward; backward ``dW = g^T a_hat``, ``db = sum g``, ``dx = g W``."""

    @staticmethod
    def forward(ctx, x, a_hat, weight, bias):
        ctx.save_for_backward(a_hat, weight if x.requires_grad else None)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        a_hat, weight = ctx.saved_tensors
        need_x, _, need_w, need_b = ctx.needs_input_grad
        gx = grad @ weight if need_x else None
        g2 = grad.reshape(-1, grad.shape[-1])
        gw = g2.t() @ a_hat.reshape(-1, a_hat.shape[-1]) if need_w else None
        gb = g2.sum(0) if (need_b and ctx.has_bias) else None
        return gx, None, gw, gb


class TracedConv(torch.autograd.Function):
    """N-d convolution forward on ``x``; the weight gradient is taken on ``a_hat`` (same shape)."""

    @staticmethod
    def forward(ctx, x, a_hat, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(a_hat, weight if x.requires_grad else None)
        ctx.conf = (stride, padding, dilation, groups, bias is not None, weight.shape)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), groups)

    @staticmethod
    def backward(ctx, grad):
        a_hat, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias, shape = ctx.conf
        need_x, _, need_w, need_b = ctx.needs_input_grad[:4]
        need_b = need_b and has_bias
        if weight is None:  # only its shape matters when the input needs no gradient
            weight = grad.new_empty((1,) * len(shape)).expand(shape)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, a_hat, weight, [shape[0]] if has_bias else None,
            stride, padding, dilation, False, [0] * len(stride), groups, [need_x, need_w, need_b],
        )
        return gx, None, gw, gb, None, None, None, None


class _ReplaceForGrad(torch.autograd.Function):
    """Forward returns ``value``; backward sends the gradient to ``for_grad`` (and ``value``)."""

    @staticmethod
    def forward(ctx, for_grad, value):
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


def replace_for_grad(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     a_hat: torch.Tensor) -> torch.Tensor:
    """Generic rule for any synapse: value ``forward(x)``, gradients through ``forward(a_hat)``;
    the input still receives ``dL/dx`` when it requires grad (OTTT's replace trick)."""
    with torch.no_grad():
        value = forward(x)
    a_in = _ReplaceForGrad.apply(x, a_hat) if x.requires_grad else a_hat
    return _ReplaceForGrad.apply(forward(a_in), value)


@dataclass
class SynapseRule:
    """How to run one synapse type with a trace: ``weight(m)`` gives the effective weight."""

    weight: Callable[[nn.Module], torch.Tensor]
    conv: bool


RULES: dict[type, SynapseRule] = {}


def register_rule(cls: type, weight: Callable[[nn.Module], torch.Tensor] = lambda m: m.weight) -> None:
    """Register the fused trace rule for ``cls``, whose forward must be ``op(x, weight(m), m.bias)``
    with the module's stride/padding/dilation/groups for convolutions."""
    RULES[cls] = SynapseRule(weight, issubclass(cls, nn.modules.conv._ConvNd))


for _cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_rule(_cls)

try:  # SpikingJelly's stateless wrappers: same math, plus a step mode (handled by the caller)
    from spikingjelly.activation_based import layer as _sj_layer

    for _name in ("Linear", "Conv1d", "Conv2d", "Conv3d"):
        if hasattr(_sj_layer, _name):
            register_rule(getattr(_sj_layer, _name))
    if hasattr(_sj_layer, "WSConv2d"):
        register_rule(_sj_layer.WSConv2d, weight=lambda m: m.get_weight())
except ImportError:  # pragma: no cover - spikingjelly is a dependency
    pass


def fused_rule(module: nn.Module) -> Optional[SynapseRule]:
    """The registered rule for ``type(module)``, if its op can run fused (zero padding, numeric
    padding); None means: use :func:`replace_for_grad`."""
    rule = RULES.get(type(module))
    if rule is None:
        return None
    if rule.conv and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return None
    return rule


def traced_call(module: nn.Module, rule: Optional[SynapseRule], x: torch.Tensor, a_hat: torch.Tensor,
                original: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``module`` on ``x`` with its weight gradient taken on ``a_hat``.

    ``x`` and ``a_hat`` have the module's input layout; SpikingJelly multi-step convolutions
    (``[T, B, C, ...]``) are flattened to ``[T*B, C, ...]`` and reshaped back.
    """
    if rule is None:
        return replace_for_grad(original, x, a_hat)
    weight = rule.weight(module)
    if not rule.conv:
        return TracedLinear.apply(x, a_hat, weight, module.bias)
    seq = x.dim() == weight.dim() + 1  # SpikingJelly 'm' mode: an extra leading time axis
    xs, hs = (x.flatten(0, 1), a_hat.flatten(0, 1)) if seq else (x, a_hat)
    out = TracedConv.apply(xs, hs, weight, module.bias, list(module.stride), list(module.padding),
                           list(module.dilation), module.groups)
    return out.reshape(*x.shape[:2], *out.shape[1:]) if seq else out

