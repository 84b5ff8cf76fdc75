"""The paper's table 5 for your own network: memory and operations of the error-backward procedure
on neuromorphic hardware, for spatial BP, DFA, ZO_sp and OPZO, per hidden layer and in total.

Table 5 (Xiao et al., ICLR 2026), for ``N`` hidden layers of ``n`` neurons and ``m`` outputs
(``m << n``); "*": parallelisable for different layers::

    method              memory               operations
    BP (if possible)    O((N-1) n^2 + m n)   O((N-1) n^2 + m n)
    DFA *               O(N m n)             O(N m n)
    ZO_sp *             O(N n)               O(N n)
    OPZO *              O(N m n)             O(N m n)

:func:`backward_costs` evaluates the terms inside ``O(.)`` layer by layer, for the layer sizes of
the given model (``n_l`` spiking neurons per sample and time step in hidden layer ``l``, ``m``
readout outputs per sample and step, as :func:`opzo_ext.feedback.sizing.layer_shapes` finds them):

* **bp**: hidden layer ``l`` gets its error through the transposes of the synapses it feeds, which
  BP must keep as backward connections: memory ``sum_s |W_s|`` (weights), operations
  ``sum_s MAC_s``. In an FC net that is ``n_(l+1) n_l`` (``m n_N`` for the last layer), in total
  ``(N-1) n^2 + m n``. Not parallel: layer ``l`` waits for layer ``l+1``.
* **dfa**, **opzo**: a direct feedback matrix ``[n_l, m]``: memory and operations ``n_l m``
  (``M_l e``); ``feedback_matrix="channel"`` counts ``C_l m`` for a conv layer of ``C_l`` channels
  (opzo_ext's one row per channel, not in the paper). OPZO also updates ``M_l`` every step
  (``z_l o~^T``, ``n_l m`` more operations): :meth:`BackwardCosts.update` reports it separately.
* **zo_sp**: a scalar (the loss) broadcast to every neuron, times its noise ``z_l``: memory and
  operations ``n_l``.

Memory is in entries (numbers stored; multiply by 4 for bytes at fp32), operations are
multiply-accumulates per sample and time step. Only the shapes of one probe forward are used
(:func:`opzo_ext.discovery.discover`); no feedback matrix is allocated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from torch import nn

from .adapters import find_adapter
from .discovery import discover
from .errors import OpzoError
from .feedback.sizing import channel_groups, layer_shapes

METHODS = ("bp", "dfa", "zo_sp", "opzo")
#: the "*" of table 5: the error reaches every layer at once (no layer waits for another)
PARALLEL = {"bp": False, "dfa": True, "zo_sp": True, "opzo": True}
#: table 5's entries (memory and operations are the same expression for every method)
FORMULAS = {"bp": "O((N-1)n^2 + mn)", "dfa": "O(Nmn)", "zo_sp": "O(Nn)", "opzo": "O(Nmn)"}


@dataclass(frozen=True)
class LayerCost:
    """One hidden layer: ``neurons`` = ``n_l``; ``rows`` = rows of its feedback matrix (``n_l``, or
    ``C_l`` with ``feedback_matrix="channel"``); ``backward``: the synapses whose transposes bring
    BP's error to it; ``memory`` / ``operations``: method -> entries / MACs per sample and step."""

    name: str
    neurons: int
    rows: int
    backward: tuple[str, ...]
    memory: dict[str, int]
    operations: dict[str, int]


