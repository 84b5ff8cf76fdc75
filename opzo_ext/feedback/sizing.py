"""How big each hidden layer's feedback matrix is, how it is stored, and whether it fits.

A hidden layer of ``n_l`` neurons per step and sample, feeding back from ``m`` outputs per step and
sample, gets a matrix ``[n_l, m]`` (``[C, m]`` when a convolutional layer shares one row per channel,
``feedback_matrix="channel"``). ``"auto"`` chooses dense unless that exceeds the memory limit.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import torch

from ..errors import OpzoError


def _multistep(neurons: dict, name: str) -> bool:
    """Whether module ``name`` is a multi-step neuron (its output ``[T, B, ...]``); other modules,
    e.g. the convolutions of ``inject="conv"``, run one step per call."""
    rec = neurons.get(name)
    return rec is not None and rec.adapter.is_multistep(rec.module)


def layer_shapes(topology, neurons: dict, layers: Optional[list[str]] = None) -> dict[str, tuple[int, int]]:
    """``[n_l, m]`` per hidden layer (``layers``, default the hidden neurons), from the probe's
    shapes (per step and sample); ``neurons``: name -> :class:`~opzo_ext.flow.NeuronState`."""
    def steps_batch(name: str) -> tuple[int, int]:
        shape = topology.out_shapes[name]
        return (shape[0], shape[1]) if _multistep(neurons, name) else (1, shape[0])

    kind, site = topology.tap
    # the time/batch layout of the readout's input: from the neuron feeding it, else from any
    # neuron (an analog readout input, e.g. a residual stream, runs in the network's step mode)
    ref = site if kind == "neuron" else (topology.presynaptic.get(site) or topology.neurons)[0]
    tap_shape = topology.in_shapes[site] if kind == "neuron" else topology.out_shapes[site]
    steps, batch = steps_batch(ref)
    m = math.prod(tap_shape) // (steps * batch)
    return {n: (math.prod(topology.out_shapes[n]) // math.prod(steps_batch(n)), m)
            for n in (topology.hidden if layers is None else layers)}


def channel_groups(topology, neurons: dict, layers: Optional[list[str]] = None) -> dict[str, tuple[int, int]]:
    """(channels, positions) of every hidden layer (``layers``, default the hidden neurons) whose
    output has a spatial layout."""
    groups = {}
    for n in topology.hidden if layers is None else layers:
        shape = topology.out_shapes[n]
        per_sample = shape[2:] if _multistep(neurons, n) else shape[1:]
        if len(per_sample) >= 2:
            groups[n] = (per_sample[0], math.prod(per_sample[1:]))
    return groups


def init_matrices(owners: list[tuple], shapes: dict[str, tuple[int, int]], groups: dict[str, tuple[int, int]],
                  config, like: torch.Tensor) -> str:
    """Create (or check loaded) feedback matrices: ``owners`` lists ``(method, layers)``, each method
    holding the matrices of its layers (the output's method first, then the intermediate readout's).
    Returns the storage chosen (``"dense"``, ``"channel"``, ...)."""
    methods = [method for method, _ in owners]
    layout = config.feedback_matrix
    if not methods[0].stores_matrices():
        return layout if layout != "auto" else "dense"
    limit = feedback_limit(like, config.max_feedback_gb)
    groups = {n: g for n, g in groups.items() if n in shapes}
    if layout == "auto":
        dense = feedback_bytes(shapes, methods[0], like)
        layout = "channel" if methods[0].can_share_rows() and groups and dense > limit else "dense"
        if layout == "channel":
            warnings.warn(f"Dense feedback matrices would take {dense / 1e9:.2f} GB, "
                          f"more than {limit / 1e9:.2f} GB: using one row per channel for convolutional "
                          "layers (feedback_matrix='channel'), which suits readouts after global average "
                          "pooling; for a readout of the flattened map, feedback_matrix='lowrank' keeps "
                          "the spatial detail. Pass feedback_matrix='dense' to insist.")
    if layout == "channel":
        for method in methods:
            method.share_rows(groups)
        shapes = {n: ((groups[n][0], m) if n in groups else (rows, m)) for n, (rows, m) in shapes.items()}
    check_feedback_size(shapes, methods[0], like, limit)
    for method, layers in owners:
        method.init_matrices({n: s for n, s in shapes.items() if n in layers}, like)
    return layout


def feedback_bytes(shapes: dict[str, tuple[int, int]], method, like: torch.Tensor) -> int:
    """Bytes of ``method``'s feedback matrices for layers of ``[n_l, m]`` ``shapes``."""
    return sum(method.matrix_bytes(shape, like) for shape in shapes.values())


def feedback_limit(like: torch.Tensor, limit_gb: Optional[float]) -> float:
    """Bytes allowed for feedback matrices: ``limit_gb``, else a quarter of the memory of ``like``'s device
    (the model, its activations and the optimizer need the rest)."""
    if limit_gb is not None:
        return limit_gb * 1e9
    if like.device.type == "cuda":
        return torch.cuda.get_device_properties(like.device).total_memory / 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4


def check_feedback_size(shapes: dict[str, tuple[int, int]], method, like: torch.Tensor, limit: float) -> None:
    """Refuse feedback matrices larger than ``limit`` bytes, naming the largest layers."""
    size = feedback_bytes(shapes, method, like)
    if size > limit:
        entry = method.entry_size(like)
        largest = sorted(shapes.items(), key=lambda kv: -kv[1][0] * kv[1][1])[:3]
        detail = ", ".join(f"'{n}' {a} x {b}" for n, (a, b) in largest)
        raise OpzoError(
            f"The feedback matrices would take {size / 1e9:.2f} GB ({size // entry:,} entries; "
            f"largest: {detail}), more than the {limit / 1e9:.2f} GB allowed on {like.device}. Use "
            "feedback_matrix='channel' (one row per conv channel), 'lowrank' (rank feedback_rank) or 'bf16' "
            "(half the bytes), a smaller input or fewer classes, or raise max_feedback_gb if the memory is there."
        )
