"""Activation functions and their derivatives, each pair side by side.

A forward kernel maps ``x`` to ``y`` elementwise (softmax and maxout are the two exceptions: softmax
couples the entries of a row, maxout is an affine layer with a max over pieces); its backward
kernel maps the upstream gradient ``dy = ∂L/∂y`` to ``dx = ∂L/∂x = dy · f'(x)``, from whatever
the forward pass saved — ``x`` or ``y``, whichever makes the derivative cheaper. Each backward
docstring names what it expects.

Every kernel takes the array namespace ``xp`` as a keyword, works on arrays of any shape (the
feature axis is the last one where it matters), returns arrays of the dtype and on the device of
its input, and never emits a floating-point warning for finite input: exponentials only ever see
non-positive arguments, polynomials only bounded ones.

Hyperparameters (slopes, ``alpha``, ``beta``) are Python floats, or arrays of ``x``'s dtype that
broadcast against ``x`` (PReLU's learned slope, RReLU's random slopes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..typing import Array
from .accumulate import accumulator, sum_as
from .scalars import clamp, constant
from .scalars import sign as _sign

SELU_ALPHA = 1.6732632423543772848170429916717
"""SELU's α (Klambauer et al., 2017): the fixed point that keeps mean 0 and variance 1."""
SELU_SCALE = 1.0507009873554804934193349852946
"""SELU's λ (Klambauer et al., 2017)."""

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_CUBIC = 0.044715  # the cubic coefficient of the tanh approximation (Hendrycks & Gimpel)


def _mask(condition: Array, like: Array, xp: Any) -> Array:
    """A boolean array as 0/1 in ``like``'s dtype (multiplying by it beats ``where`` on NumPy)."""
    return xp.astype(condition, like.dtype)


# ----------------------------------------------------------------------------------------------
# Identity, step, sign, piecewise linear: the perceptron-era activations
# ----------------------------------------------------------------------------------------------


def identity(x: Array, *, xp: Any) -> Array:
    """Identity (linear activation): ``y = x`` (the input itself, not a copy)."""
    return x


def identity_backward(dy: Array, *, xp: Any) -> Array:
    """``dx = dy`` (f'(x) = 1)."""
    return dy


def step(x: Array, *, xp: Any) -> Array:
    """Heaviside step: ``y = 1`` for x > 0, ``0.5`` at x = 0, ``0`` for x < 0.

    The value ½ at 0 is the midpoint convention (``numpy.heaviside(x, 0.5)``).
    """
    return _mask(x > 0, x, xp) + 0.5 * _mask(x == 0, x, xp)


def step_backward(dy: Array, *, xp: Any) -> Array:
    """``dx = 0``: the step is flat everywhere except at 0, where it has no derivative.

    A zero gradient is what the chain rule gives almost everywhere, so a network of step units
    cannot be trained by gradient descent; the perceptron learning rule trains them instead.
    """
    return xp.zeros_like(dy)


def sign(x: Array, *, xp: Any) -> Array:
    """Sign: ``y = 1`` for x > 0, ``0`` at x = 0, ``-1`` for x < 0 (NaN for NaN)."""
    return _sign(x, xp=xp)


def sign_backward(dy: Array, *, xp: Any) -> Array:
    """``dx = 0`` almost everywhere (a jump of 2 at 0): untrainable by gradient descent."""
    return xp.zeros_like(dy)


def piecewise_linear(x: Array, *, xp: Any) -> Array:
    """Piecewise linear unit: ``y = 0`` for x ≤ −½, ``x + ½`` for −½ < x < ½, ``1`` for x ≥ ½."""
    return clamp(x + 0.5, 0.0, 1.0, xp=xp)


def piecewise_linear_backward(dy: Array, x: Array, *, xp: Any) -> Array:
    """``dx = dy · 1[−½ < x < ½]`` from the input ``x`` (0 at the two kinks)."""
    return dy * _mask((x > -0.5) & (x < 0.5), dy, xp)


