"""Optimizer update kernels: (parameter, gradient, state) → (new parameter, new state).

Every kernel follows ``torch.optim``'s single-tensor update rule for the same optimizer, operation
for operation (where the eps goes, when the bias corrections apply, how a momentum buffer starts),
so a trajectory can be compared with torch's step by step. The objects in :mod:`nnxp.optim` keep
the per-parameter state records and call these functions; the kernels themselves hold nothing.

Conventions shared by every kernel here:

* ``param`` and ``grad`` are arrays of one shape and dtype on one device. ``state`` is the
  optimizer's typed record (``SGDState``, ``AdamState``, ...: a slotted dataclass made by the
  matching ``*_init`` function), holding arrays shaped like ``param``, the Python int ``step`` and
  Python floats where torch keeps a scalar. A buffer that an option switches on (a momentum
  buffer, AMSGrad's maximum) is ``None`` until that option is first used.
* Every kernel returns ``(new_param, new_state)``. ``inplace=False`` (array-api-strict, any
  immutable backend) leaves every input untouched — the parameter, the record and its arrays —
  and returns new arrays in a new record. ``inplace=True`` (numpy, cupy, torch — see
  :func:`nnxp.backend.supports_inplace`) overwrites the buffers of ``param`` and of the state,
  updates the record's fields, and returns the very same objects: nothing is allocated for the
  state (a new record per parameter and step costs a measurable share of a small MLP's step).
  Both paths perform the same floating-point operations in the same order, so they agree bit for
  bit.
  The in-place path updates the buffers with in-place operators (``m *= β₁; m += t``) and
  allocates at most one or two full-size temporaries per parameter, each scaled or shifted in
  place afterwards; ``grad`` is never written (callers read ``layer.grads`` after the step).
* Bias corrections and learning rates are folded into Python scalars wherever the algebra allows
  (Adam: ``γ/(1−β₁ᵗ) · m/(√v/√(1−β₂ᵗ) + ε) = γ√(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε√(1−β₂ᵗ))``), which
  removes a pass over the array; the results differ from torch's only by rounding.
* ``weight_decay`` is the L2 penalty folded into the gradient, ``g ← g + λ θ`` (torch's coupled
  form), except in :func:`adamw_update` and NAdam's ``decoupled_weight_decay``, where the
  parameter shrinks directly, ``θ ← θ (1 − γ λ)``.
* Hyperparameters are Python numbers with the names of the optimizer's options (``betas`` is the
  pair ``(β₁, β₂)``), validated by the optimizer objects, not here.
* ``gate`` (every ``*_update`` kernel that an optimizer uses): ``None`` (the default) or a 0-d
  boolean array on the parameter's device. Where it is false the call leaves the values of
  ``param`` and of the state's arrays as they were, without reading the gate on the host (the
  analogue of the ``found_inf`` argument of torch's fused Adam): each decay factor of a state
  buffer becomes the 0-d select ``where(gate, β, 1)`` and each increment of the parameter is
  multiplied by ``float(gate)``. With ``gate`` true every operation computes what the ungated
  call computes, bit for bit (``x · 1.0`` and ``β`` as a 0-d array of ``x``'s dtype round
  exactly as ``β`` as a Python scalar). Two things the kernel cannot do without a host read are
  left to the caller: ``grad`` must be finite where the gate is false (pass
  :func:`gate_gradient`, which zeroes it), and the Python fields of the record (``step``,
  NAdam's ``mu_product``) advance as on any call; :class:`nnxp.optim.Optimizer` rewinds them
  when the skip becomes known on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..typing import Array
from .scalars import constant

# ----------------------------------------------------------------------------------------------
# Small helpers: one spelling for the in-place and the functional path
# ----------------------------------------------------------------------------------------------


def add_scaled(y: Array, x: Array, b: float, inplace: bool) -> Array:
    """``y + b·x``, written into ``y`` when ``inplace``."""
    if inplace:
        y += b * x
        return y
    return y + b * x


def assign(dst: Array, value: Array, inplace: bool) -> Array:
    """``value``, copied into the buffer of ``dst`` when ``inplace``."""
    if inplace:
        dst[...] = value
        return dst
    return value


def _ema(avg: Array, x: Array, beta: float, inplace: bool, gate: Array | None = None,
         xp: Any = None) -> Array:
    """``β·avg + (1 − β)·x``: one temporary (``x·(1 − β)``) on the in-place path.

    With a ``gate`` (and ``x`` zeroed where it is false) the decay is ``where(gate, β, 1)``."""
    decay = beta if gate is None else _factor(beta, avg, gate, xp)
    if inplace:
        avg *= decay
        t = x * (1 - beta)
        avg += t
        return avg
    return avg * decay + x * (1 - beta)


def _ema_sq(avg: Array, x: Array, beta: float, inplace: bool, gate: Array | None = None,
            xp: Any = None) -> Array:
    """``β·avg + (1 − β)·x²``: one temporary (``x²``, scaled in place) on the in-place path."""
    decay = beta if gate is None else _factor(beta, avg, gate, xp)
    if inplace:
        t = x * x
        t *= 1 - beta
        avg *= decay
        avg += t
        return avg
    return avg * decay + (x * x) * (1 - beta)


def _add_ratio(param: Array, num: Array, den: Array, c: float, inplace: bool,
               gate: Array | None = None, xp: Any = None) -> Array:
    """``θ + (c·num) / den``: one temporary on the in-place path, ``num`` and ``den`` kept."""
    if inplace:
        t = num * c
        t /= den
        t = _admit(t, gate, xp, True)
        param += t
        return param
    return param + _admit((num * c) / den, gate, xp, False)


def gate_gradient(grad: Array, gate: Array | None, *, xp: Any) -> Array:
    """``grad`` where ``gate`` is true, zeros where it is false (a new array; ``grad`` may hold
    inf or NaN): the gradient a gated kernel expects. ``gate`` None returns ``grad`` itself."""
    if gate is None:
        return grad
    return xp.where(gate, grad, constant(0.0, grad, xp=xp))


def _factor(c: float, like: Array, gate: Array, xp: Any) -> Array:
    """The 0-d factor ``c`` where the gate is open and 1 where it is shut (dtype of ``like``)."""
    return xp.where(gate, constant(c, like, xp=xp), constant(1.0, like, xp=xp))


def _admit(t: Array, gate: Array | None, xp: Any, inplace: bool) -> Array:
    """A finite increment ``t`` (a temporary the kernel owns) times ``float(gate)``: itself,
    exactly, when the gate is open, zeros when it is shut; scaled in place when ``inplace``."""
    if gate is None:
        return t
    open_ = xp.astype(gate, t.dtype)
    if inplace:
        t *= open_
        return t
    return t * open_


def _gated_l2(grad: Array, param: Array, weight_decay: float, inplace: bool,
              gate: Array | None, xp: Any) -> Array:
    """:func:`_l2`, with the decay term zeroed where the gate is shut (so ``g`` is 0 there)."""
    g = _l2(grad, param, weight_decay, inplace)
    if gate is None or weight_decay == 0:
        return g
    return _admit(g, gate, xp, inplace)  # _l2 made a temporary: ours to scale


def _plus(x: Array, c: float, inplace: bool) -> Array:
    """``x + c`` for an array the kernel created itself (so it may be overwritten)."""
    if inplace:
        x += c
        return x
    return x + c


def _l2(grad: Array, param: Array, weight_decay: float, inplace: bool = False) -> Array:
    """The coupled weight decay of torch.optim: ``g + λ θ`` (a new array; ``grad`` is kept)."""
    if weight_decay == 0:
        return grad
    if inplace:
        g = param * weight_decay
        g += grad
        return g
    return grad + param * weight_decay


def _decay(param: Array, lr: float, weight_decay: float, inplace: bool,
           gate: Array | None = None, xp: Any = None) -> Array:
    """Decoupled weight decay: ``θ (1 − γ λ)`` (factor 1 where the gate is shut)."""
    if weight_decay == 0:
        return param
    c = 1 - lr * weight_decay
    factor = c if gate is None else _factor(c, param, gate, xp)
    if inplace:
        param *= factor
        return param
    return param * factor


def _buffer(buf: Array | None, param: Array, xp: Any) -> Array:
    """``buf``, or a zero buffer like ``param`` when it is ``None`` (an option switched on after
    the first step, e.g. ``momentum`` or ``amsgrad`` set by hand on a parameter group)."""
    return _zeros_like(param, xp) if buf is None else buf


def _zeros_like(param: Array, xp: Any) -> Array:
    return xp.zeros(param.shape, dtype=param.dtype, device=param.device)


# ----------------------------------------------------------------------------------------------
# SGD
# ----------------------------------------------------------------------------------------------


def sgd_update(param: Array, grad: Array, *, lr: float, inplace: bool = False) -> Array:
    """Plain gradient descent: ``θ ← θ − γ g``.

    With ``inplace=True`` the parameter's buffer is overwritten (numpy, cupy, torch) and returned;
    otherwise a new array is returned and ``param`` is left untouched. See
    :func:`sgd_momentum_update` for momentum, dampening, Nesterov and weight decay.
    """
    if inplace:
        param -= grad * lr
        return param
    return param - grad * lr


@dataclass(slots=True)
class SGDState:
    """SGD's state: the step count and, once momentum is used, the momentum buffer ``b``."""

    step: int
    momentum_buffer: Array | None = None


