"""Deployment noise: a model of analog hardware mismatch for any snnTorch/SpikingJelly model.

    with opzo.noisy(model, sigma=0.1):
        accuracy = evaluate(model)          # every spiking neuron sees input + sigma * N(0, 1)

The noise is added to the input current of every spiking neuron (before the neuron), at every
call, in training and in eval mode, until the block exits. Fine-tuning under the same noise is
OPZO with ``alpha=sigma, inject="before", antithetic=False`` (appendix C.3.2): the injected
perturbation is then the hardware noise itself.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .adapters import check_model, find_adapter


@contextmanager
def noisy(model: nn.Module, sigma: float, seed: Optional[int] = None) -> Iterator[nn.Module]:
    """Add ``sigma * N(0, 1)`` to the input of every spiking neuron of ``model`` inside the block."""
    if not sigma >= 0:
        raise ValueError(f"sigma={sigma!r} must be a non-negative noise scale.")
    check_model(model)
    generators: dict[str, torch.Generator] = {}

    def add_noise(module, args, kwargs):
        x = args[0]
        gen = None
        if seed is not None:
            gen = generators.get(str(x.device))
            if gen is None:
                gen = generators[str(x.device)] = torch.Generator(device=x.device)
                gen.manual_seed(seed)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=gen)
        return (x + sigma * noise, *args[1:]), kwargs

    handles = [m.register_forward_pre_hook(add_noise, with_kwargs=True)
               for m in model.modules() if find_adapter(m) is not None]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
