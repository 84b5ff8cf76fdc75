"""The interface every library adapter implements."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class NeuronAdapter:
    """Interface of a neuron adapter (one per SNN library). All methods are static-like."""

    library = "?"

    def is_neuron(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def check_supported(self, name: str, module: nn.Module) -> None:
        """Raise :class:`UnsupportedModelError` naming ``name`` if the neuron cannot run online."""

    def leak(self, module: nn.Module) -> float:
        """The membrane leak ``lam`` of ``u[t+1] = lam * u[t] + I[t]`` (used as trace decay)."""
        raise NotImplementedError

    def incoming_state(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        """The object holding the membrane state this call starts from (compared by identity)."""
        raise NotImplementedError

    def outgoing_state(self, module: nn.Module, output: Any) -> Any:
        """The object holding the membrane state after this call."""
        raise NotImplementedError

    def detach_state(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Cut the graph through time: detach every state tensor, out of place."""
        raise NotImplementedError

    def spike(self, output: Any) -> torch.Tensor:
        """The spike tensor in the neuron's return value."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def replace_spike(self, output: Any, spike: torch.Tensor) -> Any:
        if isinstance(output, (tuple, list)):
            return type(output)((spike, *output[1:]))
        return spike

    def is_multistep(self, module: nn.Module) -> bool:
        """True if one call processes a whole ``[T, B, ...]`` sequence."""
        return False
