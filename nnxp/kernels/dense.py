"""The fully connected (dense) layer: y = x W + b, batch first.

Notation: ``x`` is ``(batch, in)``, ``W`` is ``(in, out)``, ``b`` is ``(out,)``. The column
notation of most course notes, ``Z = W X + b`` with one sample per column, is the transpose of this
(their ``W`` is our ``Wᵀ``); docs/design.md maps the equations one by one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..typing import Array


class DenseCache(NamedTuple):
    """What the backward pass needs from the forward pass."""

    x: Array  # (batch, in_features): the input the forward pass saw
    W: Array  # (in_features, out_features)


def dense_forward(x: Array, W: Array, b: Array | None) -> tuple[Array, DenseCache]:
    """Forward pass ``y = x W + b``.

    Parameters
    ----------
    x : (batch, in) array
    W : (in, out) array
    b : (out,) array or None (no bias)

    Returns
    -------
    y : (batch, out) array, and the :class:`DenseCache` for :func:`dense_backward`.
    """
    y = x @ W
    if b is not None:
        y += b  # y is a fresh array: adding in place saves one (batch, out) temporary
    return y, DenseCache(x, W)


def dense_backward(
    dy: Array, cache: DenseCache, *, xp: Any, need_dx: bool = True,
    out: tuple[Array, Array | None] | None = None, writer: Any = None,
) -> tuple[Array | None, Array, Array]:
    """Gradients of a scalar loss L through ``y = x W + b``.

    With ``dy = ∂L/∂y`` of shape (batch, out):

    * ``dx = dy Wᵀ``   (batch, in)  — skipped (``None``) when ``need_dx`` is False, as for the
      first layer, whose input is data
    * ``dW = xᵀ dy``   (in, out)
    * ``db = Σ_batch dy``  (out,)

    ``out=(dW_out, db_out)`` with a ``writer`` (:func:`nnxp.backend.out_writer`) writes ``dW``
    and ``db`` into those arrays (views into a flat gradient buffer) by the library's ``out=``
    form of the same two operations, and returns them; ``db_out`` may be None (no bias:
    ``db`` is then computed as usual).
    """
    dx = dy @ cache.W.T if need_dx else None
    if out is not None and writer is not None:
        dW = writer.matmul(cache.x.T, dy, out[0])
        db = xp.sum(dy, axis=0) if out[1] is None else writer.sum0(dy, out=out[1])
        return dx, dW, db
    dW = cache.x.T @ dy
    db = xp.sum(dy, axis=0)
    return dx, dW, db
