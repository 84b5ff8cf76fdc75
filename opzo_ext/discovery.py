"""Find the spiking neurons, the synapses between them and the readout of an arbitrary model.

On the first training forward inside a session, :func:`discover` runs the model once on a probe
copy (same parameters, copied buffers and states, RNG restored afterwards) and walks the autograd
graph of that step. The walk from a tensor upwards stops at the outputs of neurons and synapses,
so it finds exactly the modules that *directly* feed it, through any parameter-free operations
(pooling, BatchNorm, dropout, flatten, residual additions). Call order alone would be wrong in
ResNets; ``torch.fx`` cannot trace either library's neurons.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .batchnorm import keeps_running_stats
from .errors import UnsupportedModelError
from .traces import is_synapse


@dataclass
class Topology:
    """What the session needs to know about a model (all entries are qualified module names)."""

    neurons: list[str]  # every neuron called in one step, in call order
    hidden: list[str]  # neurons that receive feedback (all but the output neurons), forward order
    output_neurons: list[str]  # neurons whose output is the model output (no synapse in between)
    tap: tuple[str, str]  # ("synapse", name): tap its output; ("neuron", name): tap its input
    presynaptic: dict[str, list[str]] = field(default_factory=dict)  # synapse -> neurons feeding it
    afferent: dict[str, list[str]] = field(default_factory=dict)  # neuron -> synapses feeding it
    in_shapes: dict[str, tuple] = field(default_factory=dict)  # module -> shape of its first input
    out_shapes: dict[str, tuple] = field(default_factory=dict)  # module -> shape of its first output
    norms: list[str] = field(default_factory=list)  # BatchNorm layers with running statistics first
    # called after the first hidden neuron: in training they see the session's noise


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _probe_copy(model: nn.Module) -> nn.Module:
    """A deep copy sharing ``model``'s parameters, without any hooks (the user's hooks must not see
    the probe step); states that carry a graph are detached."""
    memo: dict[int, Any] = {id(p): p for p in model.parameters()}
    for module in model.modules():
        for key, value in vars(module).items():
            if "hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
            for t in _tensors(value):
                if not isinstance(t, nn.Parameter) and t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _walk(roots: Iterable, stops: dict) -> set:
    """Names in ``stops`` (grad_fn node -> name) first reached going up the graph from ``roots``."""
    found, seen, stack = set(), set(), [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in stops:
            found.add(stops[node])
            continue
        stack.extend(n for n, _ in node.next_functions if n is not None)
    return found


def discover(model: nn.Module, args: tuple, kwargs: dict, is_neuron: Callable[[nn.Module], bool]) -> Topology:
    """Probe one forward of ``model(*args, **kwargs)`` and return its :class:`Topology`."""
    probe = _probe_copy(model)
    neuron_out: dict = {}  # grad_fn of a neuron output -> neuron name
    synapse_out: dict = {}
    inputs: dict[str, list] = {}  # module name -> grad_fns of its first input, one per call
    order: dict[str, str] = {}  # module name -> "neuron" | "synapse", in first-call order
    handles = []

    in_shapes: dict[str, tuple] = {}
    out_shapes: dict[str, tuple] = {}

    def record(name: str, table: dict):
        def hook(module, hook_args, output):
            if name not in order:
                order[name] = "neuron" if table is neuron_out else "synapse"
                in_shapes[name] = tuple(hook_args[0].shape) if hook_args else ()
                out_shapes[name] = tuple(next(iter(_tensors(output))).shape)
            inputs.setdefault(name, []).append(hook_args[0].grad_fn if hook_args else None)
            for t in _tensors(output):
                if t.grad_fn is not None:
                    table[t.grad_fn] = name
        return hook

    def record_norm(name: str):
        def hook(module, hook_args, output):
            order.setdefault(name, "norm")
        return hook

    for name, module in probe.named_modules():
        if is_neuron(module):
            handles.append(module.register_forward_hook(record(name, neuron_out)))
        elif is_synapse(module):
            handles.append(module.register_forward_hook(record(name, synapse_out)))
        elif keeps_running_stats(module):
            handles.append(module.register_forward_hook(record_norm(name)))

    def needs_grad(x):  # so that every op of the step has a node, even with frozen parameters
        return x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    devices = [p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"][:1]
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            output = probe(*(needs_grad(a) for a in args), **{k: needs_grad(v) for k, v in kwargs.items()})
    finally:
        for h in handles:
            h.remove()

    neurons = [n for n, kind in order.items() if kind == "neuron"]
    stops = {**neuron_out, **synapse_out}
    # the readout is what the primary (first) output comes from; further outputs may be states
    # handed back to the caller (``return out, mem1, mem2``)
    outputs = list(_tensors(output))
    reached = _walk([outputs[0].grad_fn], stops) if outputs else set()
    extra = _walk((t.grad_fn for t in outputs[1:]), stops) - reached
    reached |= {n for n in extra if order.get(n) == "synapse"}  # another readout head: refused below
    out_neurons = [n for n in neurons if n in reached]
    out_synapses = sorted(reached - set(out_neurons))
    if out_neurons and out_synapses:
        raise UnsupportedModelError(
            f"The model output comes both from neurons {out_neurons} and from synapses {out_synapses}; "
            "opzo_ext needs one readout: return either the output layer's neuron output or one "
            "linear/conv readout."
        )
    if len(out_neurons) > 1 or len(out_synapses) > 1:
        raise UnsupportedModelError(
            f"The model output is produced by several modules ({out_neurons or out_synapses}); "
            "opzo_ext supports one readout layer. Combine the heads inside one Linear/Conv readout."
        )
    if not out_neurons and not out_synapses:
        raise UnsupportedModelError(
            "The model output does not depend on any Linear/Conv synapse or spiking neuron; "
            "opzo_ext needs a readout layer (a Linear/Conv, or an output neuron layer)."
        )
    tap = ("neuron", out_neurons[0]) if out_neurons else ("synapse", out_synapses[0])
    presynaptic = {}
    for name, kind in order.items():
        if kind == "synapse":
            upstream = _walk(inputs[name], stops)
            presynaptic[name] = [n for n in neurons if n in upstream]
    afferent = {}  # the synapses directly feeding each neuron (the walk stops at neurons too)
    for name in neurons:
        upstream = _walk(inputs[name], stops)
        afferent[name] = [s for s, kind in order.items() if kind == "synapse" and s in upstream]
    hidden = [n for n in neurons if n not in out_neurons]
    called = list(order)
    after_hidden = called[called.index(hidden[0]):] if hidden else []
    return Topology(neurons=neurons, hidden=hidden, output_neurons=out_neurons, tap=tap,
                    presynaptic=presynaptic, afferent=afferent, in_shapes=in_shapes, out_shapes=out_shapes,
                    norms=[n for n in after_hidden if order[n] == "norm"])

