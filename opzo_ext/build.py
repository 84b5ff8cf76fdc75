"""What a session creates once, when the layers are known: a record and a noise source per neuron
(and an activity trace where the method learns from it), one per perturbed convolution with
``inject="conv"``, the feedback matrices of the hidden layers (:mod:`opzo_ext.feedback.sizing`
chooses their storage), the readouts its extensions need, and the recomputation of BatchNorm
statistics that come after the noise (``recompute_bn``)."""
from __future__ import annotations

from torch import nn

from . import resume
from .adapters import find_adapter
from .batchnorm import CleanStatistics
from .distributed import share_parameters, world
from .errors import OpzoError
from .feedback import sizing
from .flow import ConvSite, NeuronState
from .noise import NoiseSource


def build(session, topology) -> None:
    session.topology = topology
    modules = dict(session.model.named_modules())
    config = session.config
    at_convs = config.inject == "conv" and session.method.injects_noise()
    hidden = set(topology.hidden) if session.method.uses_tap() and not at_convs else set()

    def noise(index: int) -> NoiseSource:
        return NoiseSource(config.noise, config.antithetic,
                           seed=session._seed + 7919 * (index + 1) + 1_000_003 * session._rank)

    for index, name in enumerate(topology.neurons):
        rec = NeuronState(name, modules[name], find_adapter(modules[name]), name in hidden, noise(index))
        if rec.hidden:
            rec.activity = session.method.activity_trace(session.trace_lambda(rec))
        session.flow.neurons[name] = rec
    if at_convs:
        for index, name in enumerate(conv_sites(session, topology, modules), start=len(topology.neurons)):
            pres = [session.flow.neurons[p] for p in topology.presynaptic.get(name, [])]
            session.flow.convs[name] = ConvSite(name, modules[name], noise(index), pres)
    session.flow.layers = list(session.flow.convs) if at_convs else list(topology.hidden)
    if config.recompute_bn and topology.norms and session.method.injects_noise() and world()[1] == 1:
        session.clean_bn = CleanStatistics()
    resume.adopt(session)
    resume.load_noise(session)
    shapes = sizing.layer_shapes(topology, session.flow.neurons, session.layers)
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
    neurons, layers = session.flow.neurons, session.layers
    shapes = sizing.layer_shapes(session.topology, neurons, layers) if session.method.uses_tap() else {}
    before = session.igl_layers
    owners = [(session.method, [n for n in shapes if n not in before])]
    if session.igl_method is not None:
        owners.append((session.igl_method, before))
    session.layout = sizing.init_matrices(owners, shapes, sizing.channel_groups(session.topology, neurons, layers),
                                          session.config, next(session.model.parameters()))


def conv_sites(session, topology, modules: dict) -> list[str]:
    """The convolutions perturbed with ``inject="conv"``: every convolution but the readout, in
    forward order. Refuses a model where that would leave a trainable parameter without gradient
    or where the step layout is not one call per step."""
    kind, tap = topology.tap
    readout = {tap} if kind == "synapse" else {tap, *topology.output_neurons, *topology.afferent.get(tap, [])}
    names = [n for n in topology.in_shapes if isinstance(modules[n], nn.modules.conv._ConvNd) and n not in readout]
    if not names:
        raise OpzoError(f"inject='conv': {type(session.model).__name__} has no convolution before its readout; "
                        "use inject='after' or 'before'.")
    multistep = [n for n, r in session.flow.neurons.items() if r.adapter.is_multistep(r.module)]
    if multistep:
        raise OpzoError(f"inject='conv' needs single-step neurons (one call per time step); {multistep[:3]} run "
                        "multi-step. Use step_mode='s' (spikingjelly.activation_based.functional.set_step_mode) or "
                        "inject='before'.")
    learning = {*names, *readout}  # the readout's parameters get their exact gradient
    stranded = [f"'{n}' ({type(m).__name__})" for n, m in modules.items()
                if n not in learning and any(p.requires_grad for p in m.parameters(recurse=False))]
    if stranded:
        raise OpzoError(f"inject='conv' sends the error to the convolutions' outputs only, so the trainable "
                        f"parameters of {', '.join(stranded[:4])} would get no gradient. Freeze them "
                        "(requires_grad_(False)) or use inject='before', which perturbs the neurons' input currents.")
    return names
