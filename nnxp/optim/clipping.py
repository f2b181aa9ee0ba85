"""Gradient clipping on ``(layer, key)`` pairs: torch.nn.utils' clip_grad_norm_ / _value_.

The arithmetic is in :mod:`nnxp.kernels.clipping`; these functions find the gradients, choose the
in-place or functional path and write the results back into ``layer.grads``. Optimizers clip on
every step through their ``clip_norm`` / ``clip_value`` options instead (no host round trip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import backend
from ..kernels import clipping as clip_k
from ..typing import Array
from ..validation import check_above_zero
from .base import ParamRef, xp_of


def _grads_of(params: Sequence[ParamRef], fn: str) -> list[Array]:
    refs = list(params)
    if not refs:
        raise ValueError(f"{fn} needs at least one (layer, key) pair, got none")
    out = []
    for layer, key in refs:
        if key not in layer.grads:
            raise RuntimeError(f"{fn}: no gradient for {layer!r}.params[{key!r}]; run "
                               "backward first")
        out.append(layer.grads[key])
    return out


def clip_grad_norm_(
    params: Sequence[ParamRef], max_norm: float, norm_type: float = 2.0, *,
    error_if_nonfinite: bool = False,
) -> float:
    """Rescale the gradients of ``params`` together so that their global norm is <= max_norm.

    torch.nn.utils.clip_grad_norm_ semantics: with ``‖g‖`` the ``norm_type``-norm of all
    gradients concatenated, every gradient is multiplied by ``min(1, max_norm / (‖g‖ + 1e-6))``
    (so gradients within the bound are left unchanged), in place on mutable backends and by
    replacing ``layer.grads[key]`` elsewhere. This is the standard remedy for exploding gradients:
    it keeps the direction and caps the step length.

    Parameters
    ----------
    params
        ``(layer, key)`` pairs, e.g. ``model.parameters()``.
    max_norm
        The bound (> 0).
    norm_type
        p of the p-norm (> 0), ``math.inf`` for the max-norm.
    error_if_nonfinite
        Raise instead of clipping when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm *before* clipping (one device-to-host transfer).
    """
    max_norm = check_above_zero(max_norm, argument="clip_grad_norm_: max_norm")
    norm_type = check_above_zero(norm_type, argument="clip_grad_norm_: norm_type")
    refs = list(params)
    grads = _grads_of(refs, "clip_grad_norm_")
    layer0, key0 = refs[0]
    xp = xp_of(layer0, key0)
    total = clip_k.global_norm(grads, norm_type=norm_type, xp=xp)
    total_f = backend.to_float(total)
    if error_if_nonfinite and not math.isfinite(total_f):
        raise FloatingPointError(f"clip_grad_norm_: the total gradient norm is {total_f}; the "
                                 "gradients exploded or the loss is NaN (lower the learning rate)")
    inplace = all(backend.supports_inplace(xp_of(lay, key)) for lay, key in refs)
    clipped, _ = clip_k.clip_by_global_norm(grads, max_norm, norm_type=norm_type, xp=xp,
                                            inplace=inplace)
    for (layer, key), g in zip(refs, clipped):
        layer.grads[key] = g
    return total_f


def clip_grad_value_(params: Sequence[ParamRef], clip_value: float) -> None:
    """Clamp every gradient entry of ``params`` into ``[-clip_value, clip_value]``.

    torch.nn.utils.clip_grad_value_ semantics; in place on mutable backends.
    """
    clip_value = check_above_zero(clip_value, argument="clip_grad_value_: clip_value")
    refs = list(params)
    grads = _grads_of(refs, "clip_grad_value_")
    layer0, key0 = refs[0]
    xp = xp_of(layer0, key0)
    inplace = all(backend.supports_inplace(xp_of(lay, key)) for lay, key in refs)
    for (layer, key), g in zip(refs, clip_k.clip_by_value(grads, clip_value, xp=xp,
                                                          inplace=inplace)):
        layer.grads[key] = g
