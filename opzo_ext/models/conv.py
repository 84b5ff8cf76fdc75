"""The paper's convolutional networks (appendix C.3.2) with scaled weight standardisation.

* :func:`conv5`: ``128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC`` (DVS-CIFAR10, DVS-Gesture, CIFAR-10/100)
* :func:`small_conv`: ``16C3-AP2-32C3-AP2-FC``, not in the paper: for analysis runs on CPU
* :func:`conv9`: ``64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-FC`` (the deeper
  network; the same layout as OTTT's VGG "S", SpikingJelly's ``ottt_spiking_vggws``)

Every ``C3`` is, as in OTTT's weight-standardised VGG::

    WSConv2d(3x3, pad 1) -> LIF -> x 2.74 -> [Dropout] -> [AvgPool2d(2)]

``layer.WSConv2d(..., gain=True)`` is exactly OTTT's ``ScaledWSConv2d``: weight
``(W - mean) / sqrt(var * fan_in + 1e-4) * gain``, per output channel, unbiased variance, gain
``[C_out, 1, 1, 1]``; opzo_ext has a fused trace rule for it. The spikes are multiplied by
``ws_scale = 2.74`` before the next standardised layer (OTTT's ``Scale(2.74)``).

Readout ("FC"): by default, as in OTTT's VGG (``light_classifier``), the last feature map is
average-pooled to ``fc_hw x fc_hw = 1 x 1`` and read by ``Linear(512, num_classes)``, so the
readout does not depend on the input size. ``fc_hw=None`` flattens the whole last map instead:
``Linear(512 * (input_size // 8) ** 2, num_classes)`` (e.g. 4 x 4 for 32 x 32 inputs), computed
from ``input_size``. Weights are initialised as in OTTT: Kaiming-normal (fan-out) convolutions with
zero bias, readout ``N(0, 0.01)`` with zero bias.

Input sizes: 32 (CIFAR), 48 (DVS-CIFAR10, DVS-Gesture, ``in_channels=2``), 28 (MNIST,
``in_channels=1``), 34 (N-MNIST, ``in_channels=2``); pooling floors odd sizes.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

from spikingjelly.activation_based import functional, layer
from torch import nn

from .common import WS_SCALE, Scale, check_step_mode, lif

CFG5 = (128, "A", 256, "A", 512, "A", 512)
CFG9 = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512)

Size = Union[int, Sequence[int]]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def spiking_convnet(cfg: Sequence[Union[int, str]], in_channels: int = 3, num_classes: int = 10,
                    dropout: float = 0.0, input_size: Size = 32, fc_hw: Optional[int] = 1,
                    ws_scale: float = WS_SCALE, step_mode: str = "s", **neuron_kwargs: Any) -> nn.Sequential:
    """A plain ``nn.Sequential`` from a layout: ints are 3x3 conv widths, ``"A"`` an AvgPool2d(2).

    Module names: ``conv{i}, sn{i}, scale{i}, [drop{i}], [pool{i}]`` per conv layer, then
    ``[avgpool], flatten, fc``. See the module docstring for the arguments.
    """
    check_step_mode(step_mode)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    h, w = _hw(input_size)
    mods: "OrderedDict[str, nn.Module]" = OrderedDict()
    c_in, i = in_channels, 0
    for v in cfg:
        if v == "A":
            if i == 0:
                raise ValueError("a layout cannot start with a pooling layer")
            mods[f"pool{i}"] = layer.AvgPool2d(2, 2)
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"input_size {input_size} is too small for {cfg}")
            continue
        i += 1
        mods[f"conv{i}"] = layer.WSConv2d(c_in, int(v), 3, padding=1, gain=True)
        mods[f"sn{i}"] = lif(**neuron_kwargs)
        mods[f"scale{i}"] = Scale(ws_scale)
        if dropout > 0.0:
            mods[f"drop{i}"] = layer.Dropout(dropout)
        c_in = int(v)
    if fc_hw is None:
        features = c_in * h * w
    else:
        mods["avgpool"] = layer.AdaptiveAvgPool2d((fc_hw, fc_hw))
        features = c_in * fc_hw * fc_hw
    mods["flatten"] = layer.Flatten(1)
    mods["fc"] = layer.Linear(features, num_classes)
    net = nn.Sequential(mods)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    if step_mode != "s":
        functional.set_step_mode(net, step_mode)
    return net


def conv5(in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0, input_size: Size = 32,
          fc_hw: Optional[int] = 1, ws_scale: float = WS_SCALE, step_mode: str = "s",
          **neuron_kwargs: Any) -> nn.Sequential:
    """``128C3-AP2-256C3-AP2-512C3-AP2-512C3-FC`` (dropout 0.1 on DVS-CIFAR10 in the paper)."""
    return spiking_convnet(CFG5, in_channels, num_classes, dropout, input_size, fc_hw, ws_scale,
                           step_mode, **neuron_kwargs)


def small_conv(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0, input_size: Size = 28,
               fc_hw: Optional[int] = None, **neuron_kwargs: Any) -> nn.Sequential:
    """``16C3-AP2-32C3-AP2-FC``: a CPU-sized conv net for analysis runs on 28x28 grey images (not in
    the paper). ``fc_hw=None`` reads the flattened 32x7x7 map; ``fc_hw=1`` pools globally first."""
    return spiking_convnet((16, "A", 32, "A"), in_channels, num_classes, dropout, input_size, fc_hw,
                           **neuron_kwargs)


def conv9(in_channels: int = 3, num_classes: int = 10, dropout: float = 0.0, input_size: Size = 32,
          fc_hw: Optional[int] = 1, ws_scale: float = WS_SCALE, step_mode: str = "s",
          **neuron_kwargs: Any) -> nn.Sequential:
    """``64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-FC`` (OTTT's VGG "S")."""
    return spiking_convnet(CFG9, in_channels, num_classes, dropout, input_size, fc_hw, ws_scale,
                           step_mode, **neuron_kwargs)
