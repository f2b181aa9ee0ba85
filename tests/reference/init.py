"""Expected moments of the weight initialisers, from their published formulas. Never imports nnxp.

Shapes are in nnxp's dense layout ``(in_features, out_features, *receptive)``.
"""

from __future__ import annotations

import math


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0] * receptive, shape[1] * receptive


def expected_moments(name: str, shape: tuple[int, ...], **params: float) -> dict[str, float]:
    """``{"mean", "var"}`` and, for uniform draws, the support ``{"low", "high"}``."""
    fan_in, fan_out = fans(shape)
    if name == "random_normal":
        return {"mean": params.get("mean", 0.0), "var": params.get("std", 0.05) ** 2}
    if name == "random_uniform":
        lo, hi = params.get("low", -0.05), params.get("high", 0.05)
        return {"mean": (lo + hi) / 2, "var": (hi - lo) ** 2 / 12, "low": lo, "high": hi}
    if name in ("glorot_normal", "xavier_normal"):  # Glorot & Bengio (2010): Var = 2/(in+out)
        return {"mean": 0.0, "var": 2.0 / (fan_in + fan_out)}
    if name in ("glorot_uniform", "xavier_uniform"):
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return {"mean": 0.0, "var": 2.0 / (fan_in + fan_out), "low": -a, "high": a}
    if name in ("he_normal", "kaiming_normal"):  # He et al. (2015): std = sqrt(2/fan_in)
        return {"mean": 0.0, "var": 2.0 / fan_in}
    if name in ("he_uniform", "kaiming_uniform"):
        a = math.sqrt(6.0 / fan_in)
        return {"mean": 0.0, "var": 2.0 / fan_in, "low": -a, "high": a}
    if name == "lecun_normal":  # LeCun et al. (1998): Var = 1/fan_in
        return {"mean": 0.0, "var": 1.0 / fan_in}
    if name == "orthogonal":  # a square orthogonal matrix has unit-norm rows: Var = gain²/n
        return {"mean": 0.0, "var": params.get("gain", 1.0) ** 2 / shape[1]}
    if name == "zeros":
        return {"mean": 0.0, "var": 0.0}
    if name == "ones":
        return {"mean": 1.0, "var": 0.0}
    if name == "constant":
        return {"mean": params.get("value", 0.0), "var": 0.0}
    raise KeyError(name)
