"""Preprocessing layers: fixed transformations of the input, stored in the model."""

from __future__ import annotations

from typing import Any

from .. import backend
from ..typing import Array
from ..validation import check_count, check_features, check_float_dtype
from .base import Layer


class Standardize(Layer):
    """Feature standardisation ``y = (x − mean) / scale`` as a layer (no trainable parameters).

    Putting the training set's statistics inside the model means that every later
    ``predict`` — from Python or from ``nnxp predict`` — applies the same transformation.
    Backward: ``dx = dy / scale``.

    Parameters
    ----------
    n_features
        Input (and output) width; ``mean`` and ``scale`` are buffers of shape ``(n_features,)``.
    dtype
        Dtype of the buffers (``"float32"`` by default).

    Use :meth:`fit` (or assign the buffers) to set the statistics; a ``scale`` of 0 (a constant
    feature) is stored as 1, so that feature maps to 0.
    """

    def __init__(self, n_features: int, *, dtype: Any = "float32") -> None:
        super().__init__()
        self.in_features = self.out_features = check_count(n_features, argument="n_features")
        self.dtype = check_float_dtype(dtype, self.xp)
        self.buffers["mean"] = self.xp.zeros((n_features,), dtype=self.dtype, device=self.device)
        self.buffers["scale"] = self.xp.ones((n_features,), dtype=self.dtype, device=self.device)

    def fit(self, X: Any) -> Standardize:
        """Set ``mean`` and ``scale`` (population standard deviation) from the rows of ``X``."""
        X = check_features(X, n_features=self.in_features, dtype=self.dtype, xp=self.xp,
                           device=self.device)
        xp = self.xp
        mean = xp.mean(X, axis=0)
        std = xp.sqrt(xp.mean((X - mean) ** 2, axis=0))
        self.buffers["mean"] = mean
        self.buffers["scale"] = xp.where(std > 0, std, xp.ones_like(std))
        return self

    def get_config(self) -> dict[str, Any]:
        return {"n_features": self.in_features, "dtype": backend.dtype_name(self.dtype)}

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self._cache = True if training else None
        mean, scale = self._statistics(x.dtype)
        return (x - mean) / scale

    def backward(self, dy: Array) -> Array:
        self._take_cache()
        return dy / self._statistics(dy.dtype)[1]

    def _statistics(self, dtype: Any) -> tuple[Array, Array]:
        """``mean`` and ``scale`` in the dtype of the data. Under mixed precision
        (``fit(precision="float16")``) the batch arrives in the compute dtype while the buffers
        stay float32; without the cast, type promotion would hand the next layer float32 (numpy)
        or refuse the mix in its matrix product (torch)."""
        mean, scale = self.buffers["mean"], self.buffers["scale"]
        if dtype == mean.dtype:
            return mean, scale
        return self.xp.astype(mean, dtype), self.xp.astype(scale, dtype)

    def __repr__(self) -> str:
        return f"Standardize({self.in_features})"
