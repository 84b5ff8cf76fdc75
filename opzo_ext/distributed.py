"""Multi-process training (``torch.distributed``, e.g. DDP launched by ``torchrun``).

Each rank perturbs its own samples with its own noise (the noise seeds differ by rank), and every
rank must hold the same feedback matrices: the M update of a step is the sum over ranks of
``o~_r^T z_r`` divided by the global batch. Either that ``[m, rows]`` product is all-reduced, or,
when the global batch's factors are smaller (``B (m + rows) < 2 m rows``), ``o~`` and ``z`` are
all-gathered and every rank forms the product itself (``OPZO.exchange``). A low-rank M is always
truncated from the all-gathered global batch. DFA's fixed ``B`` comes from the session seed,
which rank 0 broadcasts. The session's own readouts (``local``, ``igl``) are not inside the model DDP
wraps, so the session starts them from rank 0's weights and averages their gradients itself
(:func:`share_parameters`). Without an initialised process group every function here is a no-op.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def global_batch(batch: int, device: torch.device) -> int:
    """The number of samples of this step over all ranks."""
    if world()[1] == 1:
        return batch
    count = torch.tensor([batch], dtype=torch.float64, device=device)
    return int(all_reduce_sum(count).item())


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """``[B_r, ...]`` of every rank concatenated along dim 0, in rank order (``B_r`` may differ)."""
    if world()[1] == 1:
        return tensor
    size = world()[1]
    count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    rows = [int(c) for c in counts]
    padded = tensor.new_zeros(max(rows), *tensor.shape[1:])
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, rows)])


def shared_seed(seed: int) -> int:
    """Rank 0's ``seed`` on every rank."""
    if world()[1] == 1:
        return seed
    nccl = dist.get_backend() == "nccl"  # NCCL only moves CUDA tensors
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    value = torch.tensor([seed], dtype=torch.int64, device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def share_parameters(params) -> None:
    """Rank 0's values for ``params`` on every rank, and their gradients averaged over ranks after
    every backward (what DDP does for the model's own parameters)."""
    if world()[1] == 1:
        return
    size = world()[1]

    def average(p: torch.Tensor) -> None:
        all_reduce_sum(p.grad).div_(size)

    for p in params:
        with torch.no_grad():
            dist.broadcast(p.data, src=0)
        p.register_post_accumulate_grad_hook(average)


def in_uneven_inputs_join(depth: int = 16) -> bool:
    """Whether the current forward runs under ``DistributedDataParallel.join()`` (uneven inputs):
    the DDP wrapper calling the model is found among the calling frames, and its join is enabled."""
    from torch.nn.parallel import DistributedDataParallel

    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        wrapper = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if isinstance(wrapper, DistributedDataParallel):
            config = getattr(wrapper, "_join_config", None)
            return bool(config is not None and config.enable)
        frame = frame.f_back
    return False
