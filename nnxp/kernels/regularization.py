"""Weight penalties (L1, L2) and the max-norm constraint.

Conventions (those of Keras' ``kernel_regularizer`` and ``MaxNorm``):

* the penalty is ``l1 · Σ|W| + l2 · Σ W²`` — ``l2`` multiplies ``Σ W²``, *not* ``½ Σ W²``, so its
  gradient is ``2 · l2 · W``. (SGD's ``weight_decay=λ`` in torch adds ``λ · W`` to the gradient,
  which is this penalty with ``l2 = λ / 2``.)
* it applies to weights only, never to biases;
* it is added once per batch to the mean loss over the batch (it is not divided by the batch).

The max-norm constraint (Srivastava et al., 2014) is a projection applied after each optimizer
step, not a penalty: every unit's incoming weight vector — a column ``W[:, j]`` of shape
``(in,)`` in nnxp's ``(in, out)`` layout — is rescaled to Euclidean norm ``≤ c``.
"""

from __future__ import annotations

from typing import Any

from ..typing import Array
from .scalars import constant, sign


def l1_l2_penalty(W: Array, *, l1: float, l2: float, xp: Any) -> Array:
    """``P(W) = l1 · Σ|W| + l2 · Σ W²``.

    Parameters
    ----------
    W : array of any shape (a layer's weight, ``(in, out)`` for Dense)
    l1, l2 : non-negative floats; a zero coefficient skips its term.

    Returns
    -------
    0-d array in ``W``'s dtype, on ``W``'s device.
    """
    total = xp.zeros((), dtype=W.dtype, device=W.device)
    if l1:
        total = total + l1 * xp.sum(xp.abs(W))
    if l2:
        total = total + l2 * xp.sum(W * W)
    return total


def l1_l2_penalty_grad(W: Array, *, l1: float, l2: float, xp: Any) -> Array:
    """``∂P/∂W = l1 · sign(W) + 2 · l2 · W``, same shape and dtype as ``W``.

    ``|w|`` has no derivative at 0; the subgradient 0 is used there (``sign(0) = 0``), as Keras
    and torch's autograd do.
    """
    grad = xp.zeros_like(W)
    if l1:
        grad = grad + l1 * sign(W, xp=xp)
    if l2:
        grad = grad + (2.0 * l2) * W
    return grad


def column_norms(W: Array, *, xp: Any) -> Array:
    """``‖W[:, j]‖₂`` for every column: a ``(out,)`` array for a ``(in, out)`` weight."""
    return xp.sqrt(xp.sum(W * W, axis=0))


def max_norm(W: Array, *, max_value: float, xp: Any) -> Array:
    """Project each column of ``W`` onto the ball of radius ``c = max_value``.

    ``W[:, j] ← W[:, j] · min(1, c / ‖W[:, j]‖₂)``, computed as ``c / max(‖W[:, j]‖, c)`` so that
    columns already inside the ball are left exactly as they are and a zero column needs no
    division by zero. (Keras' ``MaxNorm`` divides by ``eps + ‖w‖``, which also shrinks columns
    inside the ball by a relative ``≈ 1e-7``; this kernel does not.)

    Parameters
    ----------
    W : (in, out) array
    max_value : c > 0

    Returns
    -------
    (in, out) array in ``W``'s dtype; ``W`` itself is not modified.
    """
    norms = column_norms(W, xp=xp)
    c = constant(max_value, W, xp=xp)
    return W * (c / xp.maximum(norms, c))
