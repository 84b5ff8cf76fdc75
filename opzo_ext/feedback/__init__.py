"""Credit-assignment methods, one module each (``METHODS`` maps ``method=`` names to classes;
:func:`method_class` picks the lagged OPZO for ``lags=True``); how their matrices are stored is
:mod:`~opzo_ext.feedback.storage`, where feedback enters is :mod:`~opzo_ext.feedback.tap`."""
from .base import Feedback
from .tap import LiveTaps, Tap, TapCall, TapToken, tap
from .bp import BP
from .dfa import DFA
from .dkp import DKP
from .none import NoFeedback
from .opzo import OPZO
from .opzo_lags import LaggedOPZO
from .zo import ZO

METHODS: dict[str, type[Feedback]] = {m.name: m for m in (BP, OPZO, DFA, DKP, ZO, NoFeedback)}


def method_class(config) -> type[Feedback]:
    """The class implementing a :class:`~opzo_ext.TrainConfig`'s ``method``."""
    return LaggedOPZO if config.lags else METHODS[config.method]


__all__ = ["Feedback", "Tap", "TapCall", "LiveTaps", "TapToken", "tap", "METHODS", "method_class",
           "BP", "OPZO", "LaggedOPZO", "DFA", "DKP", "ZO", "NoFeedback"]