# ----------------------------------------------------------------------------------------------
# Sigmoid and tanh
# ----------------------------------------------------------------------------------------------


def sigmoid(x: Array, *, xp: Any) -> Array:
    """Logistic sigmoid ``y = 1 / (1 + e^(−x))``, evaluated so that it never overflows.

    With ``z = e^(−|x|) ∈ (0, 1]``: ``y = 1 / (1 + z)`` for x ≥ 0 and ``y = z / (1 + z)`` for
    x < 0. The exponential only sees non-positive arguments, so there is no overflow for any
    input; for large |x| it underflows quietly to 0, which gives exactly 1 and 0 in the limits
    (``sigmoid(1e4) == 1``, ``sigmoid(-1e4) == 0``), and small outputs keep full relative
    precision (no ``1 − (something close to 1)``).
    """
    z = xp.exp(-xp.abs(x))
    p = 1.0 / (1.0 + z)
    return xp.where(x >= 0, p, z * p)


def sigmoid_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · y (1 − y)`` from the output ``y = sigmoid(x)``; at most ¼, at x = 0."""
    return dy * (y * (1.0 - y))


def tanh(x: Array, *, xp: Any) -> Array:
    """Hyperbolic tangent ``y = (e^x − e^(−x)) / (e^x + e^(−x)) = 2 sigmoid(2x) − 1``."""
    return xp.tanh(x)


def tanh_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · (1 − y²)`` from the output ``y = tanh(x)``; at most 1, at x = 0."""
    return dy * (1.0 - y * y)


# ----------------------------------------------------------------------------------------------
# The rectifier family
# ----------------------------------------------------------------------------------------------


def relu(x: Array, *, xp: Any) -> Array:
    """ReLU: ``y = max(x, 0)``.

    The 0 is a 0-d array made once per dtype and device (:func:`~nnxp.kernels.scalars.constant`):
    the standard lets ``maximum`` take a Python scalar, but array-api-compat's torch namespace
    copies it to the device on every call, which a GPU waits for.
    """
    return xp.maximum(x, constant(0.0, x, xp=xp))


