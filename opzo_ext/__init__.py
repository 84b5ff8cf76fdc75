"""opzo_ext: train snnTorch and SpikingJelly SNNs without spatial backpropagation.

    import opzo_ext as opzo
    with opzo.train(model, method="opzo"):   # or "bp", "dfa", "zo"
        ...  # your own training loop

See :func:`train` and :class:`TrainConfig`.
"""
from . import diagnostics
from .config import METHOD_NAMES, TrainConfig
from .deploy import noisy
from .errors import ConfigError, HealthWarning, OpzoError, UnsupportedModelError
from .noise import linear_alpha
from .session import Session, train

__all__ = ["diagnostics", "train", "Session", "TrainConfig", "METHOD_NAMES", "linear_alpha", "noisy",
           "OpzoError", "ConfigError", "UnsupportedModelError", "HealthWarning"]
__version__ = "0.1.0"
