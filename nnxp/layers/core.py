"""The dense layer, ``y = f(x W + b)``.

The layer protocol, the :class:`~nnxp.layers.base.Layer` base class, the layer registry and
:class:`~nnxp.layers.base.BackwardError` live in :mod:`nnxp.layers.base`; ``LAYERS``,
``BackwardError`` and ``layer_class_name``, first defined here, stay importable from here.
``Dense`` resolves its ``activation=`` with
:func:`~nnxp.layers.activations.get_elementwise_activation`: this module imports
:mod:`~nnxp.layers.activations`, which imports only :mod:`~nnxp.layers.base`, never this module.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..init import INITIALIZERS, Initializer, get_initializer
from ..kernels import dense as dense_k
from ..kernels import regularization as reg_k
from ..random import Generator
from ..typing import Array
from ..validation import check_count, check_flag, check_float_dtype, check_positive
from .activations import activation_config, get_elementwise_activation
from .base import LAYERS as LAYERS
from .base import BackwardError as BackwardError
from .base import Layer, input_error
from .base import layer_class_name as layer_class_name


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
        self.activation = get_elementwise_activation(activation, dtype=self.dtype)
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
        views = self.grad_views
        out = None
        if views and "W" in views and views["W"].dtype == dy.dtype:
            # flat gradient buffers: written in place, no copy (not under mixed precision,
            # where the half-precision gradient is cast to float32 by nnxp.precision first)
            out = (views["W"], views.get("b") if self.use_bias else None)
        dx, dW, db = dense_k.dense_backward(dy, cache, xp=self.xp,
                                            need_dx=self.needs_input_grad, out=out,
                                            writer=backend.out_writer(self.xp) if out else None)
        if self.has_penalty:
            penalty = reg_k.l1_l2_penalty_grad(self.params["W"], l1=self.l1, l2=self.l2,
                                               xp=self.xp)
            if out is not None and dW is out[0]:
                dW += penalty  # the same sum as below, into the view
            else:
                dW = dW + penalty
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
            config["activation"] = activation_config(self.activation)
        return config

    def __repr__(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return f"Dense({self.in_features}, {self.out_features}{act})"
