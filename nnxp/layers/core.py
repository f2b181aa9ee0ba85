"""The layer protocol, its base class, and the dense layer.

The layer protocol, which the model, the optimizers and users' own layers rely on:

* ``params``  — dict of trainable arrays;
* ``grads``   — dict with the same keys, overwritten by every ``backward``;
* ``buffers`` — dict of non-trainable state (e.g. running statistics);
* ``forward(x, *, training=True) -> y`` keeps what ``backward`` needs only when ``training``;
* ``backward(dy) -> dx`` fills ``grads``, drops the cache and returns ``∂L/∂x``. Calling it
  without a training-mode forward first raises :class:`BackwardError`;
* ``needs_input_grad`` — True by default. A model sets it to False on its first trainable
  layer for the duration of a training backward pass, whose ``∂L/∂x`` (the gradient with
  respect to the data) nobody reads; a layer may then skip that computation and return None.

A layer is bound to the backend (namespace and device) that was active when it was created.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..init import INITIALIZERS, Initializer, get_initializer
from ..kernels import dense as dense_k
from ..kernels import regularization as reg_k
from ..random import Generator
from ..validation import check_count, check_flag, check_float_dtype, check_positive, describe

Array = Any


class BackwardError(RuntimeError):
    """``backward`` was called without a preceding ``forward(..., training=True)``."""


LAYERS: dict[str, type[Layer]] = {}
"""Every layer class by its registry name (filled by ``Layer.__init_subclass__``); ``nnxp.load``
rebuilds saved layers from it."""


def layer_class_name(cls: type) -> str:
    """Registry name of a layer class: ``"Dense"`` for nnxp's own, ``"module.Qualname"`` else."""
    if cls.__module__.startswith("nnxp."):
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


class Layer:
    """Base class: empty ``params``/``grads``/``buffers`` and the backend binding.

    Subclasses are registered by name in :data:`LAYERS` when they are defined, and describe
    their constructor arguments with :meth:`get_config`, so that ``model.save`` / ``nnxp.load``
    handle every layer that follows the protocol.
    """

    needs_input_grad: bool = True
    """Whether :meth:`backward` must return ``∂L/∂x`` (see the module docstring)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        LAYERS[layer_class_name(cls)] = cls

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments as a JSON-serialisable dict: ``type(self)(**config)``
        rebuilds the layer (its arrays are then restored from ``params`` and ``buffers``)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """The inverse of :meth:`get_config`: a fresh layer on the active backend."""
        return cls(**config)

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

    @property
    def has_penalty(self) -> bool:
        """Whether :meth:`penalty` can be non-zero (lets the model skip the others)."""
        return False

    def penalty(self) -> Array:
        """The layer's weight penalty, added to the loss: a 0-d array (0 for most layers)."""
        dtype = next(iter(self.params.values())).dtype if self.params else self.xp.float32
        return self.xp.zeros((), dtype=dtype, device=self.device)

    def apply_constraints(self) -> None:
        """Project parameters back onto their constraints; the model calls it after each
        optimizer step (a no-op for layers without constraints)."""

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


