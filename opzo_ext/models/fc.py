"""The paper's fully connected network for (N-)MNIST: 784-800-800-10 (appendix C.3.2).

``Flatten - Linear - LIF - Dropout - Linear - LIF - Dropout - Linear`` from stock SpikingJelly
modules; the last Linear is the readout ``o[t] = W s[t] + b`` (no output neuron), whose outputs are
summed over time for prediction (:func:`opzo_ext.losses.predict`).

Dropout is SpikingJelly's ``layer.Dropout``: the mask is drawn at the first step of a sequence and
kept for all its time steps until ``functional.reset_net`` (the usual SNN practice). It is not a
neuron for opzo_ext (it has no ``surrogate_function``), so the session treats it like any other
parameter-free op between a neuron and the next synapse.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from spikingjelly.activation_based import functional, layer
from torch import nn

from .common import check_step_mode, lif


def fc_2x800(in_features: int = 784, num_classes: int = 10, dropout: float = 0.2, hidden: int = 800,
             step_mode: str = "s", **neuron_kwargs: Any) -> nn.Sequential:
    """``in_features``-``hidden``-``hidden``-``num_classes`` spiking MLP.

    Args:
        in_features: 784 for MNIST, 2 * 34 * 34 = 2312 for N-MNIST (the input is flattened).
        dropout: rate of the two dropout layers (0.2 in the paper; 0 for ZO).
        step_mode: ``'s'``: one time step ``[B, ...]`` per call; ``'m'``: ``[T, B, ...]`` per call.
        neuron_kwargs: overrides of the LIF arguments (see :func:`opzo_ext.models.common.lif`).

    Module names: ``fc1, sn1, drop1, fc2, sn2, drop2, fc3`` (after ``flatten``).
    """
    check_step_mode(step_mode)
    net = nn.Sequential(OrderedDict([
        ("flatten", layer.Flatten(1)),
        ("fc1", layer.Linear(in_features, hidden)),
        ("sn1", lif(**neuron_kwargs)),
        ("drop1", layer.Dropout(dropout)),
        ("fc2", layer.Linear(hidden, hidden)),
        ("sn2", lif(**neuron_kwargs)),
        ("drop2", layer.Dropout(dropout)),
        ("fc3", layer.Linear(hidden, num_classes)),
    ]))
    if step_mode != "s":
        functional.set_step_mode(net, step_mode)
    return net
