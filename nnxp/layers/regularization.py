"""Regularisation layers: ``Dropout``.

(Weight penalties and the max-norm constraint are options of the layers that own the weights:
``Dense(..., l1=, l2=, max_norm=)``.)
"""

from __future__ import annotations

from typing import Any

from ..kernels import dropout as k
from ..random import BackendGenerator, Generator
from ..typing import Array
from ..validation import check_dropout_rate
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: zero each unit with probability ``p`` while training.

    Training: ``y = x · m`` with ``m_ij = 1/(1 − p)`` with probability ``1 − p`` and 0 otherwise,
    a fresh mask for every call; ``E[y] = x``. Evaluation: ``y = x`` (the identity).
    Backward: ``dx = dy · m`` with the mask of the last training forward.

    Parameters
    ----------
    p
        Probability of dropping a unit, in ``[0, 1)`` (``p = 0`` is the identity).
    seed
        Seed of the mask generator when the layer is used on its own; ``Sequential(seed=...)``
        reseeds it from the model's seed (through :meth:`reset_parameters`).

    Notes
    -----
    Masks come from the backend's own generator (see :class:`nnxp.random.BackendGenerator`):
    a seed reproduces the same masks on the same backend and device, but the masks differ from
    one backend to another (unlike initial weights, which a seed fixes on every backend).
    """

    def __init__(self, p: float = 0.5, *, seed: int | None = None) -> None:
        super().__init__()
        self.p = check_dropout_rate(p, argument="p")
        self.generator = BackendGenerator(seed, self.xp, self.device)

    def reset_parameters(self, rng: Generator) -> None:
        """Reseed the mask generator from ``rng`` (there are no parameters)."""
        self.generator = BackendGenerator(rng.integers(2**63 - 1), self.xp, self.device)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if not training:
            self._cache = None
            return x
        if self.p == 0.0:
            self._cache = _IDENTITY
            return x
        u = self.generator.uniform(tuple(x.shape), x.dtype)
        mask = k.dropout_mask(u, p=self.p, xp=self.xp)
        self._cache = mask
        return k.dropout_forward(x, mask)

    def backward(self, dy: Array) -> Array:
        mask = self._take_cache()
        if mask is _IDENTITY:
            return dy
        return k.dropout_backward(dy, mask)

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p}

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


_IDENTITY = object()  # the cache of a p = 0 forward: backward passes dy through
