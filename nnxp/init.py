"""Weight initialisers, by name (``init="he_normal"``) or as a callable.

An initialiser is called as ``init(shape, rng=..., dtype=..., xp=..., device=...)`` and returns an
array of that shape. Fans follow the dense layout ``(in_features, out_features, ...)``:
``fan_in = shape[0] · receptive``, ``fan_out = shape[1] · receptive`` where ``receptive`` is the
product of any trailing dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .random import Generator

Array = Any
Initializer = Callable[..., Array]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` in nnxp's ``(in, out, ...)`` layout."""
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def zeros(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any) -> Array:
    """All zeros (biases; on weights every unit of the layer stays identical)."""
    return xp.zeros(shape, dtype=dtype, device=device)


def he_normal(shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any) -> Array:
    """He/Kaiming normal: N(0, 2/fan_in) — std √(2/fan_in), for ReLU layers (He et al., 2015)."""
    fan_in, _ = fans(shape)
    return rng.normal(shape, std=math.sqrt(2.0 / fan_in), dtype=dtype, xp=xp, device=device)


def glorot_uniform(
    shape: tuple[int, ...], *, rng: Generator, dtype: Any, xp: Any, device: Any
) -> Array:
    """Xavier/Glorot uniform: U(−a, a) with a = √(6/(fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = fans(shape)
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(shape, low=-a, high=a, dtype=dtype, xp=xp, device=device)


INITIALIZERS: dict[str, Initializer] = {
    "zeros": zeros,
    "he_normal": he_normal,
    "glorot_uniform": glorot_uniform,
}
"""Initialisers by name."""


def get_initializer(init: str | Initializer, *, argument: str = "init") -> Initializer:
    """Look up ``init`` by name, or accept a callable as it is."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise ValueError(
            f"{argument}={init!r} is not a known initialiser; valid names are "
            f"{', '.join(sorted(INITIALIZERS))}"
        ) from None
