"""Activation functions and their derivatives, each pair side by side.

A forward kernel maps ``x`` to ``y`` elementwise; its backward kernel maps the upstream gradient
``dy = ∂L/∂y`` to ``dx = ∂L/∂x = dy · f'(x)``, from whatever the forward pass cached (``x`` or
``y``, whichever makes the derivative cheaper).
"""

from __future__ import annotations

from typing import Any

Array = Any


def relu(x: Array, *, xp: Any) -> Array:
    """ReLU: ``y = max(x, 0)``."""
    return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=x.device))


def relu_backward(dy: Array, y: Array, *, xp: Any) -> Array:
    """``dx = dy · 1[x > 0]``, computed from the output ``y`` (``y > 0`` exactly when ``x > 0``).

    The derivative at 0 is taken as 0 (the subgradient PyTorch and most libraries use). The mask
    is multiplied, not selected with ``where``: the product is several times faster on NumPy.
    """
    return dy * xp.astype(y > 0, dy.dtype)
