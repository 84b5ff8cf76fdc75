"""``method="dkp"``: direct Kolen-Pollack (Webster et al. 2020, as adapted to SNNs in appendix
C.3.2 of the paper): DFA whose feedback matrices ``B_l`` ``[n_l, m]`` are learned.

``B_l`` starts at zero and is a parameter of its own Adam optimizer (``dkp_lr``,
``dkp_weight_decay``; the paper optimises the feedback weights with Adam like the network). Every
backward through the readout adds to its gradient

    dB_l += sum_t a_l[t]^T e[t]        (a_l: the trace of layer l's own spikes, e = dL/do)

i.e. the transpose of what the readout's weight gradient would be if layer ``l`` fed it, which
keeps the direction of feedback and forward updates the same; Adam takes one step per optimizer
step of the network (:meth:`DKP.update_feedback`, after the user's ``optimizer.step()`` when the
session knows the optimizer, else at the start of the next sequence). Hidden layers receive
``g_l = e @ B_l^T`` with ``B_l`` as it is during the batch.
"""
from __future__ import annotations

import torch

from ..distributed import all_reduce_sum
from ..traces import TraceState
from .base import Feedback
from .storage import Dense
from .tap import matrix_signal


class DKP(Feedback):
    name = "dkp"

    def __init__(self, config, generator_for):
        super().__init__(config, generator_for)
        self.storage = Dense(master_float32=True)  # half-precision models: Adam's eps underflows in float16
        self.optimizer = None

    def activity_trace(self, lam):
        return TraceState(lam)

    def exchanges_per_step(self) -> bool:
        return True

    def new_matrix(self, shape, like):
        return like.new_zeros(shape, dtype=self.storage.dtype(like))

    def init_matrices(self, shapes, like):
        super().init_matrices(shapes, like)
        params = list(self.matrices.values())
        state = self.optimizer.state_dict() if self.optimizer is not None else None
        self.optimizer = torch.optim.Adam(params, lr=self.config.dkp_lr, weight_decay=self.config.dkp_weight_decay)
        if state is not None and state["state"]:
            self.optimizer.load_state_dict(state)

    def step(self, call, o, in_place=False):
        return [[self.matrices[name]] for name in call.layers], call.activity

    def signal(self, call, e):
        matrices, activity = call.ctx
        e_b = e.to(matrices[0][0].dtype) if matrices else e  # B's dtype (float32 for half models)
        signals = [g.to(e.dtype) for g in matrix_signal(matrices, e_b)]
        with torch.no_grad():
            for name, a in zip(call.layers, activity):
                b = self.matrices[name]
                grad = all_reduce_sum(torch.einsum("tbn,tbm->nm", a.to(e_b.dtype), e_b))
                b.grad = grad if b.grad is None else b.grad.add_(grad)
        return signals

    @torch.no_grad()
    def update_feedback(self) -> None:
        """One Adam step on every ``B_l`` with the gradient accumulated since the last one."""
        if self.optimizer is not None and any(b.grad is not None for b in self.matrices.values()):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict() if self.optimizer is not None else None
        state["grads"] = {k: b.grad.clone() for k, b in self.matrices.items() if b.grad is not None}  # not yet stepped
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("optimizer") is not None:
            params = list(self.matrices.values())
            self.optimizer = torch.optim.Adam(params, lr=self.config.dkp_lr, weight_decay=self.config.dkp_weight_decay)
            self.optimizer.load_state_dict(state["optimizer"])
        for k, grad in state.get("grads", {}).items():
            self.matrices[k].grad = grad.clone()