def sgd_init(param: Array, *, xp: Any) -> SGDState:
    """SGD's state: step 0; the momentum buffer is created (as a copy of ``g``) on first use."""
    return SGDState(0)


def sgd_momentum_update(
    param: Array, grad: Array, state: SGDState, *, lr: float, momentum: float = 0.0,
    dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
    xp: Any, inplace: bool = False, gate: Array | None = None,
) -> tuple[Array, SGDState]:
    """SGD with momentum (torch.optim.SGD).

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1} \\\\
        b_1 &= g_1, \\quad b_t = μ b_{t-1} + (1 − τ) g_t \\quad (t > 1) \\\\
        d_t &= g_t + μ b_t \\text{ (Nesterov)} \\quad\\text{or}\\quad d_t = b_t \\\\
        θ_t &= θ_{t-1} − γ d_t

    with learning rate γ, momentum μ, dampening τ and weight decay λ. The buffer starts as a copy
    of the first gradient (no dampening on step 1), as in torch. Without momentum (μ = 0) this is
    plain gradient descent (:func:`sgd_update`) and no buffer is kept. Sutskever et al. (2013),
    "On the importance of initialization and momentum in deep learning" (ICML) describe the
    Nesterov form.

    Other libraries: Keras' SGD applies momentum as ``v ← μ v − γ g; θ ← θ + v`` (the learning rate
    inside the buffer), which differs from torch's when the learning rate changes during training.

    Shapes: ``param``, ``grad`` and ``state.momentum_buffer`` share one shape.
    """
    step = state.step + 1
    if momentum == 0 and weight_decay == 0:  # plain gradient descent, as sgd_update
        if inplace:
            param -= grad * lr
            state.step = step
            return param, state
        return param - grad * lr, SGDState(step, state.momentum_buffer)
    g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)
    if momentum == 0:
        # weight decay without momentum: g is the L2 temporary made above, ours to scale
        if inplace:
            g *= lr
            param -= g
            state.step = step
            return param, state
        return param - g * lr, SGDState(step, state.momentum_buffer)
    buf = state.momentum_buffer
    if buf is None:
        buf = xp.asarray(g, copy=True)
    elif inplace:
        buf *= momentum if gate is None else _factor(momentum, buf, gate, xp)
        if dampening != 0:
            g_damped = g * (1 - dampening)
            buf += g_damped
        else:
            buf += g
    else:
        buf = (buf * (momentum if gate is None else _factor(momentum, buf, gate, xp))
               + (g * (1 - dampening) if dampening != 0 else g))
    if inplace:
        state.step, state.momentum_buffer = step, buf
        new_state = state
    else:
        new_state = SGDState(step, buf)
    if nesterov:
        if inplace:
            d = buf * momentum
            d += g
            d *= lr
            param -= _admit(d, gate, xp, True)
            return param, new_state
        return param - _admit((buf * momentum + g) * lr, gate, xp, False), new_state
    if inplace:
        param -= _admit(buf * lr, gate, xp, True)  # never scale the buffer itself
        return param, new_state
    return param - _admit(buf * lr, gate, xp, False), new_state


