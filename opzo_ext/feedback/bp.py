"""``method="bp"``: online spatial backpropagation with traces (OTTT). No Tap: autograd carries
the error layer by layer; only the cut through time and the traces differ from plain BP."""
from .base import Feedback


class BP(Feedback):
    name = "bp"

    def uses_tap(self) -> bool:
        return False
