"""Load OTTT checkpoints and plain state dicts, with a report of what did not fit.

OTTT's training script saves ``{'net': state_dict, 'optimizer': ..., 'lr_scheduler': ...,
'epoch': ..., 'max_test_acc': ...}``. Its parameter names are those of
:mod:`opzo_ext.models.nf_resnet` except for two decorations, which are removed:

* ``module.`` prefixes (a model saved from ``DistributedDataParallel``; also ``_orig_mod.`` from
  ``torch.compile``);
* ``.op.`` components (``layer1.0.conv1.op.weight``, ``layer2.0.downsample.op.gain``), which appear
  when OTTT wraps its convolutions for ``grad_with_rate=True``. A name is only rewritten when the
  model does not have it as it is.

Every tensor is checked against the model's ``state_dict()`` before anything is copied:
``strict=True`` raises :class:`CheckpointError` listing the missing entries, the unexpected entries
and the shape mismatches (and leaves the model untouched); ``strict=False`` loads every entry that
fits and returns the :class:`LoadReport`.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn

from ..errors import OpzoError

_PREFIXES = ("module.", "_orig_mod.")
_OP = re.compile(r"(^|\.)op\.")


class CheckpointError(OpzoError):
    """A checkpoint does not fit the model (the message lists every difference), or cannot be read."""


@dataclass
class LoadReport:
    """What :func:`load_state_dict_report` did.

    Attributes:
        loaded: model entries copied from the checkpoint.
        missing: model entries the checkpoint does not have.
        unexpected: checkpoint entries (their names in the file) the model does not have.
        mismatched: ``(model name, checkpoint shape, model shape)`` for entries of different shape.
        renamed: checkpoint name -> model name, for the names that were rewritten.
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def as_dict(self) -> dict[str, Any]:
        return {"loaded": list(self.loaded), "missing": list(self.missing), "unexpected": list(self.unexpected),
                "mismatched": list(self.mismatched), "renamed": dict(self.renamed)}

    def __str__(self) -> str:
        lines = [f"{len(self.loaded)} entries loaded"]
        if self.missing:
            lines.append(f"missing in the checkpoint ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected (not in the model) ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        if self.mismatched:
            lines.append(f"shape mismatches ({len(self.mismatched)}): " + ", ".join(
                f"{n}: checkpoint {list(a)} vs model {list(b)}" for n, a, b in self.mismatched))
        return "\n".join(lines)


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _model_name(key: str, model_keys: Mapping) -> str:
    """The model entry a checkpoint key stands for (the key itself when nothing fits better)."""
    if key in model_keys:
        return key
    name = _strip_prefixes(key)
    if name in model_keys:
        return name
    no_op = _OP.sub(r"\1", name)
    return no_op if no_op in model_keys else key


def load_state_dict_report(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> LoadReport:
    """Load ``state_dict`` (OTTT names, DDP prefixes or plain names, e.g. a SpikingJelly zoo model's
    ``state_dict()``) into ``model`` after checking every name and shape.

    ``strict=True``: raise :class:`CheckpointError` listing every missing entry, unexpected entry
    and shape mismatch, without changing the model. ``strict=False``: load what fits and return
    the :class:`LoadReport` (also returned on success with ``strict=True``).
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    own = model.state_dict()
    report, fitting, taken = LoadReport(), {}, set()
    for key, value in state_dict.items():
        name = _model_name(key, own)
        if name not in own or name in taken:
            report.unexpected.append(key)
            continue
        taken.add(name)
        if name != key:
            report.renamed[key] = name
        target = own[name]
        if isinstance(value, torch.Tensor) and isinstance(target, torch.Tensor) and value.shape != target.shape:
            report.mismatched.append((name, tuple(value.shape), tuple(target.shape)))
            continue
        fitting[name] = value
    report.missing = [k for k in own if k not in taken]
    if strict and not report.ok:
        raise CheckpointError(
            f"The checkpoint does not fit {type(model).__name__}; nothing was loaded.\n{report}\n"
            "Pass strict=False to load the entries that fit and get this report back."
        )
    model.load_state_dict(fitting, strict=False)
    report.loaded = list(fitting)
    return report


def _extract_state_dict(obj: Any, source: str) -> Mapping[str, Any]:
    if isinstance(obj, Mapping):
        for key in ("net", "model", "state_dict"):  # OTTT, SpikingJelly's trainer, common practice
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        raise CheckpointError(
            f"{source} holds neither a state dict nor a dict with one under 'net', 'model' or "
            f"'state_dict'; its top-level keys are {sorted(map(str, obj))[:20]}"
        )
    raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict")


def load_ottt_checkpoint(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> LoadReport:
    """Load an OTTT checkpoint (``{'net': state_dict, 'epoch': ..., ...}``), a checkpoint of
    SpikingJelly's trainer (``{'model': ...}``) or a bare state dict from ``path`` into ``model``.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no
    arbitrary unpickling); names are mapped as described in the module docstring; see
    :func:`load_state_dict_report` for ``strict`` and the returned report.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{os.fspath(path)} cannot be read with torch.load(..., weights_only=True): {exc}\n"
            "opzo_ext does not unpickle arbitrary objects. If you trust the file, re-save its "
            "state dict alone: torch.save(torch.load(path, weights_only=False)['net'], new_path)."
        ) from exc
    return load_state_dict_report(model, _extract_state_dict(obj, os.fspath(path)), strict=strict)