# ----------------------------------------------------------------------------------------------
# Adagrad
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AdagradState:
    """Adagrad's state: the step count and the accumulated squared gradients ``G``."""

    step: int
    sum: Array


def adagrad_init(param: Array, *, initial_accumulator_value: float = 0.0,
                 xp: Any) -> AdagradState:
    """Adagrad's state: ``sum`` filled with ``initial_accumulator_value``, step 0."""
    acc = xp.full(param.shape, initial_accumulator_value, dtype=param.dtype, device=param.device)
    return AdagradState(0, acc)


def adagrad_scalars(step: int, *, lr: float, lr_decay: float = 0.0) -> tuple[float]:
    """The number of step ``step`` that :func:`adagrad_update` multiplies by, on the host:
    ``(−γ / (1 + (t − 1) η),)``."""
    return (-(lr / (1 + (step - 1) * lr_decay)),)


def adagrad_update(
    param: Array, grad: Array, state: AdagradState, *, lr: float, lr_decay: float = 0.0,
    weight_decay: float = 0.0, eps: float = 1e-10, xp: Any, inplace: bool = False,
    gate: Array | None = None, scalars: tuple[Any] | None = None,
) -> tuple[Array, AdagradState]:
    """Adagrad (torch.optim.Adagrad).

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1} \\\\
        \\tilde γ_t &= γ / (1 + (t − 1) η) \\\\
        G_t &= G_{t-1} + g_t^2, \\quad G_0 = \\text{initial\\_accumulator\\_value} \\\\
        θ_t &= θ_{t-1} − \\tilde γ_t \\, g_t / (\\sqrt{G_t} + ε)

    with learning-rate decay η. Duchi, Hazan & Singer (2011), "Adaptive subgradient methods for
    online learning and stochastic optimization", JMLR 12.

    Other libraries: Keras starts the accumulator at 0.1 (torch at 0) and uses ε = 1e-7 (torch
    1e-10); both put ε outside the square root. ``scalars``: :func:`adagrad_scalars` of this
    step as a 0-d array (see :func:`adam_update`).
    """
    g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)  # g = 0: nothing moves
    step = state.step + 1
    (neg_clr,) = adagrad_scalars(step, lr=lr, lr_decay=lr_decay) if scalars is None \
        else scalars
    acc = state.sum
    if inplace:
        sq = g * g
        acc += sq
    else:
        acc = acc + g * g
    std = _plus(xp.sqrt(acc), eps, inplace)
    param = _add_ratio(param, g, std, neg_clr, inplace)
    if inplace:
        state.step = step
        return param, state
    return param, AdagradState(step, acc)


