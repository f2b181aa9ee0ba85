"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

from dataclasses import dataclass

from ..kernels import optimizers as k
from ..validation import check_flag, check_nonneg
from . import base
from .base import Optimizer, hyperparameter


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    torch.optim.SGD, defaults included (lr = 1e-3). With ``g = ∇f(θ) + λθ``::

        b ← g                      on the first step (a copy; no dampening)
        b ← μ b + (1 − τ) g        afterwards
        d = g + μ b  (nesterov)    or    d = b
        θ ← θ − γ d

    and ``θ ← θ − γ g`` without momentum. Batch, mini-batch and stochastic gradient descent are
    this same optimizer driven with different batch sizes by ``fit(batch_size=...)``. Keras puts
    the learning rate inside the momentum buffer (``v ← μv − γg; θ ← θ + v``), which differs
    from this form when the learning rate changes. Polyak (1964) for momentum; Sutskever et al.
    (2013) for the Nesterov form. See :func:`nnxp.kernels.optimizers.sgd_momentum_update`.

    Parameters
    ----------
    lr
        Learning rate γ (>= 0).
    momentum
        μ >= 0.
    dampening
        τ, the fraction of the gradient held back from the buffer (>= 0).
    weight_decay
        λ >= 0, the L2 penalty added to the gradient.
    nesterov
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    """

    @dataclass(frozen=True)
    class Hyperparameters(base.Hyperparameters):
        lr: float = hyperparameter(1e-3, check_nonneg)
        momentum: float = hyperparameter(0.0, check_nonneg)
        dampening: float = hyperparameter(0.0, check_nonneg)
        weight_decay: float = hyperparameter(0.0, check_nonneg)
        nesterov: bool = hyperparameter(False, check_flag)

        def validate(self, owner: str) -> None:
            if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
                raise ValueError(f"{owner}: nesterov=True needs momentum > 0 and dampening = 0, "
                                 f"got momentum={self.momentum!r}, dampening={self.dampening!r}")

    host_reads = ()  # ``step`` is only counted; the buffer's first step runs eagerly
    State = k.SGDState
    init_state = staticmethod(k.sgd_init)
    update = staticmethod(k.sgd_momentum_update)

