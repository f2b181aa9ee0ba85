"""Sync-free building blocks: device constants, index ranges, clamping and sign.

Three namespace functions cost a GPU backend a wait on the host, which is why the kernels use
these instead (``docs/design.md``, "The GPU rule, enforced"; ``tests/test_sync.py`` counts it):

* ``xp.maximum(x, 0.0)`` and ``xp.minimum``: array-api-compat's torch namespace turns a Python
  scalar operand into a tensor (``torch.asarray(0.0, device=...)``), a blocking host-to-device
  copy on every call. :func:`constant` gives the same value as a 0-d array of ``x``'s dtype on
  ``x``'s device, made once (by ``xp.full``, a fill on the device, never a copy) and reused.
* ``xp.clip``: on CuPy, array-api-compat's generic ``clip`` copies its bounds to the device and
  writes through boolean masks, and CuPy reads the number of masked elements back.
  :func:`clamp` is ``minimum(maximum(x, low), high)`` with constant bounds: the same values
  (NaN propagates, as in ``clip``), one elementwise pass per bound.
* ``xp.sign``: on CuPy and torch, array-api-compat repairs NaN with a boolean-mask write
  (``out[isnan(x)] = nan``), a synchronisation. :func:`sign` selects instead.

:func:`constant` keeps one process-wide memo of immutable 0-d arrays, keyed by value,
namespace, dtype and device (a few entries per device and dtype in practice; it is emptied
if it ever holds more than 4096). :func:`index_range` keeps the ranges ``0, 1, ..., n − 1``
that :func:`~nnxp.kernels.losses.one_hot` compares labels with in the same memo, keyed by
length, namespace, dtype and device: made on every call, the range of a small MLP's ten classes
cost about 2 µs (array-api-compat's ``arange`` and its device check), a share of a 0.1 ms
training step, and one more operation on the device. It is the one cache in the kernels: it
holds no state that a result depends on, only arrays that no kernel writes to, so the kernels
stay pure functions.
"""

from __future__ import annotations

import math
from typing import Any

from ..typing import Array

_MEMO: dict[tuple[Any, ...], Array] = {}
_MEMO_LIMIT = 4096


def constant(value: float, like: Array, *, xp: Any) -> Array:
    """``value`` as a 0-d array of ``like``'s dtype on ``like``'s device, made once.

    Pass it where a namespace function needs an array operand (``maximum``, ``minimum``); with
    Python operators (``x * 0.5``, ``x > 0``) a Python scalar costs nothing and needs no
    constant. The result must not be written to.
    """
    device = like.device
    key = (value, math.copysign(1.0, value), xp, like.dtype, device)
    try:
        return _MEMO[key]
    except KeyError:
        return _remember(key, xp.full((), value, dtype=like.dtype, device=device))


def _remember(key: tuple[Any, ...], array: Array) -> Array:
    """Keep ``array`` under ``key`` (the memo is emptied when it holds too many)."""
    if len(_MEMO) >= _MEMO_LIMIT:
        _MEMO.clear()
    _MEMO[key] = array
    return array


def index_range(n: int, like: Array, *, xp: Any) -> Array:
    """``xp.arange(n)`` in ``like``'s (integer) dtype on ``like``'s device, made once.

    The same array as ``xp.arange(n, dtype=like.dtype, device=like.device)``; it must not be
    written to.
    """
    device = like.device
    key = ("arange", n, xp, like.dtype, device)
    try:
        return _MEMO[key]
    except KeyError:
        return _remember(key, xp.arange(n, dtype=like.dtype, device=device))


def clamp(x: Array, low: float | None = None, high: float | None = None, *, xp: Any) -> Array:
    """``min(max(x, low), high)`` elementwise, what ``xp.clip(x, low, high)`` computes.

    Either bound may be None. The same values as ``clip`` for every input, NaN included (both
    ``maximum`` and ``minimum`` propagate it); dtype and device of ``x``.
    """
    if low is not None:
        x = xp.maximum(x, constant(low, x, xp=xp))
    if high is not None:
        x = xp.minimum(x, constant(high, x, xp=xp))
    return x


def sign(x: Array, *, xp: Any) -> Array:
    """``sign(x)``: 1 for x > 0, −1 for x < 0, 0 at 0, NaN for NaN; dtype and device of ``x``.

    ``1[x > 0] − 1[x < 0]``, with NaN passed through by selection rather than written through a
    mask.
    """
    s = xp.astype(x > 0, x.dtype) - xp.astype(x < 0, x.dtype)
    return xp.where(xp.isnan(x), x, s)