# ----------------------------------------------------------------------------------------------
# RMSprop
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RMSpropState:
    """RMSprop's state: the step count, the average of g² and, when ``centered`` / ``momentum``
    are on, the average of g and the momentum buffer."""

    step: int
    square_avg: Array
    grad_avg: Array | None = None
    momentum_buffer: Array | None = None


def rmsprop_init(param: Array, *, momentum: float = 0.0, centered: bool = False,
                 xp: Any) -> RMSpropState:
    """RMSprop's state: ``square_avg`` (and ``grad_avg``, ``momentum_buffer``) at zero."""
    return RMSpropState(0, _zeros_like(param, xp),
                        _zeros_like(param, xp) if centered else None,
                        _zeros_like(param, xp) if momentum > 0 else None)


def rmsprop_update(
    param: Array, grad: Array, state: RMSpropState, *, lr: float, alpha: float = 0.99,
    eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
    xp: Any, inplace: bool = False, gate: Array | None = None,
) -> tuple[Array, RMSpropState]:
    """RMSprop (torch.optim.RMSprop).

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1} \\\\
        v_t &= α v_{t-1} + (1 − α) g_t^2 \\\\
        \\bar g_t &= α \\bar g_{t-1} + (1 − α) g_t \\quad\\text{(centered only)} \\\\
        s_t &= \\sqrt{v_t − \\bar g_t^2} + ε \\quad\\text{(centered)}, \\qquad
              s_t = \\sqrt{v_t} + ε \\quad\\text{(otherwise)} \\\\
        b_t &= μ b_{t-1} + g_t / s_t, \\quad θ_t = θ_{t-1} − γ b_t \\quad (μ > 0) \\\\
        θ_t &= θ_{t-1} − γ g_t / s_t \\quad (μ = 0)

    Every average starts at zero. Hinton, Srivastava & Swersky, *Neural Networks for Machine
    Learning*, lecture 6e (2012); the centered form is Graves (2013), "Generating sequences with
    recurrent neural networks", eq. 38–45.

    Other libraries: Keras' RMSprop defaults to ρ = 0.9 and ε = 1e-7 (torch: α = 0.99, ε = 1e-8);
    TensorFlow 1's RMSPropOptimizer put ε inside the square root, ``√(v + ε)``.
    """
    g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)
    sq = _ema_sq(state.square_avg, g, alpha, inplace, gate, xp)
    gavg, buf = state.grad_avg, state.momentum_buffer
    if centered:
        gavg = _ema(_buffer(gavg, param, xp), g, alpha, inplace, gate, xp)
        avg = xp.sqrt(sq - gavg * gavg)
    else:
        avg = xp.sqrt(sq)
    avg = _plus(avg, eps, inplace)
    if momentum > 0:
        buf = _buffer(buf, param, xp)
        decay = momentum if gate is None else _factor(momentum, buf, gate, xp)
        if inplace:
            ratio = g / avg
            buf *= decay
            buf += ratio
            ratio = buf * lr
            param -= _admit(ratio, gate, xp, True)
        else:
            buf = buf * decay + g / avg
            param = param - _admit(buf * lr, gate, xp, False)
    else:
        param = _add_ratio(param, g, avg, -lr, inplace)
    if inplace:
        state.step, state.grad_avg, state.momentum_buffer = state.step + 1, gavg, buf
        return param, state
    return param, RMSpropState(state.step + 1, sq, gavg, buf)


