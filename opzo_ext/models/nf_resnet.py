"""Normalizer-free spiking ResNets in the layout of OTTT's ``online_spiking_nfresnet18/34``.

Built from stock SpikingJelly modules (``layer.WSConv2d``, ``neuron.LIFNode``, pooling, Linear)
plus two plain ``nn.Module`` classes (:class:`NFBasicBlock`, :class:`NFResNet`) with ordinary
``forward`` methods, so that opzo_ext attaches to it as to any user model. Parameter names match
OTTT's checkpoints after :func:`opzo_ext.models.checkpoints.load_ottt_checkpoint` removes the
``.op.`` of its ``grad_with_rate`` wrappers.

Block (pre-activation; the residual stream ``x`` is analog)::

    a   = LIF_1(x / beta) * 2.74
    out = conv2(LIF_2(conv1(a)) * 2.74)
    y   = out * skipinit_gain * alpha + identity,   identity = x, or downsample(a) (1x1, stride s)

``conv*`` and ``downsample`` are scaled weight-standardised convolutions with bias and gain
(``layer.WSConv2d``, OTTT's ``ScaledWSConv2d``); ``skipinit_gain`` is a learnable scalar per block
initialised to 0 (so every block starts as the identity / its downsample), ``alpha = 0.2``.

``beta`` follows OTTT's recurrence of the expected variance of the residual stream: it starts at
``var = 1`` after the stem; each block uses ``beta = sqrt(var)``; after a block with a downsample
``var = 1 + alpha^2`` (the downsampled branch has unit variance), after any other block
``var += alpha^2``. So the variance is reset at the first block of layer2..4 (which downsample), not
at layer1 (64 -> 64 channels, stride 1: no downsample, beta continues from the stem).

Stem: ``WSConv2d(7x7, stride 2, pad 3)`` and ``AvgPool2d(3, stride 2, pad 1)``, no neuron (the
first block's LIF_1 is the first spiking layer). Head: ``AdaptiveAvgPool2d(1)`` of the analog
stream, ``Flatten``, ``fc``; ``fc.weight`` is zero-initialised (its bias keeps PyTorch's default
initialisation, as in OTTT). Convolutions: Kaiming-normal (fan-out), zero bias.

NF-ResNet-34 at 224 x 224: 32 spiking layers (2 per block), 2,935,296 spiking neurons, 21,797,688
parameters (1000 classes), 126 state-dict entries.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from spikingjelly.activation_based import functional, layer
from torch import nn

from .common import WS_SCALE, check_step_mode, lif


class NFBasicBlock(nn.Module):
    """Pre-activation normalizer-free basic block (see the module docstring)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 beta: float = 1.0, alpha: float = 0.2, ws_scale: float = WS_SCALE, **neuron_kwargs: Any):
        super().__init__()
        self.sn1 = lif(**neuron_kwargs)
        self.conv1 = layer.WSConv2d(inplanes, planes, 3, stride=stride, padding=1, bias=True, gain=True)
        self.sn2 = lif(**neuron_kwargs)
        self.conv2 = layer.WSConv2d(planes, planes, 3, stride=1, padding=1, bias=True, gain=True)
        self.downsample = downsample
        self.beta, self.alpha, self.ws_scale = float(beta), float(alpha), float(ws_scale)
        self.skipinit_gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.sn1(x / self.beta) * self.ws_scale
        identity = x if self.downsample is None else self.downsample(a)
        out = self.conv2(self.sn2(self.conv1(a)) * self.ws_scale)
        return out * self.skipinit_gain * self.alpha + identity

    def extra_repr(self) -> str:
        return f"beta={self.beta:.4f}, alpha={self.alpha}"


class NFResNet(nn.Module):
    """Normalizer-free spiking ResNet with basic blocks (``layers`` blocks per stage)."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 alpha: float = 0.2, dropout: float = 0.0, ws_scale: float = WS_SCALE, **neuron_kwargs: Any):
        super().__init__()
        self.alpha = float(alpha)
        self.inplanes = 64
        self.conv1 = layer.WSConv2d(in_channels, 64, 7, stride=2, padding=3, bias=True, gain=True)
        self.pool = layer.AvgPool2d(3, stride=2, padding=1)
        var = 1.0
        self.layer1, var = self._make_layer(64, layers[0], 1, var, ws_scale, neuron_kwargs)
        self.layer2, var = self._make_layer(128, layers[1], 2, var, ws_scale, neuron_kwargs)
        self.layer3, var = self._make_layer(256, layers[2], 2, var, ws_scale, neuron_kwargs)
        self.layer4, var = self._make_layer(512, layers[3], 2, var, ws_scale, neuron_kwargs)
        self.avgpool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten(1)
        self.dropout = layer.Dropout(dropout) if dropout > 0.0 else None
        self.fc = layer.Linear(512 * NFBasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.fc.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, var: float, ws_scale: float,
                    neuron_kwargs: dict) -> tuple[nn.Sequential, float]:
        downsample = None
        if stride != 1 or self.inplanes != planes * NFBasicBlock.expansion:
            downsample = layer.WSConv2d(self.inplanes, planes * NFBasicBlock.expansion, 1, stride=stride,
                                        bias=True, gain=True)
        mods = [NFBasicBlock(self.inplanes, planes, stride, downsample, var ** 0.5, self.alpha, ws_scale,
                             **neuron_kwargs)]
        var = 1.0 + self.alpha ** 2 if downsample is not None else var + self.alpha ** 2
        self.inplanes = planes * NFBasicBlock.expansion
        for _ in range(1, blocks):
            mods.append(NFBasicBlock(self.inplanes, planes, 1, None, var ** 0.5, self.alpha, ws_scale,
                                     **neuron_kwargs))
            var += self.alpha ** 2
        return nn.Sequential(*mods), var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.flatten(self.avgpool(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


def _build(layers: Sequence[int], num_classes: int, in_channels: int, alpha: float, dropout: float,
           step_mode: str, neuron_kwargs: dict) -> NFResNet:
    check_step_mode(step_mode)
    net = NFResNet(layers, num_classes, in_channels, alpha, dropout, **neuron_kwargs)
    if step_mode != "s":
        functional.set_step_mode(net, step_mode)
    return net


def nf_resnet18(num_classes: int = 1000, in_channels: int = 3, alpha: float = 0.2, dropout: float = 0.0,
                step_mode: str = "s", **neuron_kwargs: Any) -> NFResNet:
    """NF-ResNet-18 (blocks [2, 2, 2, 2]), OTTT's ``online_spiking_nfresnet18`` layout."""
    return _build((2, 2, 2, 2), num_classes, in_channels, alpha, dropout, step_mode, neuron_kwargs)


def nf_resnet34(num_classes: int = 1000, in_channels: int = 3, alpha: float = 0.2, dropout: float = 0.0,
                step_mode: str = "s", **neuron_kwargs: Any) -> NFResNet:
    """NF-ResNet-34 (blocks [3, 4, 6, 3]), OTTT's ``online_spiking_nfresnet34`` layout (the
    network the OPZO paper fine-tunes on ImageNet)."""
    return _build((3, 4, 6, 3), num_classes, in_channels, alpha, dropout, step_mode, neuron_kwargs)
