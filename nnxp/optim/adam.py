"""Adam and its relatives: bias-corrected moment estimates (Adam, AdamW, Adamax, NAdam)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..kernels import optimizers as k
from ..validation import check_betas, check_flag, check_nonneg
from . import base
from .base import Optimizer, hyperparameter


@dataclass(frozen=True)
class _AdamFamilyHyperparameters(base.Hyperparameters):
    """The options the whole family shares, in signature order: γ, (β₁, β₂), ε, λ."""

    lr: float = hyperparameter(1e-3, check_nonneg)
    betas: tuple[float, float] = hyperparameter((0.9, 0.999), check_betas)
    eps: float = hyperparameter(1e-8, check_nonneg)
    weight_decay: float = hyperparameter(0.0, check_nonneg)


class Adam(Optimizer):
    """Adam: bias-corrected first and second moment estimates.

    torch.optim.Adam, defaults included. With ``g = ∇f(θ) + λθ`` and step count t::

        m ← β₁ m + (1 − β₁) g
        v ← β₂ v + (1 − β₂) g²
        v̂ ← max(v̂, v)  (amsgrad)   or   v̂ = v
        θ ← θ − γ/(1 − β₁ᵗ) · m / (√v̂ / √(1 − β₂ᵗ) + ε)

    Kingma & Ba (2015), ICLR; AMSGrad: Reddi, Kale & Kumar (2018), ICLR. The recommended (and
    default) β₂ is 0.999. ε is added after the bias-corrected square root; Keras' formulation
    adds an ε that is not bias-corrected (default 1e-7), so the two differ slightly early in
    training. ``weight_decay`` here is the coupled L2 penalty; use :class:`AdamW` for decoupled
    decay. See :func:`nnxp.kernels.optimizers.adam_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0), added to the gradient.
    amsgrad
        Keep the running maximum of the second moment.
    """

    @dataclass(frozen=True)
    class Hyperparameters(_AdamFamilyHyperparameters):
        amsgrad: bool = hyperparameter(False, check_flag)

    host_reads = ("step",)  # the bias corrections 1 − β₁ᵗ, 1 − β₂ᵗ
    step_scalars = staticmethod(k.adam_scalars)  # ... which a recorded step reads from a table
    State = k.AdamState
    init_state = staticmethod(k.adam_init)  # the kernel adds max_exp_avg_sq if amsgrad comes later
    update = staticmethod(k.adam_update)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, ``θ ← θ(1 − γλ)`` before the Adam step.

    torch.optim.AdamW, defaults included (note ``weight_decay=1e-2``, unlike Adam's 0). The decay
    never enters the moment estimates, so it is not divided by √v̂ (Loshchilov & Hutter, 2019,
    "Decoupled weight decay regularization", ICLR). Keras' AdamW uses weight_decay = 0.004 by
    default. Everything else is :class:`Adam`.

    Parameters
    ----------
    lr, betas, eps, amsgrad
        As in :class:`Adam`.
    weight_decay
        λ (>= 0), default 1e-2, multiplied by the *current* learning rate each step.
    """

    @dataclass(frozen=True)
    class Hyperparameters(Adam.Hyperparameters):
        weight_decay: float = hyperparameter(1e-2, check_nonneg)

    update = staticmethod(k.adamw_update)  # type: ignore[assignment]  # Adam's, decoupled


class Adamax(Optimizer):
    """Adamax: Adam with an infinity-norm second moment.

    torch.optim.Adamax, defaults included. With ``g = ∇f(θ) + λθ``::

        m ← β₁ m + (1 − β₁) g
        u ← max(β₂ u, |g| + ε)
        θ ← θ − γ/(1 − β₁ᵗ) · m / u

    Kingma & Ba (2015), section 7.1. torch (and this) add ε inside the max; Keras adds it to the
    denominator. See :func:`nnxp.kernels.optimizers.adamax_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 2e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0).
    """

    @dataclass(frozen=True)
    class Hyperparameters(_AdamFamilyHyperparameters):
        lr: float = hyperparameter(2e-3, check_nonneg)

    host_reads = ("step",)  # the bias correction 1 − β₁ᵗ
    step_scalars = staticmethod(k.adamax_scalars)
    State = k.AdamaxState
    init_state = staticmethod(k.adamax_init)
    update = staticmethod(k.adamax_update)


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum and Dozat's warming momentum schedule.

    torch.optim.NAdam, defaults included. With ``μ_t = β₁(1 − ½·0.96^{tψ})`` and
    ``Π_t = μ_1 ⋯ μ_t``::

        m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
        s = √(v / (1 − β₂ᵗ)) + ε
        θ ← θ − γ(1 − μ_t)/(1 − Π_t) · g/s − γ μ_{t+1}/(1 − Π_t μ_{t+1}) · m/s

    Dozat (2016), "Incorporating Nesterov momentum into Adam", ICLR workshop. Keras' Nadam fixes
    ψ = 0.004 and uses ε = 1e-7. See :func:`nnxp.kernels.optimizers.nadam_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 2e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0): L2 added to the gradient, or decoupled (``θ ← θ(1 − γλ)``) with
        ``decoupled_weight_decay=True`` (torch's NAdamW form).
    momentum_decay
        ψ (>= 0), default 4e-3.
    decoupled_weight_decay
        Decay the parameters directly instead of adding λθ to the gradient.
    """

    @dataclass(frozen=True)
    class Hyperparameters(_AdamFamilyHyperparameters):
        lr: float = hyperparameter(2e-3, check_nonneg)
        momentum_decay: float = hyperparameter(4e-3, check_nonneg)
        decoupled_weight_decay: bool = hyperparameter(False, check_flag)

    host_reads = ("step", "mu_product")  # bias correction and momentum schedule
    table_reads = ("step", "mu_product")  # ... which a recorded step reads from a table
    step_scalars = staticmethod(k.nadam_scalars)
    State = k.NAdamState
    init_state = staticmethod(k.nadam_init)
    update = staticmethod(k.nadam_update)

    @classmethod
    def step_scalar_rows(cls, record: Any, count: int,
                         options: dict[str, Any]) -> list[tuple[float, ...]]:
        """The numbers of the ``count`` steps after ``record``'s, Π carried from row to row
        as the steps would carry it."""
        rows: list[tuple[float, ...]] = []
        product = record.mu_product
        for j in range(count):
            row, product = k.nadam_scalars(record.step + 1 + j, product, **options)
            rows.append(row)
        return rows

    @staticmethod
    def advance_state(record: Any, steps: int, options: dict[str, Any]) -> None:
        """Π moved on by ``steps`` steps, multiplied in the order the steps multiply it (so the
        same float); taken back (``steps < 0``) by multiplying up again from 1."""
        if steps < 0:
            NAdam.rewind_state(record, options)
            return
        beta1, psi = options["betas"][0], options["momentum_decay"]
        for t in range(record.step - steps + 1, record.step + 1):
            record.mu_product *= beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))

    @staticmethod
    def rewind_state(record: Any, options: dict[str, Any]) -> None:
        """Π_t for the rewound step, multiplied up in the order the steps did it."""
        record.mu_product = k.nadam_mu_product(record.step, options["betas"][0],
                                               options["momentum_decay"])

