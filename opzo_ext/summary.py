"""``session.summary()`` and ``repr(session)``: what a session trains and how it is doing, in the
manner of PEFT's ``print_trainable_parameters``: the model, the method and its options, each hidden
layer (neuron type, neurons per sample, synapses, feedback matrix and bytes, firing rate), the readout,
the feedback memory, the steps trained and what the :mod:`~opzo_ext.health` checks found."""
from __future__ import annotations

import textwrap

import torch

from .health import Health, _names, per_sample, reliabilities

def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _matrix_info(session) -> dict[str, tuple[str, int]]:
    """Layer -> (description of its feedback matrix, bytes of all its matrices, lags included)."""
    found: dict[str, list] = {}
    for method in (session.method, session.igl_method):
        for key, m in (getattr(method, "matrices", None) or {}).items():
            name, _, lag = key.partition("@")  # lags=True: "layer@k" holds lag k's matrix
            entry = found.setdefault(name, ["", 0, 0])
            parts = m if isinstance(m, tuple) else (m,)
            entry[1] += sum(t.numel() * t.element_size() for t in parts)
            if lag:
                entry[2] += 1
            elif isinstance(m, tuple):
                entry[0] = f"rank-{m[0].shape[1]} factors of [{m[0].shape[0]}, {m[1].shape[0]}] {_dtype(m[0])}"
            else:
                entry[0] = f"[{', '.join(map(str, m.shape))}] {_dtype(m)}"
    return {name: (text + (f" (+{lags} lag matrices)" if lags else ""), size)
            for name, (text, size, lags) in found.items()}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _synapse(modules: dict, name: str) -> str:
    w = getattr(modules[name], "weight", None)
    shape = f" weight [{', '.join(map(str, w.shape))}]" if isinstance(w, torch.Tensor) else ""
    return f"'{name}' {type(modules[name]).__name__}{shape}"


def summary(session) -> str:
    """The text of :meth:`Session.summary`."""
    model, config, health = session.model, session.config, session.health
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f"opzo_ext session on {type(model).__name__} ({trainable:,} trainable parameters; "
             f"{'open' if session._open else 'not open'}, {session.steps:,} steps trained, epoch {session.epoch})"]
    options = ", ".join(f"{k}={v!r}" for k, v in config.as_dict().items() if k != "method")
    lines.append(textwrap.fill(f"method: {config.method} ({type(session.method).__name__}); {options}", width=100,
                               subsequent_indent="    ", break_long_words=False, break_on_hyphens=False))
    topo = session.topology
    if topo is None:
        lines.append("layers: not discovered yet. They are found at the first training step (model.train(), "
                     "gradients enabled), or at once with opzo.train(model, ..., example_input=<one step's input>).")
        return "\n".join(lines)
    modules = dict(model.named_modules())
    feeds = {}
    for synapse, pres in topo.presynaptic.items():
        for n in pres:
            feeds.setdefault(n, []).append(synapse)
    matrices = _matrix_info(session)
    lines.append(f"hidden layers ({len(topo.hidden)}):")
    for name in topo.hidden:
        module = modules[name]
        lines.append(f"  '{name}' {type(module).__name__}: {per_sample(session, name):,} neurons per sample")
        fed = topo.afferent.get(name, [])
        lines.append("      fed by " + (", ".join(_synapse(modules, s) for s in fed) if fed else "no synapse"))
        if feeds.get(name):
            lines.append("      feeds " + ", ".join(f"'{s}'" for s in feeds[name]))
        if name in matrices:
            text, size = matrices[name]
            source = f" (from the intermediate readout at '{config.igl}')" if name in session.igl_layers else ""
            lines.append(f"      feedback matrix {text}, {_bytes(size)}{source}{_reliability(session, name)}")
        lines.append(f"      firing rate {_rate(health, name)}")
    if session.flow.convs:
        lines.append(f"perturbed convolutions, inject='conv' ({len(session.flow.convs)}): noise added to their "
                     "outputs, where the feedback enters:")
        for name in session.flow.convs:
            text, size = matrices[name]
            lines.append(f"  {_synapse(modules, name)}: {per_sample(session, name):,} outputs per sample, "
                         f"feedback matrix {text}, {_bytes(size)}{_reliability(session, name)}")
    kind, site = topo.tap
    if kind == "synapse":
        lines.append(f"readout: {_synapse(modules, site)}")
    else:
        fed = topo.afferent.get(site, [])
        lines.append(f"readout: output neurons '{site}' {type(modules[site]).__name__} ({per_sample(session, site):,} "
                     f"per sample), fed by {', '.join(_synapse(modules, s) for s in fed) or 'no synapse'}; "
                     f"firing rate {_rate(health, site)}")
    if len(session.local_readouts):
        own = sum(p.numel() for p in session.local_readouts.parameters())
        lines.append(f"session readouts (local / igl): {_names(session.local_readouts.keys())}, {own:,} parameters "
                     "(train them: session.parameters(), session.local_loss(y))")
    if topo.norms and session.method.injects_noise():
        lines.append(f"BatchNorm after the noise: {_names(topo.norms)}, running statistics " + (
            f"recomputed without it from the last {session.clean_bn.sequences.maxlen} training sequences "
            "before evaluation and on exit (recompute_bn)" if session.clean_bn is not None else
            "kept with the noise: call opzo.update_bn(model, train_loader) after the block"))
    total = sum(size for _, size in matrices.values())
    lines.append(f"feedback memory: {_bytes(total)} in {len(matrices)} layer(s)" if matrices else
                 f"feedback memory: none (method '{config.method}' keeps no feedback matrices)")
    lines.append(f"steps trained: {session.steps:,}")
    lines.append(_health_lines(health))
    return "\n".join(lines)


def _reliability(session, name: str) -> str:
    """OPZO's reliability ``rho`` of the layer's M (``feedback_scale="jacobian"``): the share of its
    feedback it sends, low while M is mostly noise."""
    entry = reliabilities(session).get(name)
    return "" if entry is None else f", reliability {float(entry[1]):.2f} (share of its feedback sent)"


def _rate(health: Health, name: str) -> str:
    stats = health.neurons.get(name)
    if not health.enabled:
        return "n/a (health checks off)"
    if stats is None:
        return "n/a (infinite threshold)" if name in health.session.topology.neurons else "n/a"
    if stats.rate is None:
        return "not sampled yet"
    silent = f", silent for {stats.silent_for} steps" if stats.silent_for else ""
    return f"{stats.rate:.3f} ({stats.samples} sampled calls{silent})"


def _health_lines(health: Health) -> str:
    if not health.enabled:
        return "health: checks off"
    parts = [f"health: {health.checks} checks"]
    if health.readout_grad is not None:
        ratios = {p: sum(s.ratio) / len(s.ratio) for p, s in health.weights.items() if s.ratio}
        if ratios:
            parts.append("hidden/readout mean |g| " + ", ".join(f"{p} {r:.1e}" for p, r in ratios.items()))
    text = "; ".join(parts)
    if not health.raised:
        return text + "; no warnings"
    return text + f"; {len(health.raised)} warning(s):\n" + "\n".join(f"  - {m}" for m in health.raised)


def short(session) -> str:
    """The text of ``repr(session)``."""
    config, topo = session.config, session.topology
    head = f"Session(method={config.method!r}, model={type(session.model).__name__}"
    if topo is None:
        return head + f", layers not discovered yet, steps={session.steps})"
    size = sum(s for _, s in _matrix_info(session).values())
    return (head + f", hidden={topo.hidden}, feedback={_bytes(size)}, steps={session.steps}, "
            f"warnings={len(session.health.raised)})")