def input_error(layer: Layer, x: Any, width: int, exc: BaseException) -> Exception:
    """The error for an input a layer's kernel rejected: what was expected, what arrived."""
    W = layer.params["W"]
    expected = (f"{type(layer).__name__}.forward expects x of shape (batch, {width}), "
                f"{backend.dtype_name(W.dtype)}, on the layer's backend "
                f"({backend.backend_name_of(W)})")
    shape = getattr(x, "shape", None)
    kind = ValueError if shape is not None and tuple(shape)[-1:] != (width,) else TypeError
    return kind(f"{expected}, got {describe(x)} ({type(exc).__name__}: {exc}); convert "
                "inputs with nnxp.asarray, or use model.predict, which checks them")


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
    l1, l2
        Weight penalty ``l1 · Σ|W| + l2 · Σ W²`` (Keras' ``kernel_regularizer`` convention:
        ``l2`` multiplies ``Σ W²``, not ``½ Σ W²``), on ``W`` only, never on ``b``. It is added
        to the loss that ``fit``/``evaluate`` report (see :meth:`penalty`) and its gradient
        ``l1 · sign(W) + 2 · l2 · W`` to ``grads["W"]`` by :meth:`backward`.
    max_norm
        When given (c > 0), :meth:`apply_constraints` — called by ``fit`` after every optimizer
        step — rescales each unit's incoming weights ``W[:, j]`` to norm ``≤ c``.
    activation
        Applied after the affine map, ``y = f(x W + b)``, and backpropagated through: a name from
        ``nnxp.layers.ACTIVATIONS`` (``"relu"``, ``"leaky_relu"``, ...), a layer instance, or
        ``None`` (the default: no activation). An activation's own parameters (PReLU's slope)
        become this layer's ``params["activation.<name>"]`` (in this layer's dtype), so
        optimizers train them; a named activation is built with this layer's ``dtype``, and a
        random one (RReLU) draws from a stream spawned from this layer's seed. The
        default init stays ``"he_normal"`` whatever the activation: pair ReLU-like
        activations with He init and tanh/sigmoid with ``init="glorot_uniform"`` yourself.
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
        l1: float = 0.0,
        l2: float = 0.0,
        max_norm: float | None = None,
        activation: str | Layer | dict[str, Any] | None = None,
    ) -> None:
        from .activations import (  # noqa: PLC0415 - activations imports this module
            Softmax,
            get_activation,
        )

        super().__init__()
        self.in_features = check_count(in_features, argument="in_features")
        self.out_features = check_count(out_features, argument="out_features")
        self.init = get_initializer(init)
        self.use_bias = check_flag(bias, argument="bias")
        self.dtype = check_float_dtype(dtype, self.xp)
        self.l1 = float(check_positive(l1, argument="l1", allow_zero=True, finite=True))
        self.l2 = float(check_positive(l2, argument="l2", allow_zero=True, finite=True))
        self.max_norm = (None if max_norm is None
                         else float(check_positive(max_norm, argument="max_norm")))
        self.activation = get_activation(activation, dtype=self.dtype)
        if self.activation is not None and (hasattr(self.activation, "in_features")
                                            or hasattr(self.activation, "out_features")):
            raise TypeError(f"activation must be an element-wise activation layer, got "
                            f"{self.activation!r}, which changes the width; put it after this "
                            "layer in the model instead")
        if isinstance(self.activation, Softmax) and self.activation.dim not in (1, -1):
            raise ValueError(f"activation is Softmax(dim={self.activation.dim}), but this "
                             "layer's output has shape (batch, out_features): use dim=-1")
        self.reset_parameters(Generator(seed))

    def reset_parameters(self, rng: Generator) -> None:
        kw = {"dtype": self.dtype, "xp": self.xp, "device": self.device}
        self.params["W"] = self.init((self.in_features, self.out_features), rng=rng, **kw)
        if self.use_bias:
            self.params["b"] = self.xp.zeros(
                (self.out_features,), dtype=self.dtype, device=self.device
            )
        if self.activation is not None:
            self.activation.reset_parameters(rng.spawn())
            for key, value in self.activation.params.items():  # owned here, in our dtype
                self.params[f"activation.{key}"] = (
                    value if value.dtype == self.dtype else self.xp.astype(value, self.dtype)
                )
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        try:  # no check on the way in (the hot path); a failure is explained on the way out
            y, cache = dense_k.dense_forward(x, self.params["W"], self.params.get("b"))
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise input_error(self, x, self.in_features, exc) from exc
        self._cache = cache if training else None
        if self.activation is not None:
            for key in self.activation.params:  # this layer owns them: optimizers update ours
                self.activation.params[key] = self.params[f"activation.{key}"]
            y = self.activation.forward(y, training=training)
        return y

    def backward(self, dy: Array) -> Array | None:
        """Fill ``grads`` and return ``dx = dy Wᵀ`` (None when ``needs_input_grad`` is False:
        the first layer of a model in training, whose ``dx`` would be a gradient with respect
        to the data — a third matrix product, about a seventh of a big MLP's step, saved)."""
        cache = self._take_cache()
        if self.activation is not None:
            dy = self.activation.backward(dy)
            for key, grad in self.activation.grads.items():
                self.grads[f"activation.{key}"] = grad
        dx, dW, db = dense_k.dense_backward(dy, cache, xp=self.xp,
                                            need_dx=self.needs_input_grad)
        if self.has_penalty:
            dW = dW + reg_k.l1_l2_penalty_grad(self.params["W"], l1=self.l1, l2=self.l2,
                                               xp=self.xp)
        self.grads["W"] = dW
        if self.use_bias:
            self.grads["b"] = db
        return dx

    @property
    def has_penalty(self) -> bool:
        return self.l1 > 0.0 or self.l2 > 0.0

    def penalty(self) -> Array:
        """``l1 · Σ|W| + l2 · Σ W²`` as a 0-d array in the weights' dtype (0 without l1/l2)."""
        return reg_k.l1_l2_penalty(self.params["W"], l1=self.l1, l2=self.l2, xp=self.xp)

    def apply_constraints(self) -> None:
        """With ``max_norm=c``: ``W[:, j] ← W[:, j] · min(1, c/‖W[:, j]‖)`` for every unit j."""
        if self.max_norm is not None:
            self.params["W"] = reg_k.max_norm(self.params["W"], max_value=self.max_norm,
                                              xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"in_features": self.in_features,
                                  "out_features": self.out_features, "bias": self.use_bias,
                                  "dtype": backend.dtype_name(self.dtype)}
        names = [name for name, fn in INITIALIZERS.items() if fn is self.init]
        if names:  # a user's callable initialiser cannot be stored; the default stands in
            config["init"] = names[0]
        for key in ("l1", "l2"):
            if getattr(self, key):
                config[key] = getattr(self, key)
        if self.max_norm is not None:
            config["max_norm"] = self.max_norm
        if self.activation is not None:
            from .activations import activation_config  # noqa: PLC0415 - see __init__

            config["activation"] = activation_config(self.activation)
        return config

    def __repr__(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return f"Dense({self.in_features}, {self.out_features}{act})"
