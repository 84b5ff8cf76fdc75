"""Credit-assignment methods: one module each. ``METHODS`` maps ``method=`` names to classes."""
from .base import Feedback, Tap, TapCall
from .bp import BP
from .dfa import DFA
from .dkp import DKP
from .opzo import OPZO
from .zo import ZO, LossRecorder

METHODS: dict[str, type[Feedback]] = {m.name: m for m in (BP, OPZO, DFA, DKP, ZO)}

__all__ = ["Feedback", "Tap", "TapCall", "METHODS", "LossRecorder", "BP", "OPZO", "DFA", "DKP", "ZO"]
