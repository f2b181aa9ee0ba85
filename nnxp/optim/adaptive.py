"""Per-coordinate adaptive steps without bias correction: Adagrad, RMSprop, Adadelta."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..kernels import optimizers as k
from ..validation import check_flag, check_nonneg, check_unit_interval
from . import base
from .base import Optimizer, hyperparameter


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps shrinking with the accumulated squared gradients.

    torch.optim.Adagrad, defaults included. With ``g = ∇f(θ) + λθ`` and step count t::

        γ_t = γ / (1 + (t − 1) η)
        G  ← G + g²                 (G starts at initial_accumulator_value)
        θ  ← θ − γ_t g / (√G + ε)

    Duchi, Hazan & Singer (2011), JMLR 12. Keras starts G at 0.1 and uses ε = 1e-7; torch starts
    at 0 with ε = 1e-10. See :func:`nnxp.kernels.optimizers.adagrad_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-2.
    lr_decay
        η (>= 0).
    weight_decay
        λ (>= 0), L2 penalty added to the gradient.
    initial_accumulator_value
        Starting value of G (>= 0).
    eps
        ε (>= 0), added outside the square root.
    """

    @dataclass(frozen=True)
    class Hyperparameters(base.Hyperparameters):
        lr: float = hyperparameter(1e-2, check_nonneg)
        lr_decay: float = hyperparameter(0.0, check_nonneg)
        weight_decay: float = hyperparameter(0.0, check_nonneg)
        initial_accumulator_value: float = hyperparameter(0.0, check_nonneg)
        eps: float = hyperparameter(1e-10, check_nonneg)

    host_reads = ("step",)  # the learning-rate decay γ/(1 + (t − 1)η)
    step_scalars = staticmethod(k.adagrad_scalars)
    State = k.AdagradState
    init_state = staticmethod(k.adagrad_init)
    update = staticmethod(k.adagrad_update)

    def reads_host_state(self) -> tuple[str, ...] | None:
        """``step`` only with a learning-rate decay: with ``lr_decay=0`` the step size
        ``γ/(1 + (t − 1)·0)`` is ``γ`` for every ``t``, bit for bit."""
        if all(group["lr_decay"] == 0 for group in self.param_groups):
            return ()
        return super().reads_host_state()


class RMSprop(Optimizer):
    """RMSprop: divide by a running root mean square of the gradients.

    torch.optim.RMSprop, defaults included. With ``g = ∇f(θ) + λθ``::

        v ← α v + (1 − α) g²
        ḡ ← α ḡ + (1 − α) g                     (centered only)
        s = √(v − ḡ²) + ε  (centered)   or   s = √v + ε
        b ← μ b + g / s;  θ ← θ − γ b          (momentum > 0)
        θ ← θ − γ g / s                         (momentum = 0)

    All averages start at zero (no bias correction). Hinton's Coursera lecture 6e (2012);
    centered: Graves (2013), arXiv:1308.0850. Keras defaults to ρ = 0.9, ε = 1e-7; TensorFlow 1 put
    ε inside the square root. See :func:`nnxp.kernels.optimizers.rmsprop_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-2.
    alpha
        α, the smoothing constant (>= 0), default 0.99.
    eps
        ε (>= 0), outside the square root.
    weight_decay
        λ (>= 0).
    momentum
        μ (>= 0).
    centered
        Normalise by an estimate of the variance instead of the raw second moment.
    """

    @dataclass(frozen=True)
    class Hyperparameters(base.Hyperparameters):
        lr: float = hyperparameter(1e-2, check_nonneg)
        alpha: float = hyperparameter(0.99, check_nonneg)
        eps: float = hyperparameter(1e-8, check_nonneg)
        weight_decay: float = hyperparameter(0.0, check_nonneg)
        momentum: float = hyperparameter(0.0, check_nonneg)
        centered: bool = hyperparameter(False, check_flag)

    host_reads = ()
    State = k.RMSpropState
    init_state = staticmethod(k.rmsprop_init)  # the kernel adds a buffer switched on later
    update = staticmethod(k.rmsprop_update)


class Adadelta(Optimizer):
    """Adadelta: steps scaled by the ratio of running RMS of updates and of gradients.

    torch.optim.Adadelta, defaults included. With ``g = ∇f(θ) + λθ``::

        v ← ρ v + (1 − ρ) g²
        Δ = √(u + ε) / √(v + ε) · g
        u ← ρ u + (1 − ρ) Δ²
        θ ← θ − γ Δ

    Zeiler (2012), arXiv:1212.5701 (which has no γ: torch's default γ = 1 recovers it). Keras
    defaults to γ = 1e-3, ρ = 0.95, ε = 1e-7. See :func:`nnxp.kernels.optimizers.adadelta_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1.0.
    rho
        ρ in [0, 1], default 0.9.
    eps
        ε (>= 0), inside both square roots, default 1e-6.
    weight_decay
        λ (>= 0).
    """

    @dataclass(frozen=True)
    class Hyperparameters(base.Hyperparameters):
        lr: float = hyperparameter(1.0, check_nonneg)
        rho: float = hyperparameter(0.9, partial(check_unit_interval, closed=True))
        eps: float = hyperparameter(1e-6, check_nonneg)
        weight_decay: float = hyperparameter(0.0, check_nonneg)

    host_reads = ()
    State = k.AdadeltaState
    init_state = staticmethod(k.adadelta_init)
    update = staticmethod(k.adadelta_update)

