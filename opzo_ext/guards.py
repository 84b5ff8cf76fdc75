"""Guards against misusing a session: each turns a silent failure, or a torch error that does not
say why, into a message naming the problem and the fix, or makes the case work.

* :func:`forgotten_with`: a session created but never opened (``opzo.train(model)`` without ``with``);
* :func:`warn_eval`: a model in eval mode with gradients inside a session (plain BPTT);
* :func:`check_input`: an empty batch;
* :func:`check_join`: ``DistributedDataParallel.join()`` with a method whose steps need every rank;
* :func:`check_schedule`: an alpha schedule never advanced;
* :class:`OptimizerGroup`: the session's readouts are in the user's optimizer only while it is open.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Iterable, Optional

import torch
from torch import nn

from .attachment import _Hook
from .distributed import in_uneven_inputs_join, world
from .errors import OpzoError


def forgotten_with(session):
    """A hook on ``session.model`` that warns once when the model trains while the session was never
    opened; :meth:`Session.open` removes it (so does the session's garbage collection)."""
    ref, warned = weakref.ref(session), []

    def hook(model, args):
        s = ref()
        if s is not None and not s._open and s.active(model) and not warned:
            warned.append(True)
            warnings.warn(
                f"opzo.train() created a session on {type(model).__name__} that is not open, so this "
                "training step is plain BPTT (and a second backward() fails with 'backward through the graph "
                "a second time'). Train inside `with opzo.train(model, ...) as session:`, or call "
                "session.open() first (and session.close() after).", stacklevel=3)
        return None

    handle = session.model.register_forward_pre_hook(_Hook(hook))
    weakref.finalize(session, handle.remove)
    return handle


def warn_eval(model: nn.Module) -> None:
    """The model runs in eval mode with gradients inside a session (the session is inactive)."""
    warnings.warn(
        f"{type(model).__name__} runs in eval mode with gradients enabled inside an opzo_ext "
        "session: the session is inactive (no noise, no feedback, no state detaching), so a "
        "backward() here is plain BPTT. Call model.train() before training steps, or wrap "
        "evaluation in torch.no_grad().", stacklevel=4)


def check_input(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Refuse an empty batch (no sample to perturb, average or feed back to): the model's first
    tensor argument, its input, has no entries."""
    x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if x is not None and x.dim() >= 1 and x.numel() == 0:
        raise OpzoError(
            f"{type(model).__name__} got an empty input of shape {tuple(x.shape)} in a training step: a "
            "batch needs at least one sample. Skip empty batches (e.g. DataLoader(..., drop_last=True)).")


def check_join(session) -> None:
    """Refuse ``DistributedDataParallel.join()`` when every step runs collectives: a rank out of
    batches would leave the others waiting (NCCL) or mismatch their collectives (gloo)."""
    if world()[1] > 1 and (session.method.exchanges_per_step() or len(session.local_readouts)) \
            and in_uneven_inputs_join():
        raise OpzoError(
            f"DistributedDataParallel.join() (uneven inputs) cannot run a method={session.config.method!r} "
            "session: every training step exchanges the feedback statistics (or the session's readout "
            "gradients) between all ranks, which a rank that has run out of batches cannot take part in. "
            "Give every rank the same number of batches (DistributedSampler(..., drop_last=True) and a "
            "DataLoader with drop_last=True) and train without join().")


def check_schedule(session) -> None:
    """On close: an alpha schedule whose epoch was never set nor advanced during training."""
    alpha = session.config.alpha
    epochs = getattr(alpha, "epochs", None)
    if callable(alpha) and not session._epoch_set and session.steps > 0 and epochs != 1:
        warnings.warn(
            f"alpha follows a schedule, but session.epoch was never advanced: it stayed 0 for all "
            f"{session.steps} training steps, so alpha was {session.alpha:g} throughout. Call "
            "session.next_epoch() at the end of each epoch (or set session.epoch = epoch at its start).",
            stacklevel=3)


class OptimizerGroup:
    """The session's own parameters as one parameter group of the user's optimizer, added when the
    session opens and taken out (with their optimizer state, kept for the next open) when it closes,
    so that the optimizer's ``state_dict()`` after the session fits the model alone."""

    def __init__(self, optimizer: Optional[torch.optim.Optimizer]):
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = []
        self.state: dict = {}

    def join(self, params: Iterable[torch.Tensor]) -> None:
        self.params = list(params)
        if self.optimizer is None or not self.params:
            return
        self.optimizer.add_param_group({"params": self.params})
        self.optimizer.state.update(self.state)

    def leave(self) -> None:
        if self.optimizer is None or not self.params:
            return
        ours = {id(p) for p in self.params}
        groups = self.optimizer.param_groups
        groups[:] = [g for g in groups if not any(id(p) in ours for p in g["params"])]
        self.state = {p: self.optimizer.state.pop(p) for p in self.params if p in self.optimizer.state}
        self.params = []
