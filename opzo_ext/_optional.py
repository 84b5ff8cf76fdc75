"""Optional dependencies: which extra of ``opzo_ext`` installs each one, and a clear error without it.

The core (``opzo_ext.train``, ``TrainConfig``, ``diagnostics``, ``noisy``) needs only torch. The
library adapters look for snnTorch and SpikingJelly themselves and skip a library that is missing;
the parts that cannot work without a package (``opzo_ext.models``, ``opzo_ext.data``, the commands)
call :func:`require`, which names the extra to install.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: top-level module -> (distribution on PyPI, extra of opzo_ext that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "snntorch": ("snntorch", "snntorch"),
    "spikingjelly": ("spikingjelly", "spikingjelly"),
    "numpy": ("numpy", "data"),
    "torchvision": ("torchvision", "data"),
    "tonic": ("tonic", "data"),
    "aedat": ("aedat", "data"),
    "tqdm": ("tqdm", "data"),
}


class MissingDependencyError(ImportError):
    """An optional dependency of ``opzo_ext`` is not installed; the message names the extra."""


def missing(module: str, purpose: str) -> MissingDependencyError:
    """The error for ``purpose`` needing ``module`` (a dotted name is fine)."""
    top = module.split(".")[0]
    dist, extra = EXTRAS.get(top, (top, "all"))
    return MissingDependencyError(
        f"{purpose} needs {dist}, which is not installed: pip install 'opzo_ext[{extra}]' "
        f"(or 'opzo_ext[all]' for every optional library)",
        name=top,
    )


def require(module: str, purpose: str) -> ModuleType:
    """Import and return ``module``; without its package, raise :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a missing optional package itself is ours to explain; anything else (a package
        # that is there but broken, one of its own dependencies) propagates unchanged.
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise missing(module, purpose) from exc


def check(module: str, purpose: str) -> None:
    """Raise :class:`MissingDependencyError` unless the top-level ``module`` can be found (it is
    not imported: for a package that is imported later, where it is used)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise missing(module, purpose)
