"""Activation layers: each wraps a kernel pair from ``nnxp.kernels.activations``."""

from __future__ import annotations

from typing import Any

from ..kernels import activations as act
from .core import Layer

Array = Any


class ReLU(Layer):
    """Rectified linear unit ``y = max(x, 0)``; derivative 1 for x > 0, else 0."""

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.relu(x, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.relu_backward(dy, self._take_cache(), xp=self.xp)
