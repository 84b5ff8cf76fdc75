"""Library adapters: what a spiking neuron is in each SNN library and how to handle its state.

An adapter answers, for one library, the few questions the session asks about a neuron module:
is it a neuron, can it be trained online, what is its leak ``lam``, which tensor carries its
state (to detach it every step and to notice a reset), which output is the spike, and whether it
runs a whole sequence per call. Adding a library means adding one :class:`NeuronAdapter` subclass
and listing it in :data:`ADAPTERS`.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..errors import UnsupportedModelError
from .base import NeuronAdapter


def find_adapter(module: nn.Module) -> Optional[NeuronAdapter]:
    """The adapter that recognises ``module`` as a spiking neuron, or None."""
    for adapter in ADAPTERS:
        if adapter.is_neuron(module):
            return adapter
    return None


def check_model(model: nn.Module) -> None:
    """Raise before training if any neuron in ``model`` cannot be trained online."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"opzo.train expects a torch.nn.Module, got {type(model).__name__}.")
    found = False
    for name, module in model.named_modules():
        adapter = find_adapter(module)
        if adapter is not None:
            found = True
            adapter.check_supported(name or type(module).__name__, module)
    if not found:
        absent = [lib for lib in LIBRARIES if lib not in {a.library for a in ADAPTERS}]
        hint = ""
        if absent:
            hint = (f" Not installed here: {' and '.join(LIBRARIES[lib] for lib in absent)} "
                    f"(pip install {' '.join(repr(f'opzo_ext[{lib}]') for lib in absent)}).")
        raise UnsupportedModelError(
            f"No spiking neuron found in {type(model).__name__}: opzo_ext trains snnTorch "
            "neurons (snntorch.SpikingNeuron) and SpikingJelly neurons (MemoryModule with a "
            "surrogate_function). Build the model from those neuron classes." + hint
        )


from .snntorch import SnnTorchAdapter  # noqa: E402
from .spikingjelly import SpikingJellyAdapter  # noqa: E402

ADAPTERS: list[NeuronAdapter] = [a for a in (SnnTorchAdapter.create(), SpikingJellyAdapter.create()) if a]
#: adapter.library -> the library's name; each is optional (the extras ``opzo_ext[snntorch]`` and
#: ``opzo_ext[spikingjelly]``), and an adapter whose library is not installed is left out of ADAPTERS
LIBRARIES = {"snntorch": "snnTorch", "spikingjelly": "SpikingJelly"}

__all__ = ["NeuronAdapter", "ADAPTERS", "find_adapter", "check_model"]