def relu_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · 1[x > 0]``, computed from the output ``y`` (``y > 0`` exactly when ``x > 0``).

    The derivative at 0 is taken as 0 (the subgradient PyTorch and most libraries use). The mask
    is multiplied, not selected with ``where``: the product is several times faster on NumPy.
    """
    return dy * xp.astype(y > 0, dy.dtype)


def leaky_relu(x: Array, negative_slope: float | Array = 0.01, *, xp: Any) -> Array:
    """Leaky ReLU: ``y = x`` for x > 0, ``negative_slope · x`` otherwise.

    Written as ``max(x, 0) + a · min(x, 0)``, which needs no selection. ``negative_slope`` may be
    a float or an array broadcasting against ``x`` (PReLU and RReLU reuse this kernel).
    """
    zero = constant(0.0, x, xp=xp)
    return xp.maximum(x, zero) + negative_slope * xp.minimum(x, zero)


def leaky_relu_backward(
    dy: Array, x: Array, negative_slope: float | Array = 0.01, *, xp: Any
) -> Array:
    """``dx = dy · (1 if x > 0 else negative_slope)`` from the input ``x``.

    The output cannot stand in for ``x`` here: for a negative slope ``y`` and ``x`` have opposite
    signs, and for a zero slope (ReLU) ``y`` loses which side of 0 ``x`` was on.
    """
    pos = _mask(x > 0, dy, xp)
    return dy * (pos + negative_slope * (1.0 - pos))


def prelu(x: Array, alpha: Array, *, xp: Any) -> Array:
    """Parametric ReLU (He et al., 2015): ``y = max(x, 0) + α · min(x, 0)`` with a learned α.

    Parameters
    ----------
    x : (..., features) array
    alpha : (1,) array (one slope shared by every feature) or (features,) array (one per
        feature, on the last axis); same dtype as ``x``.
    """
    return leaky_relu(x, alpha, xp=xp)


def prelu_backward(dy: Array, x: Array, alpha: Array, *, xp: Any) -> tuple[Array, Array]:
    """Gradients of PReLU from the input ``x``.

    * ``dx = dy · (1 if x > 0 else α)``                           (..., features)
    * ``dα = Σ dy · min(x, 0)`` summed over every axis but the last, and over the last too when
      α is shared (shape (1,))                                    same shape as ``alpha``
    """
    dx = leaky_relu_backward(dy, x, alpha, xp=xp)
    contrib = dy * xp.minimum(x, constant(0.0, x, xp=xp))
    lead = tuple(range(contrib.ndim - 1))
    dalpha = xp.sum(contrib, axis=lead) if lead else contrib
    if alpha.shape[0] == 1:
        dalpha = xp.sum(dalpha, axis=-1, keepdims=True)
    return dx, dalpha


def rrelu(x: Array, slopes: float | Array, *, xp: Any) -> Array:
    """Randomized leaky ReLU (Xu et al., 2015): ``y = x`` for x ≥ 0, ``a · x`` for x < 0.

    In training ``slopes`` holds one slope ``a ~ U[lower, upper]`` per element of ``x`` (drawn by
    the caller: this kernel is pure); in evaluation it is the float ``(lower + upper) / 2``.
    """
    return leaky_relu(x, slopes, xp=xp)


def rrelu_backward(dy: Array, x: Array, slopes: float | Array, *, xp: Any) -> Array:
    """``dx = dy · (1 if x > 0 else a)`` with the slopes the forward pass used."""
    return leaky_relu_backward(dy, x, slopes, xp=xp)


def elu(x: Array, alpha: float = 1.0, *, xp: Any) -> Array:
    """ELU (Clevert et al., 2016): ``y = x`` for x > 0, ``α (e^x − 1)`` for x ≤ 0.

    Written as ``max(x, 0) + α · expm1(min(x, 0))``: the exponential never sees a positive
    argument (no overflow) and ``expm1`` keeps precision near 0.
    """
    zero = constant(0.0, x, xp=xp)
    return xp.maximum(x, zero) + alpha * xp.expm1(xp.minimum(x, zero))


def elu_backward(dy: Array, y: Array, alpha: float = 1.0, *, xp: Any) -> Array:
    """``dx = dy · (1 if x > 0 else α e^x)`` from the output ``y``.

    For x ≤ 0, ``α e^x = y + α``; and ``y > 0`` exactly when ``x > 0`` (for α > 0), so ``y``
    alone suffices.
    """
    pos = _mask(y > 0, dy, xp)
    return dy * (pos + (1.0 - pos) * (y + alpha))


def selu(x: Array, *, xp: Any) -> Array:
    """SELU (Klambauer et al., 2017): ``y = λ x`` for x > 0, ``λ α (e^x − 1)`` for x ≤ 0.

    ``λ = SELU_SCALE ≈ 1.0507`` and ``α = SELU_ALPHA ≈ 1.6733``.
    """
    return SELU_SCALE * elu(x, SELU_ALPHA, xp=xp)


def selu_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · (λ if x > 0 else λ α e^x)``; from the output: ``λ α e^x = y + λ α``."""
    pos = _mask(y > 0, dy, xp)
    return dy * (SELU_SCALE * pos + (1.0 - pos) * (y + SELU_SCALE * SELU_ALPHA))


def softplus(x: Array, beta: float = 1.0, *, xp: Any) -> Array:
    """Softplus ``y = (1/β) log(1 + e^(βx))``, a smooth ReLU, in the stable form.

    ``log(1 + e^t) = max(t, 0) + log1p(e^(−|t|))`` with ``t = βx``: no overflow for any input,
    and ``y → x`` (to within rounding) for large x.
    """
    t = x * beta if beta != 1.0 else x
    y = xp.maximum(t, constant(0.0, t, xp=xp)) + xp.log1p(xp.exp(-xp.abs(t)))
    return y / beta if beta != 1.0 else y


