"""Everything a session puts on the user's model, added in one place and removed in one place.

An :class:`Attachment` registers the session's forward hooks and instance overrides (a synapse's
``forward``, a multi-step neuron's ``multi_step_forward``) and :meth:`Attachment.detach` takes every
one of them off, restoring what the instance had before. :func:`inject` is the sequence that puts
a session's data flow (:mod:`opzo_ext.flow`) on the model.

Copies of the model are plain models: ``copy.deepcopy(model)`` (``AveragedModel`` for EMA/SWA
does it) and ``torch.save(model)`` inside a session give a model whose session hooks do nothing
and whose overridden methods are the library's own, so the copy neither trains with, nor holds a
reference to, the session.
"""
from __future__ import annotations

import copy
import types
from typing import Any, Callable, Optional

from torch import nn

from .traces import TraceState, fused_rule


class _Hook:
    """A session hook: calls ``fn`` while attached; in a copy of the model it does nothing."""

    __slots__ = ("fn",)

    def __init__(self, fn: Optional[Callable]):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return None if self.fn is None else self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        return _Hook(None)

    def __reduce__(self):
        return _Hook, (None,)


def _bound(obj: Any, name: str):
    """``obj.name`` as the class defines it, bound to ``obj``."""
    return types.MethodType(getattr(type(obj), name), obj)


class _Override:
    """A session's replacement of ``obj.name``; in a copy of ``obj`` it is what ``obj`` had before."""

    def __init__(self, obj: Any, name: str, fn: Callable, previous: Any):
        self.obj, self.name, self.fn, self.previous = obj, name, fn, previous

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo):
        if self.previous is not _MISSING:
            return copy.deepcopy(self.previous, memo)
        return _bound(memo.get(id(self.obj), self.obj), self.name)

    def __reduce__(self):
        if self.previous is not _MISSING:
            return _identity, (self.previous,)
        return _bound, (self.obj, self.name)


def _identity(x):
    return x


_MISSING = object()


class Attachment:
    """The hooks and overrides of one session on one model."""

    def __init__(self):
        self._removers: list[Callable[[], None]] = []

    @property
    def attached(self) -> bool:
        return bool(self._removers)

    def pre_hook(self, module: nn.Module, fn: Callable) -> None:
        """``fn(module, args, kwargs)`` before ``module.forward``; may return ``(args, kwargs)``."""
        self.add(module.register_forward_pre_hook(_Hook(fn), with_kwargs=True))

    def post_hook(self, module: nn.Module, fn: Callable) -> None:
        """``fn(module, args, output)`` after ``module.forward``; may return a new output."""
        self.add(module.register_forward_hook(_Hook(fn)))

    def override(self, obj: Any, name: str, fn: Callable) -> None:
        """Set ``obj.name = fn`` on the instance until :meth:`detach` puts back what was there."""
        previous = obj.__dict__.get(name, _MISSING)
        setattr(obj, name, _Override(obj, name, fn, previous))

        def restore() -> None:
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                setattr(obj, name, previous)

        self._removers.append(restore)

    def add(self, handle: Any) -> None:
        """Any handle with ``remove()`` (e.g. a tensor hook's), removed with the rest."""
        self._removers.append(handle.remove)

    def detach(self) -> None:
        """Remove everything, last added first (idempotent)."""
        removers, self._removers = self._removers, []
        for remove in reversed(removers):
            remove()


def inject(session, attach: Attachment) -> None:
    """Put ``session``'s per-step hooks on its model (once the layers are known): the neuron
    pre-hooks and hooks, the stepwise loop of multi-step neurons, the hooks of the perturbed
    convolutions (``inject="conv"``), the traced ``forward`` of every
    synapse fed by neurons, the readout hook, the health checks' gradient hooks and, with a known
    optimizer, the update of learned feedback after each of its steps."""
    topology, flow = session.topology, session.flow
    modules = dict(session.model.named_modules())

    def when_active(fn, rec):
        return lambda module, *rest: fn(rec, *rest) if session.active(module) else None

    for rec in flow.neurons.values():
        attach.pre_hook(rec.module, when_active(flow.before, rec))
        attach.post_hook(rec.module, when_active(flow.after, rec))
        if hasattr(rec.adapter, "stepwise"):
            attach.override(rec.module, "multi_step_forward",
                            rec.adapter.stepwise(rec.module, lambda m=rec.module: session.active(m)))
    for site in flow.convs.values():
        attach.post_hook(site.module, when_active(flow.conv, site))
    for name, pres in topology.presynaptic.items():
        if pres and session.config.trace == "trace" and not session.config.lags:
            module, records = modules[name], [flow.neurons[p] for p in pres]
            patched = "forward" in module.__dict__  # someone replaced this instance's forward: honour it
            forward = flow.synapse(module, module.forward, None if patched else fused_rule(module),
                                   TraceState(session.trace_lambda(records[0])), records)
            attach.override(module, "forward", forward)
    kind, name = topology.tap
    if kind == "synapse":
        pres = [flow.neurons[p] for p in topology.presynaptic.get(name, [])]
        attach.post_hook(modules[name], lambda m, a, out: flow.readout(out, pres[0] if pres else flow.last_neuron)
                         if session.active(m) else None)
    for handle in session.health.attach():
        attach.add(handle)
    if session._optimizer is not None:  # learned feedback takes one step per optimizer step
        attach.add(session._optimizer.register_step_post_hook(lambda *args: session.update_feedback()))
