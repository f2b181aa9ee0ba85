"""Inverted dropout (Srivastava et al., 2014), as torch.nn.functional.dropout computes it.

In training every unit is kept with probability ``1 − p`` and the kept units are scaled by
``1 / (1 − p)``, so that ``E[y] = x`` and evaluation needs no rescaling (it is the identity).
The random part — the uniform draws — is made by the caller with a backend generator
(:class:`nnxp.random.BackendGenerator`); these kernels only turn the draws into a mask and apply
it, so they stay pure and deterministic.
"""

from __future__ import annotations

from typing import Any

from ..typing import Array


def dropout_mask(u: Array, *, p: float, xp: Any) -> Array:
    """The scaled keep-mask ``m = 1[u ≥ p] / (1 − p)`` from uniform draws ``u ~ U[0, 1)``.

    ``P(u ≥ p) = 1 − p``, so each entry is ``1/(1 − p)`` with probability ``1 − p`` and 0
    otherwise; ``E[m] = 1``. Same shape and dtype as ``u``.
    """
    return xp.astype(u >= p, u.dtype) * (1.0 / (1.0 - p))


def dropout_forward(x: Array, mask: Array) -> Array:
    """``y = x · m`` with the scaled mask ``m`` of :func:`dropout_mask` (same shape as ``x``)."""
    return x * mask


def dropout_backward(dy: Array, mask: Array) -> Array:
    """``dx = dy · m``: ``y`` is linear in ``x`` with the mask held fixed."""
    return dy * mask
