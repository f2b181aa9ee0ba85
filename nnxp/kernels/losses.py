"""Loss kernels. Every loss is the mean over the batch, so its gradient carries the ``1/batch``."""

from __future__ import annotations

from typing import Any, NamedTuple

Array = Any


def log_softmax(z: Array, *, xp: Any) -> Array:
    """``log softmax(z)`` along the last axis, by the log-sum-exp shift (never overflows).

    ``log softmax(z)_k = z_k − m − log Σ_j exp(z_j − m)`` with ``m = max_j z_j``.
    """
    shifted = z - xp.max(z, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def softmax(z: Array, *, xp: Any) -> Array:
    """``softmax(z)_k = exp(z_k − m) / Σ_j exp(z_j − m)`` along the last axis (rows sum to 1)."""
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


class SoftmaxCrossEntropyCache(NamedTuple):
    probs: Array  # (batch, classes) softmax of the logits
    onehot: Array  # (batch, classes) one-hot targets in the logits' dtype


def one_hot(labels: Array, n_classes: int, *, dtype: Any, xp: Any) -> Array:
    """``(batch,)`` integer labels → ``(batch, n_classes)`` one-hot rows of ``dtype``."""
    classes = xp.arange(n_classes, dtype=labels.dtype, device=labels.device)
    return xp.astype(labels[:, None] == classes, dtype)


def softmax_cross_entropy(
    logits: Array, labels: Array, *, xp: Any
) -> tuple[Array, SoftmaxCrossEntropyCache]:
    """Fused softmax + cross-entropy on integer labels, mean over the batch.

    ``L = −(1/N) Σ_i log softmax(z_i)_{y_i}``, computed from :func:`log_softmax`, so it stays
    finite for logits of any size.

    Parameters
    ----------
    logits : (N, C) float array
    labels : (N,) integer array with values in [0, C)

    Returns
    -------
    loss : 0-d array in the logits' dtype, and the cache for the backward pass.
    """
    n = logits.shape[0]
    logp = log_softmax(logits, xp=xp)
    onehot = one_hot(labels, logits.shape[-1], dtype=logits.dtype, xp=xp)
    loss = -xp.sum(logp * onehot) / n
    return loss, SoftmaxCrossEntropyCache(xp.exp(logp), onehot)


def softmax_cross_entropy_backward(cache: SoftmaxCrossEntropyCache, *, xp: Any) -> Array:
    """``∂L/∂z = (softmax(z) − onehot(y)) / N``."""
    return (cache.probs - cache.onehot) / cache.probs.shape[0]
