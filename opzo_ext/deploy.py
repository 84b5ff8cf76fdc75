"""Deployment noise: a model of analog hardware mismatch for any snnTorch/SpikingJelly model.

    with opzo.noisy(model, sigma=0.1):
        accuracy = evaluate(model)          # every spiking neuron sees input + sigma * N(0, 1)

The noise is added at every call, in training and in eval mode, until the block exits, either to
the input current of every spiking neuron (``site="neuron"``, the default) or to the output of
every convolution (``site="conv"``: the paper's "added to the results after convolutional
operations", section 5.4; in a residual network that includes the stem and both convolutions of
every block, whose sum reaches the neurons). Fine-tuning under this noise is OPZO with
``alpha=sigma, antithetic=False`` and ``inject="before"`` (neuron site) or ``inject="conv"`` (conv
site), appendix C.3.2: the injected perturbation is then the hardware noise itself.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from .adapters import check_model, find_adapter


SITES = ("neuron", "conv")


@contextmanager
def noisy(model: nn.Module, sigma: float, seed: Optional[int] = None, site: str = "neuron") -> Iterator[nn.Module]:
    """Add ``sigma * N(0, 1)`` inside the block to the input of every spiking neuron of ``model``
    (``site="neuron"``) or to the output of every convolution (``site="conv"``)."""
    if not sigma >= 0:
        raise ValueError(f"sigma={sigma!r} must be a non-negative noise scale.")
    if site not in SITES:
        raise ValueError(f"site={site!r} is not valid; choose 'neuron' (every neuron's input current) or 'conv' "
                         "(every convolution's output).")
    check_model(model)
    generators: dict[str, torch.Generator] = {}

    def perturbed(x: torch.Tensor) -> torch.Tensor:
        gen = None
        if seed is not None:
            gen = generators.get(str(x.device))
            if gen is None:
                gen = generators[str(x.device)] = torch.Generator(device=x.device)
                gen.manual_seed(seed)
        return x + sigma * torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=gen)

    if site == "neuron":
        handles = [m.register_forward_pre_hook(lambda m, args, kwargs: ((perturbed(args[0]), *args[1:]), kwargs),
                                               with_kwargs=True)
                   for m in model.modules() if find_adapter(m) is not None]
    else:
        convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
        if not convs:
            raise ValueError(f"site='conv': {type(model).__name__} has no convolution; use site='neuron'.")
        handles = [m.register_forward_hook(lambda m, args, out: perturbed(out)) for m in convs]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
