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
    x < 0, written without a selection as ``y = max(z, 1[x ≥ 0]) / (1 + z)`` (the numerator is
    1 for x ≥ 0 because z ≤ 1, and z for x < 0): one exponential and no ``where``, which on
    NumPy costs more than the exponential itself. The exponential only sees non-positive
    arguments, so there is no overflow for any input; for large |x| it underflows quietly to 0,
    which gives exactly 1 and 0 in the limits (``sigmoid(1e4) == 1``, ``sigmoid(-1e4) == 0``),
    and small outputs keep full relative precision (no ``1 − (something close to 1)``). NaN
    propagates (``maximum`` propagates it). Every array after ``|x|`` is the kernel's own, so
    the negation, the ``1 + z`` and the division are written in place (the same operations,
    the same bits, three fresh arrays fewer).
    """
    z = xp.abs(x)
    z *= -1.0
    z = xp.exp(z)
    y = xp.maximum(z, _mask(x >= 0, x, xp))
    z += 1.0
    y /= z
    return y


def sigmoid_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · y (1 − y)`` from the output ``y = sigmoid(x)``; at most ¼, at x = 0.

    One fresh array, ``1 − y``, multiplied in place by ``y`` and then ``dy``.
    """
    g = 1.0 - y
    g *= y
    g *= dy
    return g


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

    ``negative_slope`` may be a float or an array broadcasting against ``x`` (PReLU and RReLU
    reuse this kernel). Which form is used depends on the slope ``a``, never on the data:

    * a float ``0 < a ≤ 1``: ``max(x, a · x)`` (two passes): for x > 0, ``a·x ≤ x``; for x < 0,
      ``a·x ≥ x``; so the larger one is the right branch, value for value the same as the
      two-branch definition (``a · x`` is the same rounded product either way);
    * a float ``a > 1``: ``min(x, a · x)``, by the same argument;
    * ``a == 0``: ReLU, ``max(x, 0)`` (``0 · x`` would be NaN for x = ±inf);
    * a negative float or an array (learned or random slopes, whose range is not known without
      reading them back from the device): ``max(x, 0) + a · min(x, 0)``, no selection either.

    NaN propagates in every form; ``−0.0`` maps to ``−0.0`` in the ``max``/``min`` forms.
    """
    if isinstance(negative_slope, (int, float)):
        a = float(negative_slope)
        if a == 0.0:
            return relu(x, xp=xp)
        if 0.0 < a <= 1.0:
            return xp.maximum(x, a * x)
        if a > 1.0:
            return xp.minimum(x, a * x)
    zero = constant(0.0, x, xp=xp)
    return xp.maximum(x, zero) + negative_slope * xp.minimum(x, zero)


def leaky_relu_backward(
    dy: Array, x: Array, negative_slope: float | Array = 0.01, *, xp: Any
) -> Array:
    """``dx = dy · (1 if x > 0 else negative_slope)`` from the input ``x``.

    For a float slope ``0 ≤ a ≤ 1`` the factor is ``max(1[x > 0], a)`` (one pass after the
    mask); otherwise ``p + a · (1 − p)`` with ``p = 1[x > 0]``. Both are exactly 1 or exactly
    ``a`` (``a + (1 − a) · p`` would not be: ``a + (1 − a)`` need not round to 1).
    The output cannot stand in for ``x`` here: for a negative slope ``y`` and ``x`` have opposite
    signs, and for a zero slope (ReLU) ``y`` loses which side of 0 ``x`` was on.
    """
    pos = _mask(x > 0, dy, xp)
    if isinstance(negative_slope, (int, float)) and 0.0 <= negative_slope <= 1.0:
        return dy * xp.maximum(pos, constant(float(negative_slope), dy, xp=xp))
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

    The exponential sees ``min(x, 0)`` only (no overflow) and ``expm1`` keeps precision near 0.
    For ``0 < α ≤ 1`` (the default α = 1 included) it is ``max(x, α · expm1(min(x, 0)))``:
    for x > 0 the second operand is 0, for x ≤ 0 it is ≥ x (``α (e^x − 1) − x`` is 0 at 0 and
    decreasing), so the larger one is the right branch. For α > 1 (SELU's) that inequality fails
    near 0 and the kernel adds the two halves, ``max(x, 0) + α · expm1(min(x, 0))``.
    """
    zero = constant(0.0, x, xp=xp)
    neg = xp.expm1(xp.minimum(x, zero))
    if alpha == 1.0:
        return xp.maximum(x, neg)
    if 0.0 < alpha < 1.0:
        return xp.maximum(x, alpha * neg)
    return xp.maximum(x, zero) + alpha * neg


