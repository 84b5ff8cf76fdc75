"""Options that add to the data flow of a step (:mod:`opzo_ext.flow`) without changing it:

* :class:`LocalLearning` (``local=``, appendix C.1): a Linear readout per hidden layer, trained by
  its own loss (``session.local_loss``);
* :class:`IntermediateReadout` (``igl=``): a readout after a hidden layer whose error is the
  output error of the layers before it;
* :class:`Lags` (``lags=True``, appendix E.2): the output of every step feeds back to the spikes of
  every earlier step of the sequence, one M per lag.

Each sees every neuron output (:meth:`Extension.on_neuron_output`) and may take over the readout
(:meth:`Extension.on_readout`); readouts it needs are created by the session from
:meth:`Extension.readouts`.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import OpzoError
from .feedback import TapCall, TapToken, method_class, tap


class Extension:
    def __init__(self, session):
        self.session = session

    def readouts(self, shapes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Readouts to create, key -> ``(inputs, outputs)``, from each hidden layer's ``[n_l, m]``."""
        return {}

    def on_neuron_output(self, rec, output, step) -> None:
        """After neuron ``rec`` ran (``output`` as it returned it; ``step``: the
        :class:`~opzo_ext.flow.LayerStep` of a hidden layer, else None)."""

    def on_readout(self, flow, o: torch.Tensor, layers: list[str], pre) -> Optional[torch.Tensor]:
        """Take over the readout of ``o`` for the pending ``layers`` (None: the usual Tap)."""
        return None

    def _read(self, key: str, rec, output) -> torch.Tensor:
        """The readout ``key`` applied to ``rec``'s spikes, ``[T*B, outputs]``."""
        spikes = rec.adapter.spike(output).reshape(rec.steps * rec.batch, -1)
        return self.session.local_readouts[key](spikes)


class LocalLearning(Extension):
    """Every hidden layer's spikes feed a readout whose loss, scaled by ``local``, trains it."""

    def readouts(self, shapes):
        return {name.replace(".", "_"): shapes[name] for name in self.session.topology.hidden}

    def on_neuron_output(self, rec, output, step):
        if rec.name in self.session.topology.hidden:
            r = self._read(rec.name.replace(".", "_"), rec, output)
            self.session.local_outputs.setdefault(rec.name, []).append((r, rec.steps, self.session.config.local_scale))


class IntermediateReadout(Extension):
    """The readout after layer ``igl`` is the output for the layers before it: they get the
    method's feedback from its error (their own matrices, in :attr:`method`)."""

    def __init__(self, session):
        super().__init__(session)
        config = session.config
        self.name = config.igl
        self.method = method_class(config)(config, session._generator) if session.method.uses_tap() else None

    @property
    def layers(self) -> list[str]:
        """Hidden layers before the intermediate readout (none without its own feedback)."""
        if self.method is None:
            return []
        hidden = self.session.topology.hidden
        return hidden[:hidden.index(self.name)]

    def readouts(self, shapes):
        hidden = self.session.topology.hidden
        if self.name not in hidden[1:]:
            raise OpzoError(f"igl={self.name!r} is not a hidden neuron layer after the first one; choose one of "
                            f"{hidden[1:]}.")
        return {"igl": shapes[self.name]}

    def on_neuron_output(self, rec, output, step):
        if rec.name == self.name:
            r = self._read("igl", rec, output)
            if self.method is not None:
                r = self.session.flow.feedback_tap(self.method, r, self.layers, rec)
            self.session.local_outputs.setdefault("igl", []).append((r, rec.steps, 1.0))


class Lags(Extension):
    """Keeps every hidden layer's spikes and noise of the sequence; at the readout, one Tap entry per
    (layer, lag): this step's output feeds back to the spikes of every earlier step."""

    def __init__(self, session):
        super().__init__(session)
        self.history: dict[str, list[tuple[torch.Tensor, Optional[torch.Tensor]]]] = {}
        self.tokens: list[TapToken] = []  # the Taps of this sequence

    def on_neuron_output(self, rec, output, step):
        if step is None:
            return
        if rec.steps != 1:
            raise OpzoError(f"lags=True needs single-step calls; '{rec.name}' ran {rec.steps} steps in one "
                            "call. Use step_mode 's' and a loop over time.")
        if rec.fresh:
            self.history[rec.name], self.tokens = [], []
        self.history.setdefault(rec.name, []).append((step.spike, step.z))

    def on_readout(self, flow, o, layers, pre):
        if any(token.done for token in self.tokens):
            raise OpzoError(
                "lags=True feeds the output of every step back to the spikes of all earlier steps of the "
                "sequence, so it needs one backward per sequence, after the time loop (sum the losses of the "
                "steps, then call backward() once); a backward per step needs lags=False. If a new sequence "
                "started, reset the network first (functional.reset_net, snntorch.utils.reset or session.reset()).")
        entries, spikes, z = [], [], []
        for name in layers:
            flow.pending.pop(name)
            history = self.history[name]
            for k in range(len(history)):
                entries.append((name, k))
                spikes.append(history[-1 - k][0])
                z.append(history[-1 - k][1])
        method, alpha = self.session.method, self.session.alpha
        batch, entries = pre.batch if pre is not None else o.shape[0], tuple(entries)
        call = TapCall(method, entries, alpha, 1, batch, z=tuple(t.reshape(1, batch, -1) for t in z))
        ctx = method.step(call, o.detach().reshape(1, batch, -1))
        self.tokens.append(TapToken())
        return tap(o, TapCall(method, entries, alpha, 1, batch, ctx=ctx), spikes, self.tokens[-1])


def readout_loss(outputs: dict[str, list], target: torch.Tensor, loss_fn) -> torch.Tensor:
    """``sum scale * loss_fn(r_t, target)`` over the recorded readout outputs ``(r, steps, scale)``
    and their time steps ``t``."""
    total = 0.0
    for recorded in outputs.values():
        for r, steps, scale in recorded:
            for r_t in r.reshape(steps, -1, r.shape[-1]):
                total = total + scale * loss_fn(r_t, target)
    return total


def extensions_for(session) -> list[Extension]:
    """The extensions ``session.config`` asks for, in the order their readouts are created."""
    config, out = session.config, []
    if config.local:
        out.append(LocalLearning(session))
    if config.igl is not None:
        out.append(IntermediateReadout(session))
    if config.lags:
        out.append(Lags(session))
    return out
