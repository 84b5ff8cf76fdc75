"""What a session saves and how it is loaded: all or nothing, on the right layers.

:func:`load` refuses a state saved with another method, feedback scale or storage of the feedback
matrices, saying what differs. Layer names are matched to the model's: a state saved from the same
model under a wrapper (``torch.compile``'s ``_orig_mod.``, DDP's ``module.``) is mapped onto it; any
other difference is refused, naming the layers. A refused load leaves the session as it was.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .errors import OpzoError

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DistributedDataParallel / DataParallel


@dataclass
class Deferred:
    """The parts of a loaded state that wait for what they belong to (``session.deferred``)."""

    noise: Optional[dict] = None  # noise generators, until the neurons are known
    local: Optional[dict] = None  # the session readouts' weights, until the readouts exist
    unchecked: Optional[dict] = None  # the whole state, loaded before its layer names could be checked


def session_state(session) -> dict:
    return {
        "method": session.config.method,
        "config": session.config.as_dict(),
        "layout": session.layout,
        "epoch": session.epoch,
        "steps": session.steps,
        "feedback": session.method.state_dict(),
        "igl_feedback": session.igl_method.state_dict() if session.igl_method else None,
        "generators": {d: g.get_state() for d, g in session._generators.items()},
        "noise": {n: r.noise.state_dict() for n, r in _noisy(session).items()} or (session.deferred.noise or {}),
        "seed": session._seed,
        "local": session.local_readouts.state_dict() if len(session.local_readouts) else None,
    }


def _noisy(session) -> dict:
    """Every record with a noise source: the neurons and the convolutions of ``inject="conv"``."""
    return {**session.flow.neurons, **session.flow.convs}


def saved_layout(state: dict) -> Optional[str]:
    """How a state's feedback matrices are stored; for states saved before this was recorded, what
    the matrices show (None: float matrices, dense or one row per channel)."""
    if state.get("layout"):
        return state["layout"]
    matrices = list((state.get("feedback") or {}).get("matrices", {}).values())
    if any(isinstance(m, tuple) for m in matrices):
        return "lowrank"
    if any(m.dtype == torch.bfloat16 for m in matrices):
        return "bf16"
    return None


def check_compatible(session, state: dict) -> None:
    """Refuse a state the session cannot continue, saying which option to change."""
    config = session.config
    if state.get("method") != config.method:
        raise OpzoError(
            f"This session state was saved with method={state.get('method')!r}, but the session "
            f"uses method={config.method!r}; open the session with the same method.")
    saved_scale = state.get("config", {}).get("feedback_scale", "paper")  # older states: the paper's
    if config.method == "opzo" and saved_scale != config.feedback_scale:
        raise OpzoError(
            f"This session state was saved with feedback_scale={saved_scale!r}, but the session uses "
            f"feedback_scale={config.feedback_scale!r}: its M is on another scale. Open the session "
            f"with feedback_scale={saved_scale!r} to resume it.")
    saved_inject = state.get("config", {}).get("inject", "after")
    if config.method in ("opzo", "zo") and (saved_inject == "conv") != (config.inject == "conv"):
        raise OpzoError(
            f"This session state was saved with inject={saved_inject!r}, but the session uses "
            f"inject={config.inject!r}: its feedback belongs to other layers (convolutions or neurons). "
            f"Open the session with inject={saved_inject!r} to resume it.")
    saved, wanted = saved_layout(state), session.layout or config.feedback_matrix
    if saved is None or not (state.get("feedback") or {}).get("matrices"):
        return
    if saved != wanted and not (wanted == "auto" and saved in ("dense", "channel")):
        raise OpzoError(
            f"This session state holds feedback matrices stored as feedback_matrix={saved!r}, but the session "
            f"uses feedback_matrix={wanted!r}; open the session with feedback_matrix={saved!r} to resume it.")


def _layer_names(state: dict) -> set[str]:
    """The neuron names a state refers to."""
    names = set(state.get("noise") or {})
    for part in ("feedback", "igl_feedback"):
        names |= {k.partition("@")[0] for k in ((state.get(part) or {}).get("matrices") or {})}
    return names


def _rename(state: dict, old: str, new: str) -> dict:
    """``state`` with every layer name starting with ``old`` starting with ``new`` instead."""
    def key(k):
        return new + k[len(old):] if isinstance(k, str) and k.startswith(old) else k

    def local_key(k):
        o, n = old.replace(".", "_"), new.replace(".", "_")
        return n + k[len(o):] if k.startswith(o) else k

    out = dict(state)
    for part in ("feedback", "igl_feedback"):
        if state.get(part):
            out[part] = {sub: ({key(k): v for k, v in val.items()} if isinstance(val, dict) and sub != "optimizer" else val)
                         for sub, val in state[part].items()}
    out["noise"] = {key(k): v for k, v in (state.get("noise") or {}).items()}
    if state.get("local") is not None:
        out["local"] = {local_key(k): v for k, v in state["local"].items()}
    return out


def match_layers(state: dict, neurons: list[str]) -> dict:
    """``state`` with its layer names matched to the model's ``neurons``: as saved, or with a
    wrapper's prefix removed or added; else an error naming the layers that differ."""
    saved, wanted = _layer_names(state), set(neurons)
    if not saved or saved <= wanted:
        return state
    for prefix in WRAPPER_PREFIXES:
        if all(n.startswith(prefix) for n in saved) and {n[len(prefix):] for n in saved} <= wanted:
            return _rename(state, prefix, "")
        if {prefix + n for n in saved} <= wanted:
            return _rename(state, "", prefix)
    missing, unknown = sorted(wanted - saved), sorted(saved - wanted)
    raise OpzoError(
        f"This session state was saved for other layers: it has {unknown} that the model does not, and the model "
        f"has {missing} that it lacks. Load it into the model it was saved from (a torch.compile'd or DDP-wrapped "
        "copy is mapped automatically).")


