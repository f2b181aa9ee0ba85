"""The layer protocol, its base class, and the dense layer.

The layer protocol, which the model, the optimizers and users' own layers rely on:

* ``params``  — dict of trainable arrays;
* ``grads``   — dict with the same keys, overwritten by every ``backward``;
* ``buffers`` — dict of non-trainable state (e.g. running statistics);
* ``forward(x, *, training=True) -> y`` keeps what ``backward`` needs only when ``training``;
* ``backward(dy) -> dx`` fills ``grads``, drops the cache and returns ``∂L/∂x``. Calling it
  without a training-mode forward first raises :class:`BackwardError`.

A layer is bound to the backend (namespace and device) that was active when it was created.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..init import Initializer, get_initializer
from ..kernels import dense as dense_k
from ..random import Generator

Array = Any


class BackwardError(RuntimeError):
    """``backward`` was called without a preceding ``forward(..., training=True)``."""


class Layer:
    """Base class: empty ``params``/``grads``/``buffers`` and the backend binding."""

    def __init__(self) -> None:
        info = backend.get_backend()
        self.xp = info.xp
        self.device = info.device
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self._cache: Any = None

    def forward(self, x: Array, *, training: bool = True) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array, *, training: bool = False) -> Array:
        return self.forward(x, training=training)

    def reset_parameters(self, rng: Generator) -> None:
        """Draw fresh parameters from ``rng`` (layers without parameters do nothing)."""

    def _take_cache(self) -> Any:
        cache, self._cache = self._cache, None
        if cache is None:
            raise BackwardError(
                f"{type(self).__name__}.backward() needs a forward(x, training=True) first: "
                "the forward pass in evaluation mode (training=False) keeps nothing to "
                "differentiate, and each backward consumes the cache of one forward"
            )
        return cache

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Dense(Layer):
    """Fully connected layer ``y = x @ W + b``.

    Parameters
    ----------
    in_features, out_features
        ``W`` has shape ``(in_features, out_features)`` and ``b`` shape ``(out_features,)``.
    init
        Weight initialiser, by name (see ``nnxp.init.INITIALIZERS``) or callable; ``"he_normal"``
        (std √(2/in_features)) suits ReLU networks.
    bias
        Whether to learn ``b``.
    dtype
        Parameter dtype, ``"float32"`` by default.
    seed
        Seed for the initial weights when the layer is used on its own; ``Sequential(seed=...)``
        redraws every layer's parameters from its own seed.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init: str | Initializer = "he_normal",
        bias: bool = True,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.init = get_initializer(init)
        self.use_bias = bias
        self.dtype = backend.resolve_dtype(dtype, self.xp)
        self.reset_parameters(Generator(seed))

    def reset_parameters(self, rng: Generator) -> None:
        kw = {"dtype": self.dtype, "xp": self.xp, "device": self.device}
        self.params["W"] = self.init((self.in_features, self.out_features), rng=rng, **kw)
        if self.use_bias:
            self.params["b"] = self.xp.zeros(
                (self.out_features,), dtype=self.dtype, device=self.device
            )
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y, cache = dense_k.dense_forward(x, self.params["W"], self.params.get("b"))
        self._cache = cache if training else None
        return y

    def backward(self, dy: Array) -> Array:
        cache = self._take_cache()
        dx, dW, db = dense_k.dense_backward(dy, cache, xp=self.xp)
        self.grads["W"] = dW
        if self.use_bias:
            self.grads["b"] = db
        return dx

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features})"