def softplus_backward(dy: Array, x: Array, beta: float = 1.0, *, xp: Any) -> Array:
    """``dx = dy · sigmoid(βx)`` from the input ``x``."""
    return dy * sigmoid(x * beta if beta != 1.0 else x, xp=xp)


# ----------------------------------------------------------------------------------------------
# erf, GELU, SiLU
# ----------------------------------------------------------------------------------------------

# erf(x) = (2/√π) Σ_n (−1)^n x^(2n+1) / (n! (2n+1)) — the Maclaurin series, summed by Horner's
# rule in x² for |x| < 2, where 30 terms reach float64 rounding (the largest term is ~1.2, so
# little is lost to cancellation).
_ERF_SERIES_TERMS = 30
_ERF_SERIES = tuple(
    (-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(_ERF_SERIES_TERMS)
)
_ERF_SPLIT = 2.0
# erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))) — Laplace's
# continued fraction, evaluated from a fixed depth upwards for x ≥ 2, where 50 levels reach
# float64 rounding. Past x = 27 erfc underflows to 0 in float64, so the argument is capped at 30
# (which also keeps x² far from overflow).
_ERFC_CF_DEPTH = 50
_ERFC_CAP = 30.0


def _erf_series(x: Array) -> Array:
    """erf by its Maclaurin series; accurate for |x| ≤ 2."""
    z = x * x
    acc = _ERF_SERIES[-1] + 0.0 * z
    for c in reversed(_ERF_SERIES[:-1]):
        acc = acc * z + c
    return (2.0 / math.sqrt(math.pi)) * x * acc


def _erfc_fraction(x: Array, xp: Any) -> Array:
    """erfc by its continued fraction; accurate for 2 ≤ x (x must be ≥ 2: no division by 0)."""
    t = x
    for n in range(_ERFC_CF_DEPTH, 0, -1):
        t = x + (0.5 * n) / t
    return xp.exp(-(x * x)) / (math.sqrt(math.pi) * t)


def erf(x: Array, *, xp: Any) -> Array:
    """The error function ``erf(x) = (2/√π) ∫₀ˣ e^(−t²) dt`` (the standard has none).

    The Maclaurin series for |x| < 2 and ``1 − erfc(|x|)`` from Laplace's continued fraction
    beyond; both branches are evaluated on arguments clamped to their own range (so neither
    divides by 0 or overflows) and the right one is selected. The relative error is below 1e-13
    in float64 over the whole real line (tests compare with ``math.erf`` and ``torch.erf``).
    Derivative: ``erf'(x) = (2/√π) e^(−x²)``.
    """
    a = xp.abs(x)
    small = _erf_series(clamp(x, -_ERF_SPLIT, _ERF_SPLIT, xp=xp))
    tail = 1.0 - _erfc_fraction(clamp(a, _ERF_SPLIT, _ERFC_CAP, xp=xp), xp)
    # sign(x) · tail where |x| ≥ 2, selected rather than multiplied by xp.sign (which writes
    # NaN through a boolean mask on CuPy and torch: a synchronisation)
    return xp.where(a < _ERF_SPLIT, small, xp.where(x < 0, -tail, tail))


def erfc(x: Array, *, xp: Any) -> Array:
    """The complementary error function ``erfc(x) = 1 − erf(x)``, accurate also where it is tiny.

    For x ≥ 2 the continued fraction gives erfc directly, with full relative precision down to
    its float64 underflow near x = 27 (``1 − erf(x)`` would be 0 beyond x ≈ 6); for x < 0,
    ``erfc(x) = 2 − erfc(−x)``. Relative error below 1e-12 in float64.
    """
    a = xp.abs(x)
    small = 1.0 - _erf_series(clamp(a, 0.0, _ERF_SPLIT, xp=xp))
    tail = _erfc_fraction(clamp(a, _ERF_SPLIT, _ERFC_CAP, xp=xp), xp)
    upper = xp.where(a < _ERF_SPLIT, small, tail)  # erfc(|x|)
    return xp.where(x >= 0, upper, 2.0 - upper)


def normal_cdf(x: Array, *, xp: Any) -> Array:
    """Standard normal CDF ``Φ(x) = ½ erfc(−x/√2)`` (accurate in the far left tail too)."""
    return 0.5 * erfc(-_INV_SQRT_2 * x, xp=xp)


def normal_pdf(x: Array, *, xp: Any) -> Array:
    """Standard normal density ``φ(x) = e^(−x²/2) / √(2π)`` (x clamped to ±40, where φ is 0)."""
    c = clamp(x, -40.0, 40.0, xp=xp)
    return _INV_SQRT_2PI * xp.exp(-0.5 * (c * c))


def _gelu_tanh_inner(x: Array, xp: Any) -> tuple[Array, Array]:
    """``(u, c)`` with ``u = tanh(√(2/π)(c + 0.044715 c³))`` and ``c = clip(x, ±20)``.

    At |x| = 20 the tanh is already exactly ±1 in float64 and float32, so clamping changes no
    value and keeps ``c³`` from overflowing for huge inputs.
    """
    c = clamp(x, -20.0, 20.0, xp=xp)
    return xp.tanh(_SQRT_2_OVER_PI * (c + _GELU_CUBIC * (c * c * c))), c


def gelu(x: Array, approximate: str = "none", *, xp: Any) -> Array:
    """GELU (Hendrycks & Gimpel, 2016): ``y = x Φ(x)``, Φ the standard normal CDF.

    ``approximate="none"`` (the default, as in ``torch.nn.functional.gelu``) uses
    ``Φ(x) = ½ erfc(−x/√2)`` from :func:`erfc`; ``approximate="tanh"`` uses
    ``Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³)))``, which is within 5e-4 of the exact GELU.
    """
    if approximate == "tanh":
        u, _ = _gelu_tanh_inner(x, xp)
        return 0.5 * x * (1.0 + u)
    if approximate == "none":
        return x * normal_cdf(x, xp=xp)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dy: Array, x: Array, approximate: str = "none", *, xp: Any) -> Array:
    """GELU's derivative, from the input ``x``.

    * exact: ``dx = dy · (Φ(x) + x φ(x))``, φ the standard normal density;
    * tanh:  with ``u = tanh(k (x + 0.044715 x³))``, ``k = √(2/π)``:
      ``dx = dy · (½ (1 + u) + ½ x (1 − u²) k (1 + 3 · 0.044715 x²))``.
    """
    if approximate == "tanh":
        u, c = _gelu_tanh_inner(x, xp)
        inner = _SQRT_2_OVER_PI * (1.0 + (3.0 * _GELU_CUBIC) * (c * c))
        return dy * (0.5 * (1.0 + u) + 0.5 * x * (1.0 - u * u) * inner)
    if approximate == "none":
        return dy * (normal_cdf(x, xp=xp) + x * normal_pdf(x, xp=xp))
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def silu(x: Array, *, xp: Any) -> Array:
    """SiLU / swish (Elfwing et al., 2018; Ramachandran et al., 2017): ``y = x · sigmoid(x)``."""
    return x * sigmoid(x, xp=xp)