def load(session, state: dict) -> None:
    """Load ``state`` into ``session``, all or nothing."""
    check_compatible(session, state)
    if session.topology is not None:
        state = match_layers(state, list(_noisy(session)))
    backup = session_state(session), replace(session.deferred)
    try:
        _apply(session, state)
    except BaseException:
        _apply(session, backup[0])
        session.deferred = backup[1]
        raise


def _apply(session, state: dict) -> None:
    session._epoch, session.steps, session._seed = state["epoch"], state["steps"], state["seed"]
    session._epoch_set = session._epoch_set or state["epoch"] > 0
    session.method.load_state_dict(state["feedback"])
    if session.igl_method is not None and state.get("igl_feedback") is not None:
        session.igl_method.load_state_dict(state["igl_feedback"])
    session._generators = {}  # a device without a saved state starts again from the seed
    for device, rng in state["generators"].items():
        session._generator(torch.device(device)).set_state(rng)
    session.deferred = Deferred(state["noise"], state.get("local"), state if session.topology is None else None)
    if session.topology is not None:
        load_noise(session)
        session._init_matrices()
        load_local(session)


def adopt(session) -> None:
    """At discovery: match a state loaded before the layers were known to the model's layers."""
    state, session.deferred.unchecked = session.deferred.unchecked, None
    if state is not None:
        matched = match_layers(state, list(_noisy(session)))
        if matched is not state:
            session.method.load_state_dict(matched["feedback"])
            if session.igl_method is not None and matched.get("igl_feedback") is not None:
                session.igl_method.load_state_dict(matched["igl_feedback"])
            session.deferred.noise, session.deferred.local = matched["noise"], matched.get("local")


def load_noise(session) -> None:
    state: Optional[dict] = session.deferred.noise
    records = _noisy(session)
    if state is None or not records:
        return
    for name, noise_state in state.items():
        if name in records:
            records[name].noise.load_state_dict(noise_state)
    session.deferred.noise = None


def load_local(session) -> None:
    if session.deferred.local is not None and len(session.local_readouts):
        session.local_readouts.load_state_dict(session.deferred.local)
        session.deferred.local = None
