"""What a session creates once, when the layers are known: a record and a noise source per neuron
(and an activity trace where the method learns from it), the feedback matrices of the hidden layers
(:mod:`opzo_ext.feedback.sizing` chooses their storage) and the readouts its extensions need."""
from __future__ import annotations

from torch import nn

from . import resume
from .adapters import find_adapter
from .distributed import share_parameters
from .feedback import sizing
from .flow import NeuronState
from .noise import NoiseSource


def build(session, topology) -> None:
    session.topology = topology
    modules = dict(session.model.named_modules())
    hidden = set(topology.hidden) if session.method.uses_tap() else set()
    config = session.config
    for index, name in enumerate(topology.neurons):
        noise = NoiseSource(config.noise, config.antithetic,
                            seed=session._seed + 7919 * (index + 1) + 1_000_003 * session._rank)
        rec = NeuronState(name, modules[name], find_adapter(modules[name]), name in hidden, noise)
        if rec.hidden:
            rec.activity = session.method.activity_trace(session.trace_lambda(rec))
        session.flow.neurons[name] = rec
    resume.adopt(session)
    resume.load_noise(session)
    shapes = sizing.layer_shapes(topology, session.flow.neurons)
    readouts = {k: v for e in session.extensions for k, v in e.readouts(shapes).items()}
    init_matrices(session)
    if readouts:
        like = next(session.model.parameters())
        session.local_readouts = nn.ModuleDict({
            key: nn.Linear(n, m, device=like.device, dtype=like.dtype) for key, (n, m) in readouts.items()})
        resume.load_local(session)
        share_parameters(session.local_readouts.parameters())  # multi-process: not inside the user's DDP


def init_matrices(session) -> None:
    """Create (or check loaded) feedback matrices ``[n_l, m]``: the layers before the intermediate
    readout get theirs from it (``igl``), the others from the output."""
    neurons = session.flow.neurons
    shapes = {n: s for n, s in sizing.layer_shapes(session.topology, neurons).items() if neurons[n].hidden}
    before = session.igl_layers
    owners = [(session.method, [n for n in shapes if n not in before])]
    if session.igl_method is not None:
        owners.append((session.igl_method, before))
    session.layout = sizing.init_matrices(owners, shapes, sizing.channel_groups(session.topology, neurons),
                                          session.config, next(session.model.parameters()))