def silu_backward(dy: Array, x: Array, *, xp: Any) -> Array:
    """``dx = dy · σ(x) (1 + x (1 − σ(x)))`` from the input ``x``, σ the sigmoid."""
    s = sigmoid(x, xp=xp)
    return dy * (s * (1.0 + x * (1.0 - s)))


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


def softmax(x: Array, axis: int = -1, *, xp: Any, accumulate_dtype: Any = None) -> Array:
    """Softmax ``y_i = e^(x_i) / Σ_j e^(x_j)`` along ``axis`` (the last by default).

    The inputs are exponentiated (some texts print ``y_i = x_i / Σ_j x_j``, which is not the
    softmax). The row maximum is subtracted first — softmax ignores a constant shift of a row —
    so every exponent is ≤ 0: no overflow, and the largest term is exactly 1, so the sum is ≥ 1.
    The sum accumulates in at least float32 (``accumulate_dtype``, see
    :mod:`nnxp.kernels.accumulate`; float16 inputs under mixed precision).
    """
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / sum_as(e, axis=axis, xp=xp, acc=accumulator(e.dtype, xp, accumulate_dtype))


def softmax_backward(dy: Array, y: Array, axis: int = -1, *, xp: Any) -> Array:
    """The Jacobian-vector product of softmax, from the output ``y``.

    The Jacobian of a row is ``∂y_i/∂x_j = y_i (δ_ij − y_j)``, so without forming it:
    ``dx = y ⊙ (dy − Σ_j dy_j y_j)``, the sum taken along ``axis`` (kept for broadcasting).
    Use this when softmax is a layer of its own; with a cross-entropy loss after it, the fused
    softmax-cross-entropy gradient ``y − target`` is cheaper and more accurate.
    """
    return y * (dy - xp.sum(dy * y, axis=axis, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Maxout
# ----------------------------------------------------------------------------------------------


class MaxoutCache(NamedTuple):
    """What :func:`maxout_backward` needs from :func:`maxout_forward`."""

    x: Array  # (batch, in): the input
    W: Array  # (in, out, k): the weights
    winner: Array  # (batch, out, k): 1 at the piece that won the max, 0 elsewhere (x's dtype)


def maxout_forward(x: Array, W: Array, b: Array | None, *, xp: Any) -> tuple[Array, MaxoutCache]:
    """Maxout (Goodfellow et al., 2013): ``y_j = max_p (x W[:, j, p] + b[j, p])``.

    Each of the ``out`` units takes the largest of ``k`` affine pieces of the input.

    Parameters
    ----------
    x : (batch, in) array
    W : (in, out, k) array
    b : (out, k) array, or None for no bias

    Returns
    -------
    y : (batch, out) array, and the :class:`MaxoutCache` for :func:`maxout_backward`, which
    records the winning piece of every unit (the first one on ties, as ``argmax`` picks).
    """
    n_in, n_out, k = W.shape
    z = xp.reshape(x @ xp.reshape(W, (n_in, n_out * k)), (x.shape[0], n_out, k))
    if b is not None:
        z = z + b
    y = xp.max(z, axis=-1)
    pieces = xp.arange(k, device=x.device)
    winner = xp.astype(xp.argmax(z, axis=-1)[..., None] == pieces, x.dtype)
    return y, MaxoutCache(x, W, winner)


def maxout_backward(dy: Array, cache: MaxoutCache, *, xp: Any) -> tuple[Array, Array, Array]:
    """Gradients of maxout: ``dy`` reaches only the winning piece of each unit.

    With ``dz = dy[..., None] · winner`` (batch, out, k), the gradient of the pre-max pieces:

    * ``dx = dz Wᵀ`` summed over units and pieces          (batch, in)
    * ``dW[:, j, p] = xᵀ dz[:, j, p]``                     (in, out, k)
    * ``db[j, p] = Σ_batch dz[:, j, p]``                    (out, k)
    """
    x, W, winner = cache
    n_in, n_out, k = W.shape
    dz = dy[..., None] * winner
    flat = xp.reshape(dz, (dz.shape[0], n_out * k))
    dx = flat @ xp.reshape(W, (n_in, n_out * k)).T
    dW = xp.reshape(x.T @ flat, (n_in, n_out, k))
    db = xp.sum(dz, axis=0)
    return dx, dW, db