# ----------------------------------------------------------------------------------------------
# Adadelta
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AdadeltaState:
    """Adadelta's state: the step count and the averages of g² and of Δ²."""

    step: int
    square_avg: Array
    acc_delta: Array


def adadelta_init(param: Array, *, xp: Any) -> AdadeltaState:
    """Adadelta's state: ``square_avg`` and ``acc_delta`` at zero."""
    return AdadeltaState(0, _zeros_like(param, xp), _zeros_like(param, xp))


def adadelta_update(
    param: Array, grad: Array, state: AdadeltaState, *, lr: float = 1.0, rho: float = 0.9,
    eps: float = 1e-6, weight_decay: float = 0.0, xp: Any, inplace: bool = False,
    gate: Array | None = None,
) -> tuple[Array, AdadeltaState]:
    """Adadelta (torch.optim.Adadelta).

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1} \\\\
        v_t &= ρ v_{t-1} + (1 − ρ) g_t^2 \\\\
        Δ_t &= \\frac{\\sqrt{u_{t-1} + ε}}{\\sqrt{v_t + ε}} \\, g_t \\\\
        u_t &= ρ u_{t-1} + (1 − ρ) Δ_t^2 \\\\
        θ_t &= θ_{t-1} − γ Δ_t

    Zeiler (2012), "ADADELTA: an adaptive learning rate method", arXiv:1212.5701. Here ε sits
    inside both square roots, as in the paper. The paper has no learning rate (γ = 1, torch's
    default); Keras' Adadelta defaults to γ = 0.001, ρ = 0.95, ε = 1e-7.
    """
    g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)  # g = 0: Δ = 0
    sq = _ema_sq(state.square_avg, g, rho, inplace, gate, xp)
    std = xp.sqrt(sq + eps)
    delta = xp.sqrt(state.acc_delta + eps)
    if inplace:
        delta /= std
        delta *= g
    else:
        delta = delta / std * g
    acc = _ema_sq(state.acc_delta, delta, rho, inplace, gate, xp)
    if inplace:
        delta *= lr
        param -= delta
    else:
        param = param - delta * lr
    if inplace:
        state.step += 1
        return param, state
    return param, AdadeltaState(state.step + 1, sq, acc)


# ----------------------------------------------------------------------------------------------
# Adam, AdamW
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AdamState:
    """Adam's (and AdamW's) state: the step count, the first and second moments and, with
    AMSGrad, the running maximum of the second moment."""

    step: int
    exp_avg: Array
    exp_avg_sq: Array
    max_exp_avg_sq: Array | None = None


def adam_init(param: Array, *, amsgrad: bool = False, xp: Any) -> AdamState:
    """Adam's state: first and second moments (and their running max for AMSGrad) at zero."""
    return AdamState(0, _zeros_like(param, xp), _zeros_like(param, xp),
                     _zeros_like(param, xp) if amsgrad else None)


