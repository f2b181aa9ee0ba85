"""The accumulation dtype of reductions: at least float32, whatever the input's dtype.

Mixed precision (:mod:`nnxp.precision`) runs the kernels on float16 or bfloat16 arrays; their
sums (batch- and layer-norm statistics, the softmax denominator) must not accumulate in 11 or 8
bits of mantissa, nor overflow float16's 65,504. The kernels take an ``accumulate_dtype``
keyword; ``None`` means :func:`accumulator`'s rule, the wider of the input's dtype and float32.
For float32 and float64 inputs that is the input's own dtype, and every kernel then runs
exactly the operations it always ran (bit for bit): the rule is one source for every dtype,
not a dtype-specific kernel.
"""

from __future__ import annotations

from typing import Any

from ..typing import Array


def accumulator(dtype: Any, xp: Any, requested: Any = None) -> Any:
    """The dtype to accumulate reductions of ``dtype`` arrays in, or None when that is no wider
    than ``dtype`` itself (the kernels then take their usual path). ``requested`` (a kernel's
    ``accumulate_dtype``) overrides the default of float32.

    The rule reads ``finfo(dtype).bits`` rather than ``xp.result_type``, which on torch builds
    tensors for pairs outside array-api-compat's table (bfloat16): a host-to-device copy per
    call on a GPU (``tests/test_sync.py``)."""
    acc = xp.float32 if requested is None else requested
    wide_enough = xp.finfo(dtype).bits >= xp.finfo(acc).bits  # host metadata: no device value
    return None if wide_enough else acc


def upcast(x: Array | None, acc: Any, xp: Any) -> Array | None:
    """``x`` in the accumulation dtype (None stays None; no copy when ``acc`` is None)."""
    return x if x is None or acc is None else xp.astype(x, acc)


def sum_as(x: Array, *, axis: int, xp: Any, acc: Any) -> Array:
    """``sum(x, axis, keepdims=True)`` accumulated in ``acc`` and returned in ``x``'s dtype."""
    if acc is None:
        return xp.sum(x, axis=axis, keepdims=True)
    return xp.astype(xp.sum(x, axis=axis, keepdims=True, dtype=acc), x.dtype)
