"""Batch normalisation (Ioffe & Szegedy, 2015) and layer normalisation (Ba et al., 2016).

Both normalise ``x̂ = (x − μ) · invstd`` with ``invstd = 1/√(σ² + eps)`` and apply a learned
affine map ``y = γ · x̂ + β`` per feature. They differ in the axis the statistics run over:

* batch norm — per feature, over the batch (axis 0): ``μ, σ²`` have shape ``(features,)``;
* layer norm — per sample, over the features (the last axis): ``μ, σ²`` have shape ``(batch, 1)``.

Conventions follow ``torch.nn.BatchNorm1d`` / ``torch.nn.LayerNorm``: ``σ²`` is the *biased*
variance ``(1/N) Σ (x − μ)²`` in the normalisation, ``eps = 1e-5`` is added to the variance
inside the square root, and batch norm's running variance stores the *unbiased* estimate
``N/(N − 1) · σ²``, updated as ``running ← (1 − momentum) · running + momentum · batch_stat``.

Means and variances are computed in two passes (the mean first, then the mean of squared
deviations), never as ``E[x²] − E[x]²``, which cancels catastrophically for features whose mean
is large next to their spread (e.g. values around 1e4 with unit spread in float32), and after
subtracting a shift (the first sample), so that ``x − μ`` does not carry the rounding of a large
``μ``: see :func:`moments`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..typing import Array
from .accumulate import accumulator, upcast


class NormCache(NamedTuple):
    """What the backward passes need: the normalised input and the inverse std."""

    xhat: Array  # same shape as x: (x − μ) · invstd
    invstd: Array  # (features,) for batch norm, (batch, 1) for layer norm
    gamma: Array | None  # (features,) or None without an affine map


class BatchNormCache(NamedTuple):
    """What :func:`batch_norm_backward` needs: the *centred* input and the inverse std.

    Batch norm keeps ``x − μ`` rather than ``x̂``: the forward pass then writes ``y`` in two
    passes from it (``(x − μ) · (γ invstd) + β``, the per-feature product taken once on a
    (C,) vector) instead of three, and never forms ``x̂`` at all; the backward pass folds
    ``invstd`` into per-feature factors in the same way (see :func:`batch_norm_backward`).
    """

    centred: Array  # (N, C): x − μ
    invstd: Array  # (C,)
    gamma: Array | None  # (C,) or None without an affine map


def moments(x: Array, *, axis: int, xp: Any) -> tuple[Array, Array]:
    """Shifted two-pass mean and biased variance of ``x`` along ``axis`` (kept as size 1).

    With the shift ``K`` = the first element along ``axis`` and ``x' = x − K``:
    ``μ' = (1/N) Σ x'``, ``σ² = (1/N) Σ (x' − μ')²``, ``μ = K + μ'`` (``N = x.shape[axis]``).
    Variance ignores the shift; subtracting a sample first makes ``x'`` small (exactly
    representable when the values lie within a factor 2 of ``K``, Sterbenz's lemma), so the
    mean of the deviations is accurate even when ``|μ|`` is large next to the spread: for
    features around 1e4 with unit spread in float32, ``x − μ`` formed directly carries the
    rounding of ``μ`` (half an ulp of 1e4, ≈ 5e-4); formed as ``x' − μ'`` it does not.
    """
    mean, var, _ = _moments_centred(x, axis=axis, xp=xp)
    return mean, var


def _moments_centred(x: Array, *, axis: int, xp: Any) -> tuple[Array, Array, Array]:
    """:func:`moments` and the centred input ``x − μ`` (formed as ``x' − μ'``)."""
    n = x.shape[axis]
    index = [slice(None)] * x.ndim
    index[axis] = slice(0, 1)
    first = x[tuple(index)]
    shifted = x - first
    mean_shifted = xp.sum(shifted, axis=axis, keepdims=True) / n
    centred = shifted - mean_shifted
    var = xp.sum(centred * centred, axis=axis, keepdims=True) / n
    return first + mean_shifted, var, centred


def _affine(xhat: Array, gamma: Array | None, beta: Array | None) -> Array:
    y = xhat if gamma is None else xhat * gamma
    return y if beta is None else y + beta


# ----------------------------------------------------------------------------------------------
# Batch normalisation
# ----------------------------------------------------------------------------------------------


def batch_norm_forward_train(
    x: Array, gamma: Array | None, beta: Array | None, *, eps: float, xp: Any,
    accumulate_dtype: Any = None,
) -> tuple[Array, BatchNormCache, Array, Array]:
    """Batch norm in training mode: normalise with the statistics of this batch.

    ``μ_j = (1/N) Σ_i x_ij``, ``σ²_j = (1/N) Σ_i (x_ij − μ_j)²``,
    ``x̂_ij = (x_ij − μ_j) / √(σ²_j + eps)``, ``y_ij = γ_j x̂_ij + β_j``.

    Parameters
    ----------
    x : (N, C) array, N ≥ 2 (a batch of one has no spread: the caller refuses it)
    gamma, beta : (C,) arrays, or None for no scale / no shift
    eps : added to the variance

    Returns
    -------
    y : (N, C); cache : :class:`BatchNormCache`; mean : (C,); var : (C,) the *biased* batch variance
    (the caller turns it into the unbiased running estimate with :func:`update_running_stats`).

    A float16/bfloat16 ``x`` is normalised in float32 (``accumulate_dtype``, see
    :mod:`nnxp.kernels.accumulate`): the statistics come back in float32, ``y`` and the cached
    ``x − μ`` in ``x``'s dtype.
    """
    acc = accumulator(x.dtype, xp, accumulate_dtype)
    mean, var, centred = _moments_centred(upcast(x, acc, xp), axis=0, xp=xp)
    invstd = 1.0 / xp.sqrt(var[0, ...] + eps)  # (C,)
    g = upcast(gamma, acc, xp)
    # γ · invstd on the (C,) vector, then one pass over (N, C): x̂ itself is never formed
    y = centred * (invstd if g is None else g * invstd)
    if beta is not None:
        y = y + upcast(beta, acc, xp)
    if acc is not None:  # statistics stay float32; y and the cache in x's dtype
        y, centred = xp.astype(y, x.dtype), xp.astype(centred, x.dtype)
    return y, BatchNormCache(centred, invstd, gamma), mean[0, ...], var[0, ...]


def batch_norm_forward_eval(
    x: Array, gamma: Array | None, beta: Array | None, running_mean: Array, running_var: Array,
    *, eps: float, xp: Any,
) -> Array:
    """Batch norm in evaluation mode: ``y = γ (x − running_mean) / √(running_var + eps) + β``.

    ``x`` : (N, C); the running statistics, ``gamma`` and ``beta`` : (C,). Any N ≥ 1.
    """
    xhat = (x - running_mean) / xp.sqrt(running_var + eps)
    return _affine(xhat, gamma, beta)


def update_running_stats(
    running_mean: Array, running_var: Array, mean: Array, var: Array, *, n: int,
    momentum: float,
) -> tuple[Array, Array]:
    """Exponential moving averages of the batch statistics (torch's convention).

    ``running_mean ← (1 − m) · running_mean + m · μ``,
    ``running_var ← (1 − m) · running_var + m · σ² · N/(N − 1)`` (the unbiased variance),
    where ``m = momentum`` is the weight of the *new* statistic (Keras' ``momentum`` is ``1 − m``).
    All arrays are ``(C,)``; new arrays are returned.
    """
    unbiased = var * (n / (n - 1))
    new_mean = (1.0 - momentum) * running_mean + momentum * mean
    new_var = (1.0 - momentum) * running_var + momentum * unbiased
    return new_mean, new_var


def batch_norm_backward(
    dy: Array, cache: BatchNormCache, *, xp: Any, accumulate_dtype: Any = None
) -> tuple[Array, Array | None, Array]:
    """Gradients of batch norm in training mode, the batch statistics included.

    With every sum over the batch axis and ``x̂ = (x − μ) · invstd``:

    * ``dβ = Σ_i dy_ij``                                             (C,)
    * ``dγ = Σ_i dy_ij · x̂_ij``                                       (C,)
    * ``dx = (1/N) · γ · invstd · (N · dy − Σ_i dy − x̂ · Σ_i dy · x̂)``  (N, C)

    The last line is the compact form of the chain rule through ``μ`` and ``σ²``: the terms
    ``−Σ dy`` and ``−x̂ Σ dy·x̂`` remove the components of ``dy`` along the constant and along
    ``x̂``, the two directions that the normalisation is invariant to.

    From the cached centred input ``c = x − μ`` every per-feature factor is folded into (C,)
    vectors first: ``S = Σ_i dy · c`` (so ``dγ = invstd · S``), ``a = γ invstd``,
    ``b = −a · dβ / N``, ``k = −a · invstd² · S / N``, and ``dx = a · dy + (k · c + b)``:
    four passes over (N, C) for ``dx`` and three for the two sums.

    Returns
    -------
    dx : (N, C); dgamma : (C,) or None without ``gamma``; dbeta : (C,)

    A float16/bfloat16 ``dy`` is differentiated in float32 (``accumulate_dtype``): ``dx`` comes
    back in ``dy``'s dtype, ``dgamma`` and ``dbeta`` in float32.
    """
    centred, invstd, gamma = cache
    acc = accumulator(dy.dtype, xp, accumulate_dtype)
    dy_in = dy
    dy, centred, gamma = upcast(dy, acc, xp), upcast(centred, acc, xp), upcast(gamma, acc, xp)
    n = dy.shape[0]
    dbeta = xp.sum(dy, axis=0)
    s_dyc = xp.sum(dy * centred, axis=0)
    dgamma = s_dyc * invstd
    a = invstd if gamma is None else gamma * invstd
    b = a * dbeta * (-1.0 / n)
    k = a * dgamma * invstd * (-1.0 / n)
    dx = a * dy + (k * centred + b)
    if acc is not None:
        dx = xp.astype(dx, dy_in.dtype)
    return dx, (None if gamma is None else dgamma), dbeta


# ----------------------------------------------------------------------------------------------
# Layer normalisation
# ----------------------------------------------------------------------------------------------


def layer_norm_forward(
    x: Array, gamma: Array | None, beta: Array | None, *, eps: float, xp: Any,
    accumulate_dtype: Any = None,
) -> tuple[Array, NormCache]:
    """Layer norm: normalise every sample over its features (the last axis).

    ``μ_i = (1/D) Σ_j x_ij``, ``σ²_i = (1/D) Σ_j (x_ij − μ_i)²``,
    ``x̂_ij = (x_ij − μ_i) / √(σ²_i + eps)``, ``y_ij = γ_j x̂_ij + β_j``.
    The same in training and evaluation (no running statistics).

    Parameters
    ----------
    x : (N, D) array (any leading shape works; the statistics run over the last axis)
    gamma, beta : (D,) arrays or None

    Returns
    -------
    y : same shape as ``x``; cache : :class:`NormCache` with ``invstd`` of shape (N, 1).
    A float16/bfloat16 ``x`` is normalised in float32 (``accumulate_dtype``), as in
    :func:`batch_norm_forward_train`; ``y`` and the cached ``x̂`` come back in ``x``'s dtype.
    """
    acc = accumulator(x.dtype, xp, accumulate_dtype)
    _, var, centred = _moments_centred(upcast(x, acc, xp), axis=-1, xp=xp)
    invstd = 1.0 / xp.sqrt(var + eps)
    xhat = centred * invstd
    y = _affine(xhat, upcast(gamma, acc, xp), upcast(beta, acc, xp))
    if acc is not None:
        y, xhat = xp.astype(y, x.dtype), xp.astype(xhat, x.dtype)
    return y, NormCache(xhat, invstd, gamma)


def layer_norm_backward(
    dy: Array, cache: NormCache, *, xp: Any, accumulate_dtype: Any = None
) -> tuple[Array, Array | None, Array]:
    """Gradients of layer norm.

    With ``g = γ · dy`` (``dy`` itself without ``γ``) and ``D`` features per sample:

    * ``dβ = Σ_i dy_ij``,  ``dγ = Σ_i dy_ij · x̂_ij``  (sums over the batch; shape (D,))
    * ``dx_ij = invstd_i · (g_ij − (1/D) Σ_k g_ik − x̂_ij · (1/D) Σ_k g_ik x̂_ik)``

    the same projection as batch norm's, taken per sample over the features.

    Returns
    -------
    dx : same shape as ``dy``; dgamma : (D,) or None; dbeta : (D,). A float16/bfloat16
    ``dy`` is differentiated in float32; ``dx`` comes back in its dtype, dgamma, dbeta float32.
    """
    xhat, invstd, gamma = cache
    acc = accumulator(dy.dtype, xp, accumulate_dtype)
    dy_dtype = dy.dtype
    dy, xhat, gamma = upcast(dy, acc, xp), upcast(xhat, acc, xp), upcast(gamma, acc, xp)
    d = dy.shape[-1]
    g = dy if gamma is None else dy * gamma
    mean_g = xp.sum(g, axis=-1, keepdims=True) / d
    mean_gx = xp.sum(g * xhat, axis=-1, keepdims=True) / d
    dx = invstd * (g - mean_g - xhat * mean_gx)
    flat_dy = xp.reshape(dy, (-1, d))
    flat_xhat = xp.reshape(xhat, (-1, d))
    dbeta = xp.sum(flat_dy, axis=0)
    dgamma = xp.sum(flat_dy * flat_xhat, axis=0)
    if acc is not None:
        dx = xp.astype(dx, dy_dtype)
    return dx, (None if gamma is None else dgamma), dbeta