def adam_scalars(step: int, *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> tuple[float, float]:
    """The two numbers of step ``step`` that :func:`adam_update` multiplies and adds, computed
    on the host: ``(ε √(1 − β₂ᵗ), −γ √(1 − β₂ᵗ) / (1 − β₁ᵗ))``."""
    beta1, beta2 = betas
    bc1 = 1 - beta1**step
    bc2_sqrt = math.sqrt(1 - beta2**step)
    return eps * bc2_sqrt, -lr * bc2_sqrt / bc1


def adam_update(
    param: Array, grad: Array, state: AdamState, *, lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    amsgrad: bool = False, decoupled: bool = False, xp: Any, inplace: bool = False,
    gate: Array | None = None, scalars: tuple[Any, Any] | None = None,
) -> tuple[Array, AdamState]:
    """Adam (torch.optim.Adam), and AdamW with ``decoupled=True``.

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1}
               \\quad (\\text{AdamW instead: } θ_{t-1} ← θ_{t-1}(1 − γλ)) \\\\
        m_t &= β_1 m_{t-1} + (1 − β_1) g_t \\\\
        v_t &= β_2 v_{t-1} + (1 − β_2) g_t^2 \\\\
        \\hat v_t &= \\max(\\hat v_{t-1}, v_t) \\text{ (AMSGrad) or } v_t \\\\
        θ_t &= θ_{t-1} − \\frac{γ}{1 − β_1^t} \\,
               \\frac{m_t}{\\sqrt{\\hat v_t} / \\sqrt{1 − β_2^t} + ε}

    Kingma & Ba (2015), "Adam: a method for stochastic optimization", ICLR; AMSGrad: Reddi, Kale &
    Kumar (2018), "On the convergence of Adam and beyond", ICLR (torch keeps the max of the raw
    second moments and bias-corrects it afterwards); AdamW: Loshchilov & Hutter (2019),
    "Decoupled weight decay regularization", ICLR.

    ε is added *after* the bias-corrected square root, as in torch and Algorithm 1 of the paper.
    Keras/TensorFlow write the same update as ``γ √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε̂)``, i.e. the ε
    they add is not bias-corrected (and their default ε is 1e-7): the two agree only for ε → 0.

    ``scalars``: :func:`adam_scalars` of this step as 0-d arrays of the parameter's dtype, read
    on the device instead of computed from ``state.step`` (a recorded step: the same numbers,
    rounded to the dtype as a Python float is, so the same result bit for bit).
    """
    beta1, beta2 = betas
    if decoupled:
        param = _decay(param, lr, weight_decay, inplace, gate, xp)
        g = grad
    else:
        g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)
    step = state.step + 1
    m = _ema(state.exp_avg, g, beta1, inplace, gate, xp)
    v = _ema_sq(state.exp_avg_sq, g, beta2, inplace, gate, xp)
    # γ/(1−β₁ᵗ) · m / (√v̂/√(1−β₂ᵗ) + ε) = γ√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v̂ + ε√(1−β₂ᵗ)):
    # the bias corrections become two Python scalars instead of a pass over the array.
    eps_t, ratio = adam_scalars(step, lr=lr, betas=betas, eps=eps) if scalars is None \
        else scalars
    vmax = state.max_exp_avg_sq
    if amsgrad:
        vmax = _buffer(vmax, param, xp)
        vmax = assign(vmax, xp.maximum(vmax, v), inplace)
        v_hat = vmax
    else:
        v_hat = v
    denom = _plus(xp.sqrt(v_hat), eps_t, inplace)
    param = _add_ratio(param, m, denom, ratio, inplace, gate, xp)
    if inplace:
        state.step, state.max_exp_avg_sq = step, vmax
        return param, state
    return param, AdamState(step, m, v, vmax)


def adamw_update(
    param: Array, grad: Array, state: AdamState, *, lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
    amsgrad: bool = False, xp: Any, inplace: bool = False, gate: Array | None = None,
    scalars: tuple[Any, Any] | None = None,
) -> tuple[Array, AdamState]:
    """AdamW (torch.optim.AdamW): Adam with decoupled weight decay ``θ ← θ (1 − γ λ)``.

    The decay multiplies the parameter before the Adam step and never enters the moments, so it
    is not rescaled by the adaptive denominator (Loshchilov & Hutter, 2019). See
    :func:`adam_update` for the rest of the equations.
    """
    return adam_update(param, grad, state, lr=lr, betas=betas, eps=eps,
                       weight_decay=weight_decay, amsgrad=amsgrad, decoupled=True, xp=xp,
                       inplace=inplace, gate=gate, scalars=scalars)


# ----------------------------------------------------------------------------------------------
# Adamax
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AdamaxState:
    """Adamax's state: the step count, the first moment and the infinity norm ``u``."""

    step: int
    exp_avg: Array
    exp_inf: Array


def adamax_init(param: Array, *, xp: Any) -> AdamaxState:
    """Adamax's state: ``exp_avg`` and the infinity norm ``exp_inf`` at zero."""
    return AdamaxState(0, _zeros_like(param, xp), _zeros_like(param, xp))


def adamax_scalars(step: int, *, lr: float = 2e-3,
                   betas: tuple[float, float] = (0.9, 0.999)) -> tuple[float]:
    """The number of step ``step`` that :func:`adamax_update` multiplies by, on the host:
    ``(−γ / (1 − β₁ᵗ),)``."""
    return (-lr / (1 - betas[0]**step),)


