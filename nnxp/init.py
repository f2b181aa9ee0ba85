"""Weight initialisers, by name (``init="he_normal"``) or as a callable.

An initialiser is called as ``init(shape, *, rng, dtype, xp, device)`` and returns an array of
that shape. Every random draw goes through :class:`nnxp.random.Generator`, which draws on the host
in float64 and casts there before moving the result, so the same seed gives bit-identical
weights on every backend.

Fans follow the dense layout ``(in_features, out_features, ...)``:
``fan_in = shape[0] · receptive``, ``fan_out = shape[1] · receptive`` where ``receptive`` is the
product of any trailing dimensions (a Maxout weight ``(in, out, k)`` has ``fan_in = in · k``). A
1-D shape has ``fan_in = fan_out = shape[0]``.

Three ways to name one:

* a name from :data:`INITIALIZERS`: ``"he_normal"``, ``"random_normal"`` (the defaults);
* a plain initialiser: ``init.he_normal``, ``init.zeros``;
* a parametrised one: ``init.random_normal(std=0.01)``, ``init.constant(0.1)``,
  ``init.orthogonal(gain=2 ** 0.5)`` return an initialiser; the factory itself
  (``init=init.random_normal``) stands for its defaults.

Constant weights (``zeros``, ``ones``, ``constant``) on a shape of two or more dimensions warn
with :class:`SymmetryWarning`: every unit of the layer gets the same incoming weights, hence the
same gradient, and the units stay identical for ever. A 1-D shape (a bias, a BatchNorm scale, a
PReLU slope) does not warn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from . import backend
from .random import Generator
from .typing import Array
from .validation import check_finite, check_shape

Initializer = Callable[..., Array]


class SymmetryWarning(UserWarning):
    """Constant initial weights: every unit of the layer will stay identical (the symmetry
    problem), because identical units receive identical gradients."""


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` in nnxp's ``(in, out, ...)`` layout."""
    shape = check_shape(shape)
    if len(shape) == 0:
        raise ValueError("shape must have at least one dimension to define fans, got ()")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def _warn_symmetric(shape: tuple[int, ...], what: str) -> None:
    if len(check_shape(shape)) >= 2:
        warnings.warn(
            f"{what} initial weights of shape {tuple(shape)}: every unit gets the same weights "
            "and the same gradient, so all units of the layer stay identical (the symmetry "
            "problem); use a random initialiser such as 'he_normal' or 'glorot_uniform' for "
            "weights, and constants for biases only",
            SymmetryWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------


def zeros(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any) -> Array:
    """All zeros: ``W = 0``. For biases; on weights it warns (:class:`SymmetryWarning`)."""
    _warn_symmetric(shape, "all-zero")
    return xp.zeros(shape, dtype=dtype, device=device)


def ones(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any) -> Array:
    """All ones: ``W = 1`` (e.g. a normalisation scale); on weights it warns."""
    _warn_symmetric(shape, "all-one")
    return xp.ones(shape, dtype=dtype, device=device)


class Constant:
    """``W = value`` everywhere; on a weight of 2+ dimensions it warns (symmetry problem)."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = check_finite(value, argument="value")

    def __call__(self, shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any,
                 device: Any) -> Array:
        _warn_symmetric(shape, f"constant ({self.value:g})")
        return xp.full(shape, self.value, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"constant(value={self.value!r})"


def constant(value: float = 0.0) -> Constant:
    """An initialiser that fills with ``value`` (default 0, as Keras' ``Constant``)."""
    return Constant(value)


# ----------------------------------------------------------------------------------------------
# Plain random distributions
# ----------------------------------------------------------------------------------------------


class RandomNormal:
    """``W ~ N(mean, std²)``: mean ``mean``, variance ``std²``."""

    def __init__(self, mean: float = 0.0, std: float = 0.05) -> None:
        self.mean = check_finite(mean, argument="mean")
        self.std = check_finite(std, argument="std", positive=True)

    def __call__(self, shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any,
                 device: Any) -> Array:
        return rng.normal(check_shape(shape), mean=self.mean, std=self.std, dtype=dtype, xp=xp,
                          device=device)

    def __repr__(self) -> str:
        return f"random_normal(mean={self.mean!r}, std={self.std!r})"


def random_normal(mean: float = 0.0, std: float = 0.05) -> RandomNormal:
    """An initialiser drawing from ``N(mean, std²)``; defaults ``N(0, 0.05²)`` as Keras'
    ``RandomNormal`` (torch's ``normal_`` defaults to std 1, too large for wide layers)."""
    return RandomNormal(mean, std)


class RandomUniform:
    """``W ~ U[low, high)``: mean ``(low + high)/2``, variance ``(high − low)²/12``."""

    def __init__(self, low: float = -0.05, high: float = 0.05) -> None:
        self.low = check_finite(low, argument="low")
        self.high = check_finite(high, argument="high")
        if not self.low < self.high:
            raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")

    def __call__(self, shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any,
                 device: Any) -> Array:
        return rng.uniform(check_shape(shape), low=self.low, high=self.high, dtype=dtype, xp=xp,
                           device=device)

    def __repr__(self) -> str:
        return f"random_uniform(low={self.low!r}, high={self.high!r})"


def random_uniform(low: float = -0.05, high: float = 0.05) -> RandomUniform:
    """An initialiser drawing from ``U[low, high)``; defaults ``U[−0.05, 0.05)`` (Keras)."""
    return RandomUniform(low, high)


# ----------------------------------------------------------------------------------------------
# Variance-scaling initialisers
# ----------------------------------------------------------------------------------------------


def glorot_normal(
    shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any
) -> Array:
    """Xavier/Glorot normal: ``N(0, 2/(fan_in + fan_out))`` (Glorot & Bengio, 2010).

    Keeps the variance of activations and of gradients roughly constant through tanh/sigmoid
    layers. A plain (untruncated) normal, as ``torch.nn.init.xavier_normal_``.
    """
    fan_in, fan_out = fans(shape)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return rng.normal(shape, std=std, dtype=dtype, xp=xp, device=device)


def glorot_uniform(
    shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any
) -> Array:
    """Xavier/Glorot uniform: ``U(−a, a)`` with ``a = √(6/(fan_in + fan_out))``, variance
    ``a²/3 = 2/(fan_in + fan_out)`` (Glorot & Bengio, 2010)."""
    fan_in, fan_out = fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(shape, low=-a, high=a, dtype=dtype, xp=xp, device=device)


def he_normal(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any) -> Array:
    """He/Kaiming normal: ``N(0, 2/fan_in)``, standard deviation ``√(2/fan_in)`` (He et al.,
    2015), for ReLU layers: the factor 2 makes up for ReLU zeroing half of its inputs.
    A plain (untruncated) normal, as ``torch.nn.init.kaiming_normal_`` with ``mode="fan_in"``.
    """
    fan_in, _ = fans(shape)
    return rng.normal(shape, std=math.sqrt(2.0 / fan_in), dtype=dtype, xp=xp, device=device)


def he_uniform(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any
               ) -> Array:
    """He/Kaiming uniform: ``U(−a, a)`` with ``a = √(6/fan_in)``, variance ``2/fan_in``."""
    fan_in, _ = fans(shape)
    a = math.sqrt(6.0 / fan_in)
    return rng.uniform(shape, low=-a, high=a, dtype=dtype, xp=xp, device=device)


def lecun_normal(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any
                 ) -> Array:
    """LeCun normal: ``N(0, 1/fan_in)`` (LeCun et al., 1998), the initialiser SELU networks
    need to self-normalise (Klambauer et al., 2017)."""
    fan_in, _ = fans(shape)
    return rng.normal(shape, std=math.sqrt(1.0 / fan_in), dtype=dtype, xp=xp, device=device)


# ----------------------------------------------------------------------------------------------
# Orthogonal
# ----------------------------------------------------------------------------------------------


class Orthogonal:
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2014).

    The weight is viewed as a ``rows × cols`` matrix with ``rows = shape[0]`` and ``cols`` the
    product of the other dimensions. A ``max × min`` standard normal matrix ``A`` is drawn from
    the seeded :class:`~nnxp.random.Generator`, factorised ``A = QR`` on the host in float64,
    and the signs of ``Q``'s columns are set by ``sign(diag R)``, which makes ``Q`` uniformly
    (Haar) distributed. ``Q`` (transposed when ``rows < cols``) is scaled by ``gain``, cast to
    ``dtype`` on the host and moved to the backend once.

    The QR runs on the host rather than through ``xp.linalg.qr`` because LAPACK builds differ
    between libraries in their last bits: computed on the host, the same seed gives the same
    bits on every backend. So ``WᵀW = gain² I`` when ``rows ≥ cols`` (orthonormal columns) and
    ``WWᵀ = gain² I`` otherwise (orthonormal rows).
    """

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = check_finite(gain, argument="gain", positive=True)

    def __call__(self, shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any,
                 device: Any) -> Array:
        if len(check_shape(shape)) < 2:
            raise ValueError(f"orthogonal initialisation needs a shape of 2 or more dimensions, "
                             f"got {tuple(shape)}")
        rows = shape[0]
        cols = math.prod(shape[1:])
        hx = backend.host_namespace()
        a = rng.normal((max(rows, cols), min(rows, cols)), dtype="float64", xp=hx, device="cpu")
        q, r = hx.linalg.qr(a)
        d = hx.linalg.diagonal(r)
        q = q * hx.where(d < 0, -1.0, 1.0)[None, :]
        if rows < cols:
            q = q.T
        q = hx.reshape(q * self.gain, tuple(shape))
        q = hx.astype(q, backend.resolve_dtype(dtype, hx))
        return backend.asarray(q, xp=xp, device=device)

    def __repr__(self) -> str:
        return f"orthogonal(gain={self.gain!r})"


def orthogonal(gain: float = 1.0) -> Orthogonal:
    """An orthogonal initialiser scaled by ``gain`` (see :class:`Orthogonal`)."""
    return Orthogonal(gain)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


INITIALIZERS: dict[str, Initializer] = {
    "zeros": zeros,
    "ones": ones,
    "constant": constant(),
    "random_normal": random_normal(),
    "random_uniform": random_uniform(),
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal(),
}
"""Initialisers by name (``xavier_*`` and ``kaiming_*`` are aliases of ``glorot_*`` and
``he_*``); the parametrised ones with their defaults."""

_FACTORIES: dict[Callable[..., Any], str] = {
    constant: "constant",
    random_normal: "random_normal",
    random_uniform: "random_uniform",
    orthogonal: "orthogonal",
}


def get_initializer(init: str | Initializer, *, argument: str = "init") -> Initializer:
    """Look up ``init`` by name, or accept a callable as it is.

    A factory passed without calling it (``init=nnxp.init.random_normal``) stands for its
    defaults, i.e. the registry entry of the same name.
    """
    if callable(init):
        name = _FACTORIES.get(init)
        return INITIALIZERS[name] if name is not None else init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(
            f"{argument}={init!r} is not a known initialiser; valid names are "
            f"{', '.join(sorted(INITIALIZERS))}, or pass a callable"
        ) from None
