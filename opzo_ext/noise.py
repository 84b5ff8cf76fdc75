"""Perturbation noise ``z`` (zero mean, unit variance per element) and alpha schedules.

OPZO and ZO inject ``alpha * z`` into every hidden layer at every time step (section 4.4 of the
paper). Distributions: ``"gaussian"`` (default), ``"rademacher"`` (+-1), ``"sphere"`` (uniform on the
sphere of radius ``sqrt(n)`` per sample, so that ``E[z z^T] = I`` like the others). Antithetic noise
uses ``z`` and ``-z`` on alternate time steps of one sequence (appendix C.2).
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Callable, Optional, Union

import torch

DISTRIBUTIONS = ("gaussian", "rademacher", "sphere")


def sample(distribution: str, shape: torch.Size, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``z`` of ``shape = [B, ...]`` (per-sample normalisation for ``"sphere"``)."""
    kw = dict(device=like.device, generator=generator)
    if distribution == "gaussian":
        return torch.randn(shape, dtype=like.dtype, **kw)
    if distribution == "rademacher":
        return torch.randint(0, 2, shape, **kw).to(like.dtype).mul_(2).sub_(1)
    z = torch.randn(shape, dtype=like.dtype, **kw)
    flat = z.view(shape[0], -1)
    return flat.mul_(flat.shape[1] ** 0.5 / flat.norm(dim=1, keepdim=True)).view(shape)


class NoiseSource:
    """Noise of one neuron layer, from its own generator (so that the noise of a layer does not
    depend on the order in which layers or steps are computed: single-step and multi-step runs of
    one model draw the same ``z``).

    ``draw(like, steps, fresh)`` returns ``z`` with ``like``'s shape (``[steps, B, ...]`` when
    ``steps > 1``), flipping the previous ``z`` on every second step of a sequence when
    ``antithetic``. With antithetic pairs a float32 ``z`` is rounded to bfloat16 (and used so on
    both steps of the pair): the stored copy costs half the memory, and the pair stays exactly
    ``z, -z``. ``fresh`` starts a new sequence.
    """

    def __init__(self, distribution: str, antithetic: bool, seed: int):
        self.distribution = distribution
        self.antithetic = antithetic
        self.seed = seed
        self.generators: dict[str, torch.Generator] = {}
        self.parity = 0
        self.last: Optional[torch.Tensor] = None  # z of the previous step, to flip at this one

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self.generators.get(str(device))
        if gen is None:
            gen = self.generators[str(device)] = torch.Generator(device=device)
            gen.manual_seed(self.seed)
        return gen

    def draw(self, like: torch.Tensor, steps: int, fresh: bool) -> torch.Tensor:
        if fresh:
            self.parity, self.last = 0, None
        step_shape = like.shape[1:] if steps > 1 else like.shape
        zs = []
        for _ in range(steps):
            if self.antithetic and self.parity == 1 and self.last is not None and self.last.shape == step_shape:
                z, self.last = self.last.to(like.dtype).neg_(), None
            else:
                z = sample(self.distribution, step_shape, like, self.generator(like.device))
                if self.antithetic:  # kept for one step in bfloat16: half the memory of a float32 z
                    self.last = z.to(torch.bfloat16) if z.dtype == torch.float32 else z
                    z = self.last.to(like.dtype)
            self.parity = 1 - self.parity if self.antithetic else 0
            zs.append(z)
        return torch.stack(zs) if steps > 1 else zs[0]

    def state_dict(self) -> dict:
        return {"parity": self.parity, "last": self.last,
                "generators": {d: g.get_state() for d, g in self.generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.parity, self.last = state["parity"], state["last"]
        self.generators = {}  # a device without a saved state starts again from the seed
        for device, rng in state["generators"].items():
            self.generator(torch.device(device)).set_state(rng)


Alpha = Union[float, Callable[[int], float]]


@dataclass(frozen=True)
class LinearAlpha:
    """alpha decaying linearly from ``start`` (epoch 0) to ``end`` (epoch ``epochs - 1``), then
    constant; a callable ``epoch -> alpha`` that is saved as data in session states."""

    start: float
    end: float
    epochs: int

    def __call__(self, epoch: int) -> float:
        frac = min(max(epoch, 0), self.epochs - 1) / max(self.epochs - 1, 1)
        return self.start + (self.end - self.start) * frac


def linear_alpha(start: float = 0.2, end: float = 0.01, epochs: int = 50) -> LinearAlpha:
    """The paper's schedule: alpha decays linearly from ``start`` (epoch 0) to ``end`` (last epoch
    ``epochs - 1``). Pass it as ``opzo.train(..., alpha=linear_alpha(...))`` and call
    ``session.next_epoch()`` at the end of each epoch (or set ``session.epoch``)."""
    if epochs < 1:
        raise ValueError(f"linear_alpha needs epochs >= 1, got {epochs}.")
    return LinearAlpha(float(start), float(end), int(epochs))
