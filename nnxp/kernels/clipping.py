"""Gradient clipping kernels (torch.nn.utils.clip_grad_norm_ / clip_grad_value_ semantics).

Pure functions of a list of gradient arrays; they never synchronise with the device (the total
norm stays a 0-d array), so an optimizer can clip on every step without a host round trip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..typing import Array
from .scalars import clamp, constant


def global_norm(grads: Sequence[Array], *, norm_type: float = 2.0, xp: Any) -> Array:
    """The norm of all gradients seen as one long vector, as a 0-d array.

    .. math::
        \\|g\\|_p = \\Big(\\sum_i \\sum_j |g_{ij}|^p\\Big)^{1/p}, \\qquad
        \\|g\\|_∞ = \\max_i \\max_j |g_{ij}|

    ``grads``: arrays of any shapes, one dtype, one device. The result has their dtype.
    """
    if not grads:
        raise ValueError("global_norm needs at least one gradient, got an empty list")
    if math.isinf(norm_type):
        return xp.max(xp.stack([xp.max(xp.abs(g)) for g in grads]))
    if norm_type == 2.0:
        total = sum(xp.sum(g * g) for g in grads)
        return xp.sqrt(total)
    total = sum(xp.sum(xp.abs(g) ** norm_type) for g in grads)
    return total ** (1.0 / norm_type)


def clip_by_global_norm(
    grads: Sequence[Array], max_norm: float, *, norm_type: float = 2.0, xp: Any,
    inplace: bool = False,
) -> tuple[list[Array], Array]:
    """Rescale every gradient by one factor so that their global norm is at most ``max_norm``.

    .. math::
        c = \\min\\Big(1, \\frac{\\text{max\\_norm}}{\\|g\\| + 10^{-6}}\\Big),
        \\qquad g_i ← c\\, g_i

    The 1e-6 keeps the division finite for a zero gradient and makes the clipped norm land just
    below ``max_norm`` (torch's clip_grad_norm_). Gradients whose norm is already within the bound
    are multiplied by exactly 1, i.e. unchanged. Returns the (possibly new) gradients and the total
    norm *before* clipping as a 0-d array; with ``inplace=True`` the gradient buffers are scaled in
    place and returned.
    """
    total = global_norm(grads, norm_type=norm_type, xp=xp)
    coef = xp.minimum(max_norm / (total + 1e-6), constant(1.0, total, xp=xp))
    if inplace:
        for g in grads:
            g *= coef
        return list(grads), total
    return [g * coef for g in grads], total


def clip_by_value(
    grads: Sequence[Array], clip_value: float, *, xp: Any, inplace: bool = False
) -> list[Array]:
    """Clamp every gradient entry into ``[−clip_value, clip_value]`` (torch's clip_grad_value_).

    Unlike clipping by norm this changes the direction of the gradient vector.
    """
    out = []
    for g in grads:
        clipped = clamp(g, -clip_value, clip_value, xp=xp)
        if inplace:
            g[...] = clipped
            clipped = g
        out.append(clipped)
    return out
