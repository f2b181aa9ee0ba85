"""The gradient of a batch assembled from parts: micro-batches (``fit(accumulate=k)``) or ranks.

Both gradient accumulation (:mod:`nnxp.training`) and data-parallel training
(:mod:`nnxp.distributed`) compute the gradient of a batch of ``N`` samples from disjoint parts
of ``n_i`` samples, each part's gradient being the mean over its own samples (the losses
reduce by the mean, with ``1/n_i`` inside the loss gradient; sample weights enter as
``(1/n_i) Σ w_j l_j``). The mean over the whole batch is then exactly

    g = Σ_i (n_i / N) g_i,

whatever the part sizes: a last, smaller part is weighted by what it holds, not by ``1/k``.
:func:`share` is that weight and :func:`part_bounds` the one rule that splits ``m`` positions
into ``parts`` contiguous pieces; :class:`GradientSum` accumulates ``Σ_i (n_i/N) g_i`` over
the parameters of a model, one buffer per parameter.

Weight penalties (``Dense(l1=, l2=)``) add their gradient inside every backward pass, so each
``g_i`` holds it once; the weights ``n_i/N`` sum to 1, so the penalty's gradient appears once
in ``g`` (the penalty's value is added once per step by the training loop).
"""

from __future__ import annotations

from typing import Any

from . import backend
from .typing import Array

__all__ = ["GradientSum", "part_bounds", "share"]


def share(part: int, total: int) -> float:
    """``n_i / N``: the weight of a part of ``part`` samples in a batch of ``total``."""
    return part / total


def part_bounds(m: int, parts: int, index: int) -> tuple[int, int]:
    """``(lo, hi)``: the ``index``-th of ``parts`` contiguous pieces of ``range(m)``.

    Piece ``r`` is ``[⌊r m / p⌋, ⌊(r+1) m / p⌋)``: sizes differ by at most one, and a piece
    is empty only when ``m < parts``.
    """
    return (index * m) // parts, ((index + 1) * m) // parts


class GradientSum:
    """``Σ_i (n_i/N) g_i`` over the parts of a batch of ``total`` samples.

    Call :meth:`add` after each part's backward pass (it reads every ``layer.grads``), then
    :meth:`write` to put the sum into ``layer.grads`` for the optimizer. The sum lives in one
    buffer per parameter, made from the first part's scaled gradient; later parts are added in
    place where the backend's arrays are mutable (numpy, cupy, torch), functionally elsewhere.
    Peak extra memory: one gradient-sized set of buffers (plus, per parameter, the scaled
    temporary of the part being added).
    """

    def __init__(self, model: Any, total: int) -> None:
        self.refs = model.parameters()
        self.total = total
        self.inplace = backend.supports_inplace(model.xp)
        self.sums: list[Array] | None = None

    def add(self, part: int) -> None:
        """Add the current gradients, weighted by ``part / total``."""
        s = share(part, self.total)
        grads = [layer.grads[key] for layer, key in self.refs]
        if self.sums is None:
            self.sums = [g * s for g in grads]  # fresh arrays: never an alias of a layer's grad
            return
        if self.inplace:
            for acc, g in zip(self.sums, grads):
                acc += g * s
        else:
            self.sums = [acc + g * s for acc, g in zip(self.sums, grads)]

    def write(self) -> None:
        """Put the sums into ``layer.grads`` (as the distributed all-reduce and the optimizers'
        clipping do: the gradient entries are replaced, the parameters are untouched)."""
        if self.sums is None:
            raise RuntimeError("GradientSum.write() before any add()")
        for (layer, key), acc in zip(self.refs, self.sums):
            layer.grads[key] = acc
        self.sums = None
