"""Optimizer objects: they own per-parameter state and call the update kernels.

An optimizer is bound to a model's parameters by ``Sequential.fit`` (or by calling
``optimizer.bind(model.parameters())``); ``step()`` then reads every ``layer.grads[key]`` and
updates ``layer.params[key]`` — in place where the backend's arrays are mutable (numpy, cupy,
torch), functionally elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import backend
from .kernels import optimizers as k
from .validation import check_positive

ParamRef = tuple[Any, str]
"""``(layer, key)``: the parameter ``layer.params[key]`` with gradient ``layer.grads[key]``."""


class Optimizer:
    """Base class: the binding to parameters and the ``step`` loop."""

    def __init__(self) -> None:
        self._refs: list[ParamRef] = []
        self._inplace = False
        self.iterations = 0

    def bind(self, params: Sequence[ParamRef]) -> None:
        """Attach to ``params`` (pairs of ``(layer, key)``); state is (re)allocated lazily."""
        self._refs = list(params)
        self._inplace = bool(self._refs) and all(
            backend.supports_inplace(layer.xp) for layer, _ in self._refs
        )

    def step(self) -> None:
        """Apply one update to every bound parameter from its current gradient."""
        if not self._refs:
            raise RuntimeError(f"{type(self).__name__}.step() before bind(): call "
                               "optimizer.bind(model.parameters()) or pass it to fit()")
        for index, (layer, key) in enumerate(self._refs):
            try:
                grad = layer.grads[key]
            except KeyError:
                raise RuntimeError(f"no gradient for {layer!r}.params[{key!r}]: run backward "
                                   "before step()") from None
            layer.params[key] = self._update(index, layer.params[key], grad)
        self.iterations += 1

    def _update(self, index: int, param: Any, grad: Any) -> Any:
        raise NotImplementedError


class SGD(Optimizer):
    """Gradient descent ``θ ← θ − lr · g`` (torch.optim.SGD with its defaults).

    Batch, mini-batch and stochastic gradient descent are this same optimizer driven with
    different batch sizes by ``fit(batch_size=...)``.

    Parameters
    ----------
    lr
        Learning rate (> 0).
    """

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = float(check_positive(lr, argument="lr"))

    def _update(self, index: int, param: Any, grad: Any) -> Any:
        return k.sgd_update(param, grad, lr=self.lr, inplace=self._inplace)

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr})"
