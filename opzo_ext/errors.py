"""Exceptions raised by opzo_ext. Every message names the problem and the fix."""


class OpzoError(RuntimeError):
    """Base class of opzo_ext errors."""


class UnsupportedModelError(OpzoError):
    """The model contains a module opzo_ext cannot train online (named in the message)."""


class ConfigError(OpzoError, ValueError):
    """An option of :class:`opzo_ext.TrainConfig` has an invalid value."""


class HealthWarning(UserWarning):
    """A training session looks unhealthy (a silent layer, feedback or gradients too small to learn
    from); raised once per cause and layer, the message names the layer and the fix."""
