"""Options of a training session, with the paper's defaults (appendix C.3.2)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

from .errors import ConfigError
from .noise import DISTRIBUTIONS, Alpha, LinearAlpha

METHOD_NAMES = ("bp", "opzo", "dfa", "dkp", "zo", "none")
FEEDBACK_MATRICES = ("auto", "dense", "channel", "bf16", "lowrank")  # storage of M (feedback_matrix=)
FEEDBACK_SCALES = ("jacobian", "corrected", "paper")  # what OPZO's M estimates (feedback_scale=)
INJECTION_SITES = ("after", "before", "conv")  # where the noise goes and the feedback enters (inject=)


@dataclass
class TrainConfig:
    """How :func:`opzo_ext.train` assigns credit.

    Attributes:
        method: ``"bp"`` (online BP with traces = OTTT), ``"opzo"`` (momentum feedback M),
            ``"dfa"`` (fixed random feedback B), ``"dkp"`` (feedback B learned by Adam from
            activity x error), ``"zo"`` (single-point zeroth order, loss x z), ``"none"`` (no
            error from the output reaches the hidden layers; needs ``local``: the control for
            what a method's global feedback adds to local learning).
        alpha: noise scale, a float or a function ``epoch -> float``
            (see :func:`opzo_ext.noise.linear_alpha`; the paper decays 0.2 -> 0.01).
        momentum: ``lam`` of ``M <- lam M + (1 - lam) z o~^T``.
        noise: ``"gaussian"``, ``"rademacher"`` or ``"sphere"``.
        inject: where OPZO's and ZO's noise is added and their feedback enters: ``"after"`` the
            neuron (added to its spikes), ``"before"`` (added to its input current, the neuron's
            surrogate derivative kept), or ``"conv"``: added to the output of every hidden
            convolution, the error entering there (the paper's "added to the results after
            convolutional operations", table 4; single-step models whose trainable parameters are
            all convolutions and the readout, e.g. the NF-ResNets). Other methods ignore it.
        antithetic: use ``z`` and ``-z`` on alternate time steps.
        feedback_scale: what OPZO's feedback estimates (:mod:`opzo_ext.feedback.opzo_gain`).

            * ``"jacobian"`` (default): the Jacobian itself, so hidden-layer gradients are on
              online BP's scale, for Adam and SGD alike: the M update is divided by alpha (eq. 6
              as written), the feedback by ``1 - lam^k`` after ``k`` updates (M starts at zero; the
              bias correction of Adam's moments) and shrunk by the estimated reliability of M,
              ``max(0, 1 - noise / |M|^2)``: near 0 while M is mostly noise, then 1;
            * ``"corrected"``: the same without the shrinkage;
            * ``"paper"``: the training runs of the paper (appendix C.3.2): no ``1/alpha`` (unless
              ``scale_by_alpha``), no correction, so the feedback holds ``alpha (1 - lam^k)`` of
              the Jacobian: 0.2% after 1,000 steps at the defaults, below Adam's eps on many
              networks until M has grown.
        scale_by_alpha: with ``feedback_scale="paper"``, divide the M update by alpha (eq. 6 as
            written; the paper keeps it for its gradient-variance analysis). ``"jacobian"``
            always divides by alpha.
        trace: ``"trace"`` (``a_hat = lam a_hat + s``, OTTT) or ``"spike"`` (``a_hat = s``).
        trace_lambda: decay of the traces; None takes each presynaptic neuron's leak.
        seed: seed of the session's noise and DFA matrices; None draws it from torch's global RNG.
        dkp_lr: Adam learning rate of DKP's feedback matrices (one step per optimizer step).
        dkp_weight_decay: Adam weight decay of DKP's feedback matrices.
        local: local learning (appendix C.1): a Linear readout per hidden layer trained by its own
            loss (``session.local_loss(target)``) scaled by this factor; ``True`` means 0.01,
            ``False``/0 turns it off.
        lags: OPZO without temporal truncation (appendix E.2): the output of step ``t`` feeds back
            to every earlier step ``t - k`` through one M per lag ``k``, and each layer's own state
            keeps its path through time (BPTT within the layer; spatial BP stays cut); weight
            gradients use the spikes themselves (no traces). Needs one backward per sequence,
            single-step calls and ``antithetic=False``.
        feedback_matrix: how M (or DFA's B) is stored, for memory:

            * ``"dense"``: float32, one row per neuron, ``[n_l, m]`` (the reference);
            * ``"channel"``: convolutional layers share one row per channel over positions,
              ``[C, m]`` instead of ``[C*H*W, m]``; the estimate averages ``z`` over positions and
              the feedback is broadcast back, then modulated by each neuron's own surrogate
              derivative (OPZO and DFA); it suits readouts after global average pooling, not
              readouts of a flattened map (``docs/results/feedback_memory.md``);
            * ``"bf16"``: dense, stored in bfloat16 with stochastically rounded updates (OPZO);
            * ``"lowrank"``: ``M = A B^T`` of rank ``feedback_rank``, kept by a streaming
              truncated SVD (OPZO);
            * ``"auto"`` (default): dense when it fits under ``max_feedback_gb``, else channel,
              with a warning.
        feedback_rank: the rank of ``feedback_matrix="lowrank"`` (exact while ``m <= rank``).
        max_feedback_gb: refuse to allocate feedback matrices larger than this (None: a quarter of the
            device's memory); the error gives the size per layer.
        health: run the session's health checks (a layer that never spikes, hidden-layer gradients
            far below the readout's or the optimizer's eps, feedback still zero), which warn once
            per cause and layer (:class:`~opzo_ext.HealthWarning`); ``session.summary()`` lists them.
        recompute_bn: for OPZO and ZO, whose noise reaches BatchNorm layers after the first
            hidden layer: recompute their running statistics without the noise from the last
            training sequences (:class:`~opzo_ext.batchnorm.CleanStatistics`) before the model
            is first evaluated after training and when the session closes, so that ``model.eval()``
            is normalised as a network without noise needs. Single-process runs only (with several
            processes, call :func:`opzo_ext.update_bn` after the block). False keeps the noisy
            statistics.
        igl: intermediate global learning: the name of a hidden neuron module whose own readout
            (loss in ``session.local_loss(target)``, weight 1) acts as the output for the layers
            before it: they receive the method's feedback from that readout's error.
    """

    method: str = "opzo"
    alpha: Alpha = 0.2
    momentum: float = 0.99999
    noise: str = "gaussian"
    inject: str = "after"
    antithetic: bool = True
    feedback_scale: str = "jacobian"
    scale_by_alpha: bool = False
    trace: str = "trace"
    trace_lambda: Optional[float] = None
    seed: Optional[int] = None
    dkp_lr: float = 2e-4
    dkp_weight_decay: float = 0.0
    local: Union[bool, float] = False
    igl: Optional[str] = None
    lags: bool = False
    max_feedback_gb: Optional[float] = None
    feedback_matrix: str = "auto"
    feedback_rank: int = 64
    health: bool = True
    recompute_bn: bool = True

    def __post_init__(self) -> None:
        def choice(field: str, value, options) -> None:
            if value not in options:
                raise ConfigError(f"{field}={value!r} is not valid; choose one of {', '.join(map(repr, options))}.")

        choice("method", self.method, METHOD_NAMES)
        choice("noise", self.noise, DISTRIBUTIONS)
        choice("inject", self.inject, INJECTION_SITES)
        choice("trace", self.trace, ("trace", "spike"))
        choice("feedback_matrix", self.feedback_matrix, FEEDBACK_MATRICES)
        choice("feedback_scale", self.feedback_scale, FEEDBACK_SCALES)
        if self.feedback_matrix == "channel" and (self.method not in ("opzo", "dfa") or self.lags):
            raise ConfigError(f"feedback_matrix='channel' is for method 'opzo' (without lags) or 'dfa', not "
                              f"method={self.method!r}, lags={self.lags}.")
        if self.feedback_matrix in ("bf16", "lowrank") and (self.method != "opzo" or self.lags):
            raise ConfigError(f"feedback_matrix={self.feedback_matrix!r} stores OPZO's momentum matrices M; it needs "
                              f"method='opzo' without lags (got method={self.method!r}, lags={self.lags}).")
        if not (isinstance(self.feedback_rank, int) and self.feedback_rank >= 1):
            raise ConfigError(f"feedback_rank={self.feedback_rank!r} must be a positive integer (e.g. 64).")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum={self.momentum!r} must lie in [0, 1) (the paper uses 0.99999).")
        if not callable(self.alpha) and not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ConfigError(f"alpha={self.alpha!r} must be a positive number or a function epoch -> alpha.")
        if self.local is not True and self.local is not False and not (
                isinstance(self.local, (int, float)) and self.local >= 0):
            raise ConfigError(f"local={self.local!r} must be True, False or a non-negative loss scale (e.g. 0.01).")
        if self.method == "none" and not self.local:
            raise ConfigError("method='none' sends no error to the hidden layers, so alone it trains only the "
                              "readout; it is the control for local learning: pass local=True.")
        if self.lags and self.method != "opzo":
            raise ConfigError(f"lags=True is the pseudo-zeroth-order feedback of OPZO; it needs method='opzo', "
                              f"not {self.method!r}.")
        if self.lags and self.antithetic:
            raise ConfigError("lags=True needs independent noise at every step: pass antithetic=False. With "
                              "antithetic pairs (z, -z on consecutive steps) the matrix of lag k would also "
                              "see the noise of lag k - 1 and estimate the difference of two Jacobians.")
        if self.inject == "conv" and (self.local or self.igl or self.lags):
            raise ConfigError("inject='conv' feeds the error to the convolutions' outputs; local learning, igl and "
                              "lags work on neuron layers: use inject='after' or 'before' with them.")
        if self.trace_lambda is not None and not 0.0 <= self.trace_lambda <= 1.0:
            raise ConfigError(f"trace_lambda={self.trace_lambda!r} must lie in [0, 1] (or be None for the neuron's leak).")

    @property
    def local_scale(self) -> float:
        """The factor of the local loss (0 when local learning is off)."""
        return 0.01 if self.local is True else float(self.local or 0.0)

    @property
    def divides_by_alpha(self) -> bool:
        """Whether OPZO's M update is divided by alpha (eq. 6 as written)."""
        return self.feedback_scale != "paper" or self.scale_by_alpha

    def alpha_at(self, epoch: int) -> float:
        value = float(self.alpha(epoch)) if callable(self.alpha) else float(self.alpha)
        if value <= 0:
            raise ConfigError(f"the alpha schedule gave {value} at epoch {epoch}; alpha must stay positive.")
        return value

    def as_dict(self) -> dict:
        """The options as data (a ``linear_alpha`` schedule as its parameters; another function as
        its repr, which cannot be restored)."""
        d = asdict(self)
        if isinstance(self.alpha, LinearAlpha):
            d["alpha"] = {"schedule": "linear_alpha", "start": self.alpha.start, "end": self.alpha.end,
                          "epochs": self.alpha.epochs}
        elif callable(self.alpha):
            d["alpha"] = repr(self.alpha)
        return d
