"""Credit-assignment methods: one module each. ``METHODS`` maps ``method=`` names to classes;
:func:`method_class` picks the variant a configuration asks for (lags, M storage)."""
from .base import Feedback
from .tap import LiveTaps, Tap, TapCall, TapToken, tap
from .bp import BP
from .dfa import DFA
from .dkp import DKP
from .opzo import OPZO
from .opzo_bf16 import OPZOBf16
from .opzo_lags import LaggedOPZO
from .opzo_lowrank import OPZOLowRank
from .zo import ZO, LossRecorder

METHODS: dict[str, type[Feedback]] = {m.name: m for m in (BP, OPZO, DFA, DKP, ZO)}


def method_class(config) -> type[Feedback]:
    """The class implementing a :class:`~opzo_ext.TrainConfig`'s ``method`` and M storage."""
    if config.lags:
        return LaggedOPZO
    if config.method == "opzo":
        return {"bf16": OPZOBf16, "lowrank": OPZOLowRank}.get(config.feedback_matrix, OPZO)
    return METHODS[config.method]


__all__ = ["Feedback", "Tap", "TapCall", "LiveTaps", "TapToken", "tap", "METHODS", "method_class", "LossRecorder", "BP", "OPZO", "OPZOBf16",
           "OPZOLowRank", "LaggedOPZO", "DFA", "DKP", "ZO"]
