"""Type aliases shared across nnxp (one home, as ``numpy.typing`` is NumPy's)."""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Array"]

Array: TypeAlias = Any
"""An array of whichever backend is active: ``numpy.ndarray``, ``cupy.ndarray``,
``torch.Tensor``, ``array_api_strict.Array``. The array API standard defines no static type that
all of them satisfy, so for the type checker this is ``Any``; docstrings give shapes and dtypes."""