def adamax_update(
    param: Array, grad: Array, state: AdamaxState, *, lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    xp: Any, inplace: bool = False, gate: Array | None = None,
    scalars: tuple[Any] | None = None,
) -> tuple[Array, AdamaxState]:
    """Adamax (torch.optim.Adamax), Adam with the infinity norm.

    .. math::
        g_t &= ∇f(θ_{t-1}) + λ θ_{t-1} \\\\
        m_t &= β_1 m_{t-1} + (1 − β_1) g_t \\\\
        u_t &= \\max(β_2 u_{t-1}, |g_t| + ε) \\\\
        θ_t &= θ_{t-1} − \\frac{γ}{1 − β_1^t} \\, \\frac{m_t}{u_t}

    Kingma & Ba (2015), section 7.1. torch adds ε to ``|g|`` inside the max (so ``u`` is never 0);
    Keras computes ``max(β₂ u, |g|)`` and adds ε to the denominator instead. ``scalars``:
    :func:`adamax_scalars` of this step as a 0-d array (see :func:`adam_update`).
    """
    beta1, beta2 = betas
    g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)
    step = state.step + 1
    m = _ema(state.exp_avg, g, beta1, inplace, gate, xp)
    u = state.exp_inf
    g_abs = _plus(xp.abs(g), eps, inplace)  # shut gate: ε ≤ u already, so u keeps its value
    decay = beta2 if gate is None else _factor(beta2, u, gate, xp)
    if inplace:
        u *= decay
        u[...] = xp.maximum(u, g_abs)
    else:
        u = xp.maximum(u * decay, g_abs)
    (ratio,) = adamax_scalars(step, lr=lr, betas=betas) if scalars is None else scalars
    param = _add_ratio(param, m, u, ratio, inplace, gate, xp)
    if inplace:
        state.step = step
        return param, state
    return param, AdamaxState(step, m, u)


# ----------------------------------------------------------------------------------------------
# NAdam
# ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class NAdamState:
    """NAdam's state: the step count, the running product Π_t of the momentum schedule (a
    Python float) and the first and second moments."""

    step: int
    mu_product: float
    exp_avg: Array
    exp_avg_sq: Array


def nadam_init(param: Array, *, xp: Any) -> NAdamState:
    """NAdam's state: moments at zero and the running product of the momentum schedule at 1."""
    return NAdamState(0, 1.0, _zeros_like(param, xp), _zeros_like(param, xp))


def nadam_scalars(step: int, mu_product: float, *, lr: float = 2e-3,
                  betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                  momentum_decay: float = 4e-3) -> tuple[tuple[float, float, float], float]:
    """The numbers of step ``step`` that :func:`nadam_update` adds and multiplies by, computed
    on the host from Π_{t−1} = ``mu_product``: ``((ε √(1 − β₂ᵗ), c_g, c_m), Π_t)``."""
    beta1, beta2 = betas
    bc2_sqrt = math.sqrt(1 - beta2**step)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = mu_product * mu
    c_g = -lr * (1.0 - mu) / (1.0 - mu_product) * bc2_sqrt
    c_m = -lr * mu_next / (1.0 - mu_product * mu_next) * bc2_sqrt
    return (eps * bc2_sqrt, c_g, c_m), mu_product


