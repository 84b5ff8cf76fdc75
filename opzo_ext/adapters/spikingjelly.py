"""SpikingJelly neurons: state lives in ``MemoryModule._memories``; multi-step (``'m'``) neurons get
an instance-level ``multi_step_forward`` (:meth:`SpikingJellyAdapter.stepwise`) that runs single steps and detaches state between them."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import NeuronAdapter

WHY_NOT = {
    "OTTTLIFNode": "it already implements OTTT itself (it returns [spike, trace]); use neuron.LIFNode",
    "SLTTLIFNode": "it already implements online training itself; use neuron.LIFNode",
    "PSN": "it processes the whole sequence at once (no per-step state)",
    "MaskedPSN": "it processes the whole sequence at once (no per-step state)",
    "SlidingPSN": "it processes the whole sequence at once (no per-step state)",
}


class SpikingJellyAdapter(NeuronAdapter):
    library = "spikingjelly"

    def __init__(self, base):
        self.memory_module = base.MemoryModule

    @classmethod
    def create(cls) -> Optional["SpikingJellyAdapter"]:
        try:
            from spikingjelly.activation_based import base
        except ImportError:
            return None
        return cls(base)

    def is_neuron(self, module: nn.Module) -> bool:
        """A ``MemoryModule`` with a surrogate function, or a refused neuron such as ``PSN`` (a plain
        ``nn.Module``), so that :meth:`check_supported` names it instead of passing it over."""
        if not hasattr(module, "surrogate_function"):
            return False
        return isinstance(module, self.memory_module) or any(c.__name__ in WHY_NOT for c in type(module).__mro__)

    def check_supported(self, name: str, module: nn.Module) -> None:
        bad = [c.__name__ for c in type(module).__mro__ if c.__name__ in WHY_NOT]
        if bad:
            raise UnsupportedModelError(
                f"Module '{name}' ({type(module).__name__}) cannot be trained by opzo_ext: "
                f"{WHY_NOT[bad[0]]}."
            )
        if not getattr(module, "_memories", None):
            raise UnsupportedModelError(
                f"Module '{name}' ({type(module).__name__}) has no registered memory (state); "
                "opzo_ext needs the neuron's membrane state in MemoryModule._memories."
            )

    def leak(self, module: nn.Module) -> float:
        """LIF: 1 - 1/tau; ParametricLIF: 1 - sigmoid(w); IF and anything without a leak: 1."""
        if getattr(module, "tau", None) is not None:
            return 1.0 - 1.0 / float(module.tau)
        w = getattr(module, "w", None)
        if isinstance(w, torch.Tensor):
            return float(1.0 - torch.sigmoid(w.detach()).mean())
        return 1.0

    def incoming_state(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        return next(iter(module._memories.values()))

    def outgoing_state(self, module: nn.Module, output: Any) -> Any:
        return next(iter(module._memories.values()))

    def detach_state(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        memories = module._memories
        for key, value in memories.items():
            if isinstance(value, torch.Tensor):
                memories[key] = value.detach()
        return args, kwargs

    def is_multistep(self, module: nn.Module) -> bool:
        return getattr(module, "step_mode", "s") == "m"

    def stepwise(self, module: nn.Module, active: Callable[[], bool]) -> Callable:
        """A ``multi_step_forward`` for ``module`` that loops over single steps, detaching state
        between steps, while ``active()`` (the session installs it on the instance)."""
        original = module.multi_step_forward

        def multi_step_forward(x_seq: torch.Tensor, *args, **kwargs):
            if not active():
                return original(x_seq, *args, **kwargs)
            outputs = []
            for t in range(x_seq.shape[0]):
                self.detach_state(module, (), {})
                outputs.append(module.single_step_forward(x_seq[t], *(a[t] for a in args), **kwargs))
            if isinstance(outputs[0], torch.Tensor):
                return torch.stack(outputs)
            return type(outputs[0])(torch.stack(parts) for parts in zip(*outputs))

        return multi_step_forward