def elu_backward(dy: Array, y: Array, alpha: float = 1.0, *, xp: Any) -> Array:
    """``dx = dy · (1 if x > 0 else α e^x)`` from the output ``y``.

    For x ≤ 0, ``α e^x = y + α``; and ``y > 0`` exactly when ``x > 0`` (for α > 0), so ``y``
    alone suffices. With ``m = min(y, 0) + α`` (``α e^x`` for x ≤ 0, α for x > 0): for α = 1
    the factor is ``m`` itself, no mask at all; for α < 1 it is ``max(1[y > 0], m)``; otherwise
    ``p + (1 − p) m`` with ``p = 1[y > 0]``. Using ``min(y, 0)`` rather than ``y`` keeps
    ``(1 − p) · (y + α)`` from being ``0 · inf = NaN`` at x = +inf.
    """
    m = xp.minimum(y, constant(0.0, y, xp=xp)) + alpha
    if alpha == 1.0:
        return dy * m
    pos = _mask(y > 0, dy, xp)
    if 0.0 < alpha < 1.0:
        return dy * xp.maximum(pos, m)
    return dy * (pos + (1.0 - pos) * m)


def selu(x: Array, *, xp: Any) -> Array:
    """SELU (Klambauer et al., 2017): ``y = λ x`` for x > 0, ``λ α (e^x − 1)`` for x ≤ 0.

    ``λ = SELU_SCALE ≈ 1.0507`` and ``α = SELU_ALPHA ≈ 1.6733``.
    """
    return SELU_SCALE * elu(x, SELU_ALPHA, xp=xp)


