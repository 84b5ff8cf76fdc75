"""snnTorch neurons: state lives in non-persistent buffers (``mem``, ``syn``, ...) or in explicit
state arguments ``lif(x, mem)``; both are detached every step."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import NeuronAdapter

SUPPORTED = ("Leaky", "Synaptic", "Lapicque")
WHY_NOT = {
    "Alpha": "its input enters two synaptic currents that cancel within a step (mem = tau * "
             "(syn_exc + syn_inh)), so with the state cut every step no gradient reaches its input",
    "LeakyParallel": "it processes the whole sequence in one call (no per-step state to detach)",
    "StateLeaky": "it processes the whole sequence in one call (no per-step state to detach)",
    "LinearLeaky": "it processes the whole sequence in one call (no per-step state to detach)",
    "RLeaky": "its recurrent synapse is inside the neuron, so no presynaptic trace can be attached",
    "RSynaptic": "its recurrent synapse is inside the neuron, so no presynaptic trace can be attached",
    "SLSTM": "its gates are synapses inside the neuron, so no presynaptic trace can be attached",
    "SConv2dLSTM": "its gates are synapses inside the neuron, so no presynaptic trace can be attached",
    "DeltaLeaky": "its state is a (mem, mem_prev) pair kept in plain attributes, not buffers, so it could "
                  "not be detached every step and gradients would flow through time",
}


class SnnTorchAdapter(NeuronAdapter):
    library = "snntorch"

    def __init__(self, snn):
        self.snn = snn
        self.base = snn.SpikingNeuron
        self.supported = tuple(getattr(snn, n) for n in SUPPORTED if hasattr(snn, n))
        self.parallel = tuple(getattr(snn, n) for n in ("LeakyParallel",) if hasattr(snn, n))

    @classmethod
    def create(cls) -> Optional["SnnTorchAdapter"]:
        try:
            import snntorch
        except ImportError:
            return None
        return cls(snntorch)

    def is_neuron(self, module: nn.Module) -> bool:
        return isinstance(module, self.base) or isinstance(module, self.parallel)

    def check_supported(self, name: str, module: nn.Module) -> None:
        kind = type(module).__name__
        bad = [c.__name__ for c in type(module).__mro__ if c.__name__ in WHY_NOT]
        if bad or not isinstance(module, self.supported):
            why = WHY_NOT.get(bad[0]) if bad else "opzo_ext has no state rule for this neuron type"
            raise UnsupportedModelError(
                f"Module '{name}' ({kind}) cannot be trained online by opzo_ext: {why}. "
                f"Use one of snntorch.{', snntorch.'.join(SUPPORTED)} instead."
            )

    def leak(self, module: nn.Module) -> float:
        beta = module.beta
        return float(beta.detach().clamp(0, 1).mean()) if isinstance(beta, torch.Tensor) else float(beta)

    @staticmethod
    def _state_names(module: nn.Module) -> list[str]:
        return [n for n, _ in module.named_buffers(recurse=False) if n in module._non_persistent_buffers_set]

    def incoming_state(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if "mem" in kwargs:
            return kwargs["mem"]
        if len(args) > 1:  # explicit state: forward(input_, ..., mem) with mem last
            return args[-1]
        return module.mem

    def outgoing_state(self, module: nn.Module, output: Any) -> Any:
        return module.mem

    def detach_state(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        for name in self._state_names(module):
            setattr(module, name, getattr(module, name).detach())
        args = (args[0], *(a.detach() if isinstance(a, torch.Tensor) else a for a in args[1:]))
        kwargs = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        return args, kwargs
