"""``method="none"``: no error from the output reaches the hidden layers. Spatial BP is cut as for
every feedback method, no noise is injected and no matrix is kept; the hidden layers learn only
from the session's local readouts (``local=``, which it needs). It is the control that shows what
a method's global feedback adds to local learning."""
from __future__ import annotations

from .base import Feedback


class NoFeedback(Feedback):
    name = "none"

    def signal(self, call, e):
        return [None] * len(call.layers)  # the Tap passes no gradient to the hidden layers