def selu_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · (λ if x > 0 else λ α e^x)``; from the output: ``λ α e^x = y + λ α``.

    ``min(y, 0)`` stands in for ``y`` in the second term, so that x = +inf gives λ, not NaN.
    """
    pos = _mask(y > 0, dy, xp)
    m = xp.minimum(y, constant(0.0, y, xp=xp)) + SELU_SCALE * SELU_ALPHA
    return dy * (SELU_SCALE * pos + (1.0 - pos) * m)


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


def softplus_backward_from_output(dy: Array, y: Array, beta: float = 1.0, *, xp: Any) -> Array:
    """``dx = dy · sigmoid(βx)`` from the output ``y = softplus(x)``: two passes fewer.

    ``e^(−βy) = 1 / (1 + e^(βx)) = 1 − sigmoid(βx)``, so ``sigmoid(βx) = −expm1(−βy)``. It
    keeps full relative precision where the sigmoid is tiny (``y ≈ e^(βx)/β`` there and
    ``−expm1(−βy) ≈ βy``), is exactly 1 where ``βy`` is large, and exactly 0 where ``y``
    underflowed to 0. What :class:`~nnxp.layers.Softplus` uses.
    """
    return dy * -xp.expm1(y * -beta)


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

# Below float64, erf is computed as ``erf(t) = tanh(t · R(t²))`` with t clamped to ±4.3.
# ``atanh(erf(t)) / t`` is a smooth even function (1.128 at 0, 2.5 at t = 4.3), and a rational
# function of degree (3, 3) in t² fits it: R(z) = P(z)/Q(z), written as
# ``p₀ + z · S(z) / Q(z)`` (S = (P − p₀ Q)/z), so that near 0, where erf(t) ≈ 1.128 t, the
# rounding of the correction term does not show. The coefficients are a weighted least-squares
# fit (linearised, Loeb's iteration, reweighted towards minimax) of that function computed from
# ``math.erfc`` in float64 on [0, 4.3], weighted by how much an error in R moves erf in float32
# ulps, ``(1 − erf²) t / ulp(erf)`` (floored at 10, which keeps R increasing up to the clamp);
# the fit itself is within 0.06 ulp of erf, and Q ≥ 1 (all its coefficients are positive: no
# pole). Evaluated in float32 (in the monic form below) the max error against ``math.erf`` is
# 3.0 ulp with NumPy's tanh and 2.5 with torch's, relative 2.3e-7, over a dense grid
# (tests/test_activations.py::test_erf_float32_max_error_in_ulps): the rounding of the last
# steps and of the library's tanh, not the fit, sets it. At the clamp the argument of the tanh
# is 10.6, where every float32 tanh (NumPy's returns 1 − ulp up to 10) gives exactly ±1, so erf
# saturates exactly (erf(4.3) = 1 − 1.6e-9), t² cannot overflow, and R is never evaluated
# outside the range it was fitted on.
_ERF_P0 = 1.1283791707887316
_ERF_S = (0.10277250456983913, 0.015913080031737883, 0.0018098833617022265)
_ERF_Q = (1.0, 0.15687018996420646, 0.0236733304927803, 0.0003244410020452439)
_ERF_TANH_CLAMP = 4.3
# Φ(x) = ½ (1 + erf(x/√2)) — the CDF behind GELU — needs less than erf: an *absolute* error of
# a fraction of Φ's ulp (2^-24 on [½, 1)), not erf's relative accuracy near 0, so it has a fit
# of its own, of degree (3, 2), one division step shorter: the same function atanh(erf(t))/t on
# [0, 4.3], weighted by the error of Φ in units of 2^-24 that an error of R causes,
# ``½ (1 − erf²) t / 2^-24`` (floored at 0.05), made minimax by the differential-correction
# algorithm (a linear program per step, scipy's ``linprog``). The fit is within 0.9 · 2^-24
# (5.4e-8) of Φ, Q ≥ 1 again, and t R(t²) = 10.7 at the clamp. Evaluated in float32, Φ is within
# 1.25e-7 of the exact CDF (2 ulp on [½, 1)), exactly 0 and 1 beyond x = ∓6.08
# (test_normal_cdf_float32_absolute_error). (3, 3) was 7.8e-8 and two passes slower; (2, 2)
# fits only to 6e-7.
_PHI_P0 = 1.1283801159135236
_PHI_S = (0.1027614436556954, 0.014062173398134903, 0.0006545369848159993)
_PHI_Q = (1.0, 0.13854716780721227, 0.012758513690253348)


class _TanhRational(NamedTuple):
    """``tanh(c · (p0 + v · N(v) / D(v)))`` with ``v = scale · c²``, D monic: the coefficients of
    a fit above rewritten for the variable the caller has at hand (see :func:`_tanh_rational`)."""

    p0: float
    num: tuple[float, ...]  # N, lowest degree first
    den: tuple[float, ...]  # D without its leading 1, lowest degree first
    scale: float  # v = scale · c²
    bound: float  # the clamp of the input


def _monic_form(p0: float, s: tuple[float, ...], q: tuple[float, ...], x_scale: float,
                v_scale: float, bound: float) -> _TanhRational:
    """R for the input ``x = t / x_scale`` and the variable ``v = v_scale · x²``.

    With ``t = x_scale · x`` and ``t² = v · x_scale² / v_scale =: λ v``,
    ``t R(t²) = x · x_scale · (p0 + λ v S(λ v) / Q(λ v))``; dividing numerator and denominator
    by the leading coefficient of ``Q(λ v)`` makes the denominator monic (one Horner step less:
    its first step is an addition), and ``x_scale`` is folded into ``p0`` and the numerator.
    """
    lam = x_scale**2 / v_scale
    lead = q[-1] * lam ** (len(q) - 1)
    num = tuple(x_scale * lam * c * lam**k / lead for k, c in enumerate(s))
    den = tuple(c * lam**k / lead for k, c in enumerate(q[:-1]))
    return _TanhRational(x_scale * p0, num, den, v_scale, bound)


_ERF_FORM = _monic_form(_ERF_P0, _ERF_S, _ERF_Q, 1.0, 1.0, _ERF_TANH_CLAMP)
# Φ: t = x/√2 folded into the coefficients, and the variable is h = −x²/2, the exponent of the
# normal density, which the GELU derivative reuses
_CDF_FORM = _monic_form(_PHI_P0, _PHI_S, _PHI_Q, _INV_SQRT_2, -0.5,
                        _ERF_TANH_CLAMP * math.sqrt(2.0))


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


def _is_float64(x: Array, xp: Any) -> bool:
    return bool(x.dtype == xp.float64)


def _tanh_rational(x: Array, form: _TanhRational, xp: Any) -> tuple[Array, Array, Array]:
    """``(tanh(c · (p0 + v N(v) / D(v))), c, v)`` with ``c = clamp(x, ±bound)``, ``v = scale · c²``.

    Every array after the clamp is one this function made, so each Horner step and the final
    products are written in place (``acc *= v; acc += k``): on NumPy a pass that allocates its
    result costs twice one that does not. ``c`` and ``v`` are returned untouched, for the
    derivative. erf: 11 in-place and 6 allocating elementwise operations, the tanh included
    (18 allocating ones before); Φ: 10 and 6.
    """
    c = clamp(x, -form.bound, form.bound, xp=xp)
    v = c * c
    if form.scale != 1.0:
        v *= form.scale
    num = v * form.num[-1]
    for k in reversed(form.num[:-1]):
        num += k
        num *= v
    den = v + form.den[-1]
    for k in reversed(form.den[:-1]):
        den *= v
        den += k
    num /= den
    del den  # the tanh's result takes its memory (peak: four arrays besides x)
    num += form.p0
    num *= c
    return xp.tanh(num), c, v


def erf(x: Array, *, xp: Any) -> Array:
    """The error function ``erf(x) = (2/√π) ∫₀ˣ e^(−t²) dt`` (the standard has none).

    float64: the Maclaurin series for |x| < 2 and ``1 − erfc(|x|)`` from Laplace's continued
    fraction beyond; both branches are evaluated on arguments clamped to their own range (so
    neither divides by 0 or overflows) and the right one is selected. The relative error is
    below 1e-13 over the whole real line (tests compare with ``math.erf`` and ``torch.erf``).

    Other dtypes (float32, and the half-precision types): ``tanh(x · R(x²))`` with x clamped to
    ±4.3 and R a rational function of degree (3, 3) in x² — 17 elementwise passes instead of
    ~250; within 3.5 ulp (relative 2.3e-7) of the correctly rounded float32 erf (see
    ``_ERF_P0``). Which branch runs depends on
    the dtype only, never on the data. Derivative: ``erf'(x) = (2/√π) e^(−x²)``.
    """
    if not _is_float64(x, xp):
        return _tanh_rational(x, _ERF_FORM, xp)[0]
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
    """Standard normal CDF ``Φ(x)``.

    float64: ``½ erfc(−x/√2)``, accurate in the far left tail too (full relative precision).
    Other dtypes: ``½ + ½ tanh(x · R'(x²))``, the form of the fast erf of :func:`erf` with a
    rational ``R'`` of degree (3, 2) fitted for Φ's absolute error (``_PHI_P0``) and the
    ``1/√2`` folded into its coefficients — an absolute error below 1.25e-7, 2 ulp on [½, 1)
    (in the left tail, below x ≈ −4, that is not a small *relative* error: Φ(−5) ≈ 2.9e-7
    comes out with an error of ~6%; torch's float32 GELU, ``½ x (1 + erf(x/√2))``, has the same
    kind of error there); exactly 0 and 1 beyond x = ∓6.1 (4.3 √2).
    """
    return _normal_cdf_parts(x, xp)[0]


def _normal_cdf_parts(x: Array, xp: Any) -> tuple[Array, Array, Array]:
    """``(Φ(x), c, −c²/2)``, with ``c`` the input clamped where it no longer changes anything.

    ``−c²/2`` is the exponent of the density, ``φ(c) = e^(−c²/2) / √(2π)``, which the fast Φ
    uses as its variable anyway; the GELU derivative takes it from here.

    float64: ``c = clamp(x, ±40)`` (where ``c φ(c)`` is 0); other dtypes: the clamp of the
    fast Φ, ``±6.08``, reused by the backward pass (``c φ(c)`` is 2.2e-8 there, below half an
    ulp of Φ = 1; on the left, Φ = 0 and the derivative keeps this −2.2e-8 instead of decaying
    to 0, an absolute error far below float32's resolution of the values around it).
    """
    if _is_float64(x, xp):
        c = clamp(x, -40.0, 40.0, xp=xp)
        h = c * c
        h *= -0.5
        return 0.5 * erfc(-_INV_SQRT_2 * x, xp=xp), c, h
    t, c, h = _tanh_rational(x, _CDF_FORM, xp)
    t *= 0.5
    t += 0.5
    return t, c, h


def normal_pdf(x: Array, *, xp: Any) -> Array:
    """Standard normal density ``φ(x) = e^(−x²/2) / √(2π)`` (x clamped to ±40, where φ is 0)."""
    c = clamp(x, -40.0, 40.0, xp=xp)
    return _INV_SQRT_2PI * xp.exp(-0.5 * (c * c))


def gelu(x: Array, approximate: str = "none", *, xp: Any) -> Array:
    """GELU (Hendrycks & Gimpel, 2016): ``y = x Φ(x)``, Φ the standard normal CDF.

    ``approximate="none"`` (the default, as in ``torch.nn.functional.gelu``) uses Φ from
    :func:`normal_cdf` (float64: through :func:`erfc`; other dtypes: the fast erf of
    :func:`erf`); ``approximate="tanh"`` uses
    ``Φ(x) ≈ ½ (1 + tanh(√(2/π) (x + 0.044715 x³)))``, which is within 5e-4 of the exact GELU.
    Only the output: no derivative is computed (what evaluation-mode layers call).
    """
    return _gelu(x, approximate, False, xp)[0]


def gelu_forward(x: Array, approximate: str = "none", *, xp: Any) -> tuple[Array, Array]:
    """:func:`gelu` and its derivative at ``x``: ``(y, f′(x))``, for :func:`gelu_backward_cached`.

    The derivative is finished in the forward pass, from the arrays the output was computed
    from (the clamped input, the CDF, the exponent ``−c²/2``), so that only it is kept for the
    backward pass — one array instead of the input, the CDF, the clamped input and its square —
    and the backward pass is a single product.
    """
    y, grad = _gelu(x, approximate, True, xp)
    return y, grad


def _gelu(x: Array, approximate: str, with_grad: bool, xp: Any) -> tuple[Array, Any]:
    if approximate == "none":
        return _gelu_exact(x, with_grad, xp)
    if approximate == "tanh":
        return _gelu_tanh(x, with_grad, xp)
    raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def _gelu_exact(x: Array, with_grad: bool, xp: Any) -> tuple[Array, Array | None]:
    """``(x Φ(x), Φ(x) + c φ(c))`` (the second None unless ``with_grad``).

    ``c`` is the clamped input and ``h = −c²/2`` the variable of :func:`_normal_cdf_parts`, so
    ``c φ(c) = c e^h / √(2π)`` costs an exponential and three in-place products. The order of
    the statements keeps at most four arrays alive besides ``x`` (the CDF's numerator and
    denominator, ``c`` and ``h``), and the output is written over Φ once the derivative has
    used it: on NumPy, fresh memory costs more than the arithmetic. float32: 7 allocating and
    16 in-place elementwise operations for ``y`` and ``f′`` (the backward pass adds one
    product).
    """
    cdf, c, h = _normal_cdf_parts(x, xp)
    if not with_grad:
        cdf *= x  # y = x Φ, in Φ's memory
        return cdf, None
    grad = xp.exp(h)
    del h
    grad *= c
    del c
    grad *= _INV_SQRT_2PI
    grad += cdf
    cdf *= x  # y = x Φ, in Φ's memory
    return cdf, grad


def _gelu_tanh(x: Array, with_grad: bool, xp: Any) -> tuple[Array, Array | None]:
    """``(½ x (1 + u), f′)`` with ``u = tanh(k (c + 0.044715 c³))``, ``k = √(2/π)``.

    ``c = clamp(x, ±20)``: at |x| = 20 the tanh is already exactly ±1 in float64 and float32, so
    the clamp changes no value and keeps ``c³`` from overflowing for huge inputs. The derivative
    ``f′ = ½ (1 + u) + ½ c (1 − u²) k (1 + 3 · 0.044715 c²)`` is formed as
    ``½ (1 + u) + (u² − 1) · c · r`` with ``r = −½ k (1 + 3 · 0.044715 c²)``, each written over
    an array of the forward pass that is no longer needed. ``c`` rather than ``x`` in the second
    term: where they differ ``1 − u²`` is 0, and ``x = ±inf`` then gives 1 and 0, not NaN.
    """
    c = clamp(x, -20.0, 20.0, xp=xp)
    z = c * c
    arg = z * (_SQRT_2_OVER_PI * _GELU_CUBIC)
    arg += _SQRT_2_OVER_PI
    arg *= c
    u = xp.tanh(arg)
    del arg
    cdf = u + 1.0
    cdf *= 0.5  # ½ (1 + u), at most 1: x · it cannot overflow
    if not with_grad:
        cdf *= x  # y, in the memory of ½ (1 + u)
        return cdf, None
    z *= -1.5 * _SQRT_2_OVER_PI * _GELU_CUBIC
    z += -0.5 * _SQRT_2_OVER_PI
    u *= u  # the derivative is formed in u's memory
    u -= 1.0
    u *= c
    u *= z
    u += cdf
    cdf *= x  # y, in the memory of ½ (1 + u)
    return cdf, u


def gelu_backward(dy: Array, x: Array, approximate: str = "none", *, xp: Any) -> Array:
    """GELU's input gradient from the input ``x`` (evaluates the forward pass again).

    * exact: ``dx = dy · (Φ(x) + x φ(x))``, φ the standard normal density;
    * tanh:  with ``u = tanh(k (x + 0.044715 x³))``, ``k = √(2/π)``:
      ``dx = dy · (½ (1 + u) + ½ x (1 − u²) k (1 + 3 · 0.044715 x²))``.
    """
    return gelu_backward_cached(dy, gelu_forward(x, approximate, xp=xp)[1], xp=xp)


def gelu_backward_cached(dy: Array, grad: Array, *, xp: Any, overwrite: bool = False) -> Array:
    """``dx = dy · f′(x)`` from the derivative ``grad`` that :func:`gelu_forward` returned.

    ``overwrite=True`` writes the product into ``grad`` (when it has ``dy``'s dtype and shape)
    and returns it: for a caller that drops ``grad`` afterwards, as the layer does with its
    cache — one fresh array fewer per backward pass.
    """
    if overwrite and grad.dtype == dy.dtype and tuple(grad.shape) == tuple(dy.shape):
        grad *= dy
        return grad
    return dy * grad


def silu(x: Array, *, xp: Any) -> Array:
    """SiLU / swish (Elfwing et al., 2018; Ramachandran et al., 2017): ``y = x · sigmoid(x)``."""
    return x * sigmoid(x, xp=xp)


def silu_forward(x: Array, *, xp: Any) -> tuple[Array, Array]:
    """:func:`silu` and the sigmoid it used: ``(y, s)`` for :func:`silu_backward_cached`."""
    s = sigmoid(x, xp=xp)
    return x * s, s


def silu_backward(dy: Array, x: Array, *, xp: Any) -> Array:
    """``dx = dy · σ(x) (1 + x (1 − σ(x)))`` from the input ``x``, σ the sigmoid."""
    y, s = silu_forward(x, xp=xp)
    return silu_backward_cached(dy, y, s, xp=xp)


def silu_backward_cached(dy: Array, y: Array, s: Array, *, xp: Any) -> Array:
    """SiLU's derivative from the output ``y`` and the sigmoid ``s = σ(x)``: four passes.

    ``σ (1 + x (1 − σ)) = σ + y (1 − σ)`` with ``y = x σ``. Where ``x = −inf`` the output is
    NaN (``−inf · 0``), as ``x · sigmoid(x)`` is in every library that computes it so.
    """
    return dy * (s + y * (1.0 - s))


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
    e /= sum_as(e, axis=axis, xp=xp, acc=accumulator(e.dtype, xp, accumulate_dtype))
    return e  # divided in place: e is the kernel's own array


def softmax_backward(dy: Array, y: Array, axis: int = -1, *, xp: Any) -> Array:
    """The Jacobian-vector product of softmax, from the output ``y``.

    The Jacobian of a row is ``∂y_i/∂x_j = y_i (δ_ij − y_j)``, so without forming it:
    ``dx = y ⊙ (dy − Σ_j dy_j y_j)``, the sum taken along ``axis`` (kept for broadcasting).
    Use this when softmax is a layer of its own; with a cross-entropy loss after it, the fused
    softmax-cross-entropy gradient ``y − target`` is cheaper and more accurate.

    (``vecdot`` for the row sums was measured and rejected: 4× faster than ``sum(dy * y)`` on
    NumPy, but 6× slower through array-api-compat's torch namespace; docs/design.md.)
    """
    g = dy - xp.sum(dy * y, axis=axis, keepdims=True)
    g *= y
    return g


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
