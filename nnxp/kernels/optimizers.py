"""Optimizer update kernels: (parameter, gradient, state) → new parameter (and state).

They follow ``torch.optim``'s update rules exactly, so a trajectory can be compared step by step.
"""

from __future__ import annotations

from typing import Any

Array = Any


def sgd_update(param: Array, grad: Array, *, lr: float, inplace: bool = False) -> Array:
    """Plain gradient descent: ``θ ← θ − lr · g``.

    With ``inplace=True`` the parameter's buffer is overwritten (numpy, cupy, torch) and returned;
    otherwise a new array is returned and ``param`` is left untouched.
    """
    if inplace:
        param -= lr * grad
        return param
    return param - lr * grad