@dataclass(frozen=True)
class BackwardCosts:
    """The result of :func:`backward_costs`: ``layers`` (hidden layers, forward order), ``outputs``
    (``m``), ``synapses`` (every Linear/Conv: name -> (weights, MACs per sample and step))."""

    layers: tuple[LayerCost, ...]
    outputs: int
    synapses: dict[str, tuple[int, int]]
    feedback_matrix: str = "dense"
    parallel: dict[str, bool] = field(default_factory=lambda: dict(PARALLEL))

    def memory(self, method: str) -> int:
        """Total memory of ``method``'s error-backward procedure (entries)."""
        return sum(layer.memory[_check(method)] for layer in self.layers)

    def operations(self, method: str) -> int:
        """Total operations of ``method``'s error-backward procedure (MACs per sample and step)."""
        return sum(layer.operations[_check(method)] for layer in self.layers)

    def update(self, method: str) -> int:
        """Operations per sample and step to update the feedback itself: ``sum_l rows_l m`` for OPZO
        (the momentum update ``z_l o~^T``, parallel over layers, in table 5's ``O(Nmn)``), 0 otherwise."""
        return sum(layer.rows * self.outputs for layer in self.layers) if _check(method) == "opzo" else 0

    @property
    def totals(self) -> dict[str, tuple[int, int]]:
        """method -> (memory, operations), summed over the hidden layers."""
        return {m: (self.memory(m), self.operations(m)) for m in METHODS}

    @property
    def forward(self) -> tuple[int, int]:
        """(weights, MACs per sample and step) of all synapses: the forward pass, for scale."""
        return sum(w for w, _ in self.synapses.values()), sum(o for _, o in self.synapses.values())

    def to_markdown(self, layers: bool = True) -> str:
        """A per-layer table (memory / operations of each method) with a total row (``layers=False``:
        left out), then the totals per method beside table 5's formula and its "parallel" mark."""
        head = ["layer", "n_l"] + [f"{m} mem / ops" for m in METHODS]
        rows = [[f"`{lay.name}`", f"{lay.neurons:,}"]
                + [_pair(lay.memory[m], lay.operations[m]) for m in METHODS] for lay in self.layers]
        rows.append(["**total**", f"{sum(lay.neurons for lay in self.layers):,}"]
                    + [_pair(self.memory(m), self.operations(m)) for m in METHODS])
        out = [_table(head, rows), ""] if layers else []
        w, o = self.forward
        out.append(f"N = {len(self.layers)} hidden layers, m = {self.outputs:,} outputs, feedback "
                   f"matrices {self.feedback_matrix}; forward pass: {w:,} weights, {o:,} MACs. Memory in "
                   "entries, operations in MACs, per sample and time step.")
        out.append("")
        totals = [[m, FORMULAS[m], "yes" if self.parallel[m] else "no", f"{self.memory(m):,}",
                   f"{self.operations(m):,}", f"{self.update(m):,}"] for m in METHODS]
        out.append(_table(["method", "table 5", "parallel", "memory", "operations", "feedback update"], totals))
        return "\n".join(out)

    __str__ = to_markdown


def backward_costs(model: nn.Module, example_input: Any, feedback_matrix: str = "dense") -> BackwardCosts:
    """Table 5's memory and operations of the error-backward procedure for ``model``.

    ``example_input``: one call's input (a tensor or a tuple of arguments), as for ``opzo.train(...,
    example_input=)``; a batch of any size (the counts are per sample and time step).
    ``feedback_matrix``: ``"dense"`` (the paper's ``[n_l, m]``) or ``"channel"`` (``[C_l, m]`` for conv
    layers) for DFA and OPZO. Runs the model once on a probe copy; the model is left as it was.
    """
    if feedback_matrix not in ("dense", "channel"):
        raise ValueError(f"feedback_matrix must be 'dense' or 'channel', got {feedback_matrix!r}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    topology = discover(model, args, {}, lambda m: find_adapter(m) is not None)
    if not topology.hidden:
        raise OpzoError("The model has no hidden spiking layer: there is no error to send backward.")
    modules = dict(model.named_modules())
    neurons = {n: SimpleNamespace(module=modules[n], adapter=find_adapter(modules[n])) for n in topology.neurons}
    shapes = layer_shapes(topology, neurons)  # hidden layer -> (n_l, m)
    groups = channel_groups(topology, neurons) if feedback_matrix == "channel" else {}
    first = topology.hidden[0]
    samples = math.prod(topology.out_shapes[first]) // shapes[first][0]  # steps x batch of the probe

    synapses: dict[str, tuple[int, int]] = {}
    owner: dict[str, str] = {}  # synapse -> the hidden layer whose error its transpose carries
    hidden, last = set(topology.hidden), None
    for name in topology.in_shapes:  # first-call order of neurons and synapses
        if name in neurons:
            last = name
            continue
        weight = modules[name].weight
        per_output = weight.numel() // weight.shape[0]  # fan-in: in_features, or C_in/groups * k^2
        synapses[name] = (weight.numel(), math.prod(topology.out_shapes[name]) // samples * per_output)
        fed_by = [p for p in topology.presynaptic.get(name, []) if p in hidden]
        target = fed_by[-1] if fed_by else last  # an analog stream: the latest spiking layer before it
        if target in hidden:  # synapses before the first spiking layer need no error
            owner[name] = target

    layers = []
    for name in topology.hidden:
        n, m = shapes[name]
        rows = groups[name][0] if name in groups else n
        back = tuple(s for s, o in owner.items() if o == name)
        bp_mem, bp_ops = sum(synapses[s][0] for s in back), sum(synapses[s][1] for s in back)
        layers.append(LayerCost(
            name, n, rows, back,
            memory={"bp": bp_mem, "dfa": rows * m, "zo_sp": n, "opzo": rows * m},
            operations={"bp": bp_ops, "dfa": rows * m, "zo_sp": n, "opzo": rows * m}))
    m = shapes[first][1]
    return BackwardCosts(tuple(layers), m, synapses, feedback_matrix)


def _check(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _pair(memory: int, operations: int) -> str:
    return f"{memory:,} / {operations:,}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
