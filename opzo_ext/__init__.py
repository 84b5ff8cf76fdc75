"""opzo_ext: train snnTorch and SpikingJelly SNNs without spatial backpropagation.

    import opzo_ext as opzo
    with opzo.train(model, method="opzo"):   # or "bp", "dfa", "zo"
        ...  # your own training loop

See :func:`train` and :class:`TrainConfig`.

Importing this package needs only torch. The neurons come from snnTorch or SpikingJelly, each
recognised when it is installed: ``pip install 'opzo_ext[snntorch]'`` or ``[spikingjelly]``;
``[data]`` adds :mod:`opzo_ext.data`, ``[all]`` everything.
"""
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import diagnostics
from .batchnorm import update_bn
from .config import METHOD_NAMES, TrainConfig
from .deploy import noisy
from .errors import ConfigError, HealthWarning, OpzoError, UnsupportedModelError
from .noise import linear_alpha
from .session import Session, train

__all__ = ["diagnostics", "train", "Session", "TrainConfig", "METHOD_NAMES", "linear_alpha", "noisy", "update_bn",
           "OpzoError", "ConfigError", "UnsupportedModelError", "HealthWarning"]

try:  # the version is written once, in pyproject.toml; installing puts it in the metadata
    __version__ = _version("opzo_ext")
except _PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