def nadam_update(
    param: Array, grad: Array, state: NAdamState, *, lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
    momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, xp: Any,
    inplace: bool = False, gate: Array | None = None,
    scalars: tuple[Any, Any, Any] | None = None,
) -> tuple[Array, NAdamState]:
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum and Dozat's momentum schedule.

    .. math::
        μ_t &= β_1 (1 − ½ · 0.96^{t ψ}), \\quad Π_t = \\prod_{i \\le t} μ_i \\\\
        m_t &= β_1 m_{t-1} + (1 − β_1) g_t, \\quad v_t = β_2 v_{t-1} + (1 − β_2) g_t^2 \\\\
        s_t &= \\sqrt{v_t / (1 − β_2^t)} + ε \\\\
        θ_t &= θ_{t-1} − γ \\frac{1 − μ_t}{1 − Π_t} \\frac{g_t}{s_t}
               − γ \\frac{μ_{t+1}}{1 − Π_t μ_{t+1}} \\frac{m_t}{s_t}

    with momentum decay ψ (``momentum_decay``) and ``g_t = ∇f + λθ`` (or decoupled decay
    ``θ ← θ(1 − γλ)`` with ``decoupled_weight_decay=True``). Dozat (2016), "Incorporating Nesterov
    momentum into Adam", ICLR workshop. ``state.mu_product`` holds Π_t.

    Other libraries: Keras' Nadam uses the same schedule with ψ fixed at 0.004 but its own ε
    placement (``m̂ / (√v̂ + ε)`` with ε = 1e-7). ``scalars``: the numbers of
    :func:`nadam_scalars` as 0-d arrays (see :func:`adam_update`); Π_t is still kept on the
    host.
    """
    beta1, beta2 = betas
    step = state.step + 1
    if decoupled_weight_decay:
        param = _decay(param, lr, weight_decay, inplace, gate, xp)
        g = grad
    else:
        g = _gated_l2(grad, param, weight_decay, inplace, gate, xp)
    # √(v/(1−β₂ᵗ)) + ε = (√v + ε√(1−β₂ᵗ)) / √(1−β₂ᵗ): the bias correction moves into the two
    # scalar coefficients, and both terms share one division: θ += (c_g g + c_m m) / s.
    (eps_t, c_g, c_m), mu_product = nadam_scalars(
        step, state.mu_product, lr=lr, betas=betas, eps=eps, momentum_decay=momentum_decay)
    if scalars is not None:
        eps_t, c_g, c_m = scalars
    m = _ema(state.exp_avg, g, beta1, inplace, gate, xp)
    v = _ema_sq(state.exp_avg_sq, g, beta2, inplace, gate, xp)
    denom = _plus(xp.sqrt(v), eps_t, inplace)
    if inplace:
        num = g * c_g
        num_m = m * c_m
        num += num_m
        num /= denom
        param += _admit(num, gate, xp, True)
    else:
        param = param + _admit((g * c_g + m * c_m) / denom, gate, xp, False)
    if inplace:
        state.step, state.mu_product = step, mu_product
        return param, state
    return param, NAdamState(step, mu_product, m, v)


def nadam_mu_product(step: int, beta1: float, momentum_decay: float) -> float:
    """Π_t = μ_1 ⋯ μ_t, multiplied in the order :func:`nadam_update` multiplies it (so the
    same float): what a record's ``mu_product`` is after ``step`` steps."""
    product = 1.0
    for t in range(1, step + 1):
        product *= beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
    return product


# ----------------------------------------------------------------------------------------------
# L-BFGS pieces (the driver with its closure lives in nnxp.optim.LBFGS)
# ----------------------------------------------------------------------------------------------


def lbfgs_direction(
    grad: Array, old_dirs: Sequence[Array], old_stps: Sequence[Array], ro: Sequence[Any],
    h_diag: Any, *, dot: Callable[[Array, Array], Any],
) -> Array:
    """The L-BFGS search direction ``d = −H g`` by the two-loop recursion.

    With curvature pairs ``s_i = θ_{i+1} − θ_i`` (``old_stps``), ``y_i = g_{i+1} − g_i``
    (``old_dirs``) and ``ρ_i = 1 / (y_iᵀ s_i)``, oldest first:

    .. math::
        q &← −g; \\quad α_i = ρ_i s_iᵀ q, \\; q ← q − α_i y_i \\quad (i = k−1, …, 0) \\\\
        r &← γ_k q \\text{ with } γ_k = s_{k-1}ᵀ y_{k-1} / y_{k-1}ᵀ y_{k-1} \\text{ (h\\_diag)} \\\\
        β_i &= ρ_i y_iᵀ r, \\; r ← r + (α_i − β_i) s_i \\quad (i = 0, …, k−1)

    Nocedal & Wright, *Numerical Optimization* (2nd ed.), Algorithm 7.4. Every vector is 1-D of
    the same length. ``dot`` returns a 0-d array and ``ro``, ``h_diag`` may be 0-d arrays (or
    floats): then nothing here reads a value back to the host, whatever the history length.
    """
    q = -grad
    k = len(old_dirs)
    al: list[Any] = [0.0] * k
    for i in range(k - 1, -1, -1):
        al[i] = dot(old_stps[i], q) * ro[i]
        q = q - al[i] * old_dirs[i]
    r = q * h_diag
    for i in range(k):
        be_i = dot(old_dirs[i], r) * ro[i]
        r = r + (al[i] - be_i) * old_stps[i]
    return r


def cubic_interpolate(
    x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
    bounds: tuple[float, float] | None = None,
) -> float:
    """Minimiser of the cubic through ``(x1, f1, f1')`` and ``(x2, f2, f2')``, clipped to bounds.

    .. math::
        d_1 = g_1 + g_2 − 3 \\frac{f_1 − f_2}{x_1 − x_2}, \\quad d_2 = \\sqrt{d_1^2 − g_1 g_2},
        \\quad x^* = x_2 − (x_2 − x_1) \\frac{g_2 + d_2 − d_1}{g_2 − g_1 + 2 d_2}

    (Nocedal & Wright, eq. 3.59), for ``x1 <= x2`` and symmetrically otherwise; the midpoint of the
    bounds when the cubic has no minimiser (``d_1² < g_1 g_2``).
    """
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0
