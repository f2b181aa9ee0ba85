"""Activation layers: each wraps a kernel pair from :mod:`nnxp.kernels.activations`.

Every layer follows the layer protocol of :mod:`nnxp.layers.base`: ``forward(x, training=...)``
keeps what ``backward`` needs only in training mode, and ``backward`` without a training forward
raises :class:`~nnxp.layers.base.BackwardError`. Only :class:`PReLU` and :class:`Maxout` have
parameters; only :class:`RReLU` behaves differently in training and evaluation.

:data:`ACTIVATIONS` maps names to layer factories, so that an activation can be named by string,
``Dense(64, 32, activation="leaky_relu")``; :func:`get_activation` resolves a name, a layer or
``None``, and :func:`get_elementwise_activation` does so for ``Dense``'s ``activation=``.

Pairing with initialisers: ReLU and its variants go with He initialisation (std √(2/fan_in),
``init="he_normal"``, Dense's default), tanh and sigmoid with Xavier/Glorot
(``init="glorot_uniform"``), SELU with LeCun normal. Step and sign have a zero derivative almost
everywhere: they cannot be trained by gradient descent (their ``backward`` returns zeros) and
belong to the perceptron and its learning rule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .. import backend
from ..init import INITIALIZERS, Initializer, get_initializer
from ..kernels import activations as act
from ..random import BackendGenerator, Generator
from ..typing import Array
from ..validation import (
    check_choice,
    check_count,
    check_finite,
    check_flag,
    check_float_dtype,
    check_int,
)
from .base import LAYERS, Layer, input_error, layer_class_name

_REAL = "a finite real number"  # what the messages of the real-valued options say


# ----------------------------------------------------------------------------------------------
# Identity, step, sign, piecewise linear
# ----------------------------------------------------------------------------------------------


class Identity(Layer):
    """Identity (linear) activation ``y = x``; derivative 1.

    The output of a regression network; also what a ``Dense`` without activation computes.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        # nothing to save, but backward still needs a training forward first
        self._cache = True if training else None
        return act.identity(x, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        self._take_cache()
        return act.identity_backward(dy, xp=self.xp)


class Step(Layer):
    """Heaviside step ``y = 1[x > 0]``, with ``y = ½`` at x = 0.

    The derivative is 0 everywhere except at 0, where there is none: ``backward`` returns zeros,
    so gradient descent cannot train anything below a step unit. It is the activation of
    Rosenblatt's perceptron, trained by the perceptron rule instead.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self._cache = True if training else None
        return act.step(x, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        self._take_cache()
        return act.step_backward(dy, xp=self.xp)


class Sign(Layer):
    """Sign ``y ∈ {−1, 0, 1}``; derivative 0 almost everywhere (``backward`` returns zeros).

    Like :class:`Step`, it cannot be trained by gradient descent; it is the ±1 perceptron output.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self._cache = True if training else None
        return act.sign(x, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        self._take_cache()
        return act.sign_backward(dy, xp=self.xp)


class PiecewiseLinear(Layer):
    """``y = 0`` for x ≤ −½, ``x + ½`` for −½ < x < ½, ``1`` for x ≥ ½.

    Derivative 1 on (−½, ½) and 0 outside: a linear stand-in for the sigmoid that saturates
    completely, so units pushed past ±½ stop learning.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self._cache = x if training else None
        return act.piecewise_linear(x, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        return act.piecewise_linear_backward(dy, self._take_cache(), xp=self.xp)


# ----------------------------------------------------------------------------------------------
# Sigmoid, tanh
# ----------------------------------------------------------------------------------------------


class Sigmoid(Layer):
    """Logistic sigmoid ``y = 1 / (1 + e^(−x))``; derivative ``y (1 − y)`` ≤ ¼.

    Never overflows: ``Sigmoid()(±1e4)`` is exactly 1 and 0, with no warning. It saturates for
    |x| beyond a few units, where the derivative vanishes; stacked sigmoid layers multiply
    factors of at most ¼, so gradients shrink layer by layer (vanishing gradients). Use it for a
    probability output (better: a loss with logits), with Xavier initialisation in hidden layers.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.sigmoid(x, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.sigmoid_backward(dy, self._take_cache(), xp=self.xp)


class Tanh(Layer):
    """Hyperbolic tangent; derivative ``1 − y²`` ≤ 1.

    Zero-centred (unlike the sigmoid), but it saturates too, with vanishing gradients for large
    |x|. Pair it with Xavier/Glorot initialisation (``init="glorot_uniform"``).
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.tanh(x, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.tanh_backward(dy, self._take_cache(), xp=self.xp)


# ----------------------------------------------------------------------------------------------
# Rectifiers
# ----------------------------------------------------------------------------------------------


class ReLU(Layer):
    """Rectified linear unit ``y = max(x, 0)``; derivative 1 for x > 0, else 0.

    Does not saturate for x > 0; pair it with He initialisation (Dense's default). A unit whose
    input stays negative gets no gradient and may never recover ("dying ReLU"); the leaky
    variants keep a small slope there.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.relu(x, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.relu_backward(dy, self._take_cache(), xp=self.xp)


class LeakyReLU(Layer):
    """``y = x`` for x > 0, ``negative_slope · x`` otherwise; derivative 1 or ``negative_slope``.

    Parameters
    ----------
    negative_slope
        Slope for negative inputs, 0.01 by default (as ``torch.nn.LeakyReLU``).
    """

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = check_finite(negative_slope, argument="negative_slope", what=_REAL)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        self._cache = x if training else None
        return act.leaky_relu(x, self.negative_slope, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        x = self._take_cache()
        return act.leaky_relu_backward(dy, x, self.negative_slope, xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class PReLU(Layer):
    """Parametric ReLU ``y = max(x, 0) + α · min(x, 0)`` with a learned slope α.

    ``params["alpha"]`` has shape ``(num_parameters,)``: one slope shared by every feature
    (``num_parameters=1``) or one per feature of the last axis (``num_parameters=n``), as
    ``torch.nn.PReLU`` (whose per-channel axis is dimension 1, the last one for the batch-first
    2-D input nnxp uses). Gradients: ``dx = dy · (1 if x > 0 else α)``,
    ``dα = Σ dy · min(x, 0)`` over the batch (and over the features when α is shared).

    Parameters
    ----------
    num_parameters
        1 (shared slope) or the number of features.
    init
        Initial slope, 0.25 by default (as torch).
    dtype
        Dtype of α, ``"float32"`` by default; use the dtype of the inputs.
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *,
                 dtype: Any = "float32") -> None:
        super().__init__()
        self.num_parameters = check_count(num_parameters, argument="num_parameters")
        self.init = check_finite(init, argument="init", what=_REAL)
        self.dtype = check_float_dtype(dtype, self.xp)
        self.reset_parameters(Generator(0))

    def reset_parameters(self, rng: Generator) -> None:
        """Set every slope back to ``init`` (nothing random)."""
        self.params["alpha"] = self.xp.full(
            (self.num_parameters,), self.init, dtype=self.dtype, device=self.device
        )
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if self.num_parameters != 1 and (x.ndim == 0 or x.shape[-1] != self.num_parameters):
            raise ValueError(
                f"x must have {self.num_parameters} features on its last axis (num_parameters="
                f"{self.num_parameters}), got an input of shape {tuple(x.shape)}"
            )
        alpha = self.params["alpha"]
        self._cache = (x, alpha) if training else None
        return act.prelu(x, alpha, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        x, alpha = self._take_cache()
        dx, self.grads["alpha"] = act.prelu_backward(dy, x, alpha, xp=self.xp)
        return dx

    def get_config(self) -> dict[str, Any]:
        return {"num_parameters": self.num_parameters, "init": self.init,
                "dtype": backend.dtype_name(self.dtype)}

    def __repr__(self) -> str:
        return f"PReLU(num_parameters={self.num_parameters})"


class RReLU(Layer):
    """Randomized leaky ReLU: ``y = x`` for x ≥ 0, ``a · x`` for x < 0.

    In training, every element gets its own slope ``a ~ U[lower, upper]``, drawn afresh by each
    forward pass; in evaluation ``a = (lower + upper) / 2``, the mean of the training slopes (as
    ``torch.nn.RReLU``). Derivative: 1 for x > 0, ``a`` (the slope used) otherwise.

    The slopes are drawn on the device by the backend's own generator
    (:class:`nnxp.random.BackendGenerator`, as dropout masks are): ``lower + (upper − lower) u``
    with ``u ~ U[0, 1)``, so a training step makes no host-to-device copy. A seed reproduces the
    same slopes on the same backend and device, but the slopes differ from one backend to
    another. ``Sequential(seed=...)`` reseeds the generator from the model's seed through
    :meth:`reset_parameters`.

    Parameters
    ----------
    lower, upper
        Range of the random slopes, 1/8 and 1/3 by default (as torch); ``lower ≤ upper``.
    seed
        Seed of the slope generator.
    """

    def __init__(self, lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0, *,
                 seed: int | None = None) -> None:
        super().__init__()
        self.lower = check_finite(lower, argument="lower", what=_REAL)
        self.upper = check_finite(upper, argument="upper", what=_REAL)
        if self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got lower={lower!r} and upper={upper!r}")
        self.seed = seed
        self.generator = BackendGenerator(seed, self.xp, self.device)

    def reset_parameters(self, rng: Generator) -> None:
        """Reseed the slope generator from ``rng`` (there are no parameters)."""
        self.generator = BackendGenerator(rng.integers(2**63 - 1), self.xp, self.device)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if not training:
            self._cache = None
            return act.rrelu(x, 0.5 * (self.lower + self.upper), xp=self.xp)
        u = self.generator.uniform(tuple(x.shape), x.dtype)
        slopes = self.lower + (self.upper - self.lower) * u
        self._cache = (x, slopes)
        return act.rrelu(x, slopes, xp=self.xp)

    def backward(self, dy: Array) -> Array:
        x, slopes = self._take_cache()
        return act.rrelu_backward(dy, x, slopes, xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"lower": self.lower, "upper": self.upper}
        if self.seed is not None:
            config["seed"] = self.seed
        return config

    def __repr__(self) -> str:
        return f"RReLU(lower={self.lower}, upper={self.upper})"


class ELU(Layer):
    """Exponential linear unit: ``y = x`` for x > 0, ``α (e^x − 1)`` for x ≤ 0.

    Derivative 1 for x > 0 and ``α e^x = y + α`` for x ≤ 0. Negative outputs (down to −α) push
    mean activations towards 0 and the unit never dies.

    Parameters
    ----------
    alpha
        Saturation value for large negative inputs, 1.0 by default; must be > 0 (the backward
        pass reads the sign of x off the output).
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = check_finite(alpha, argument="alpha", what=_REAL, positive=True)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.elu(x, self.alpha, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.elu_backward(dy, self._take_cache(), self.alpha, xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def __repr__(self) -> str:
        return f"ELU(alpha={self.alpha})"


class SELU(Layer):
    """Scaled ELU ``y = λ x`` for x > 0, ``λ α (e^x − 1)`` otherwise (λ ≈ 1.0507, α ≈ 1.6733).

    With LeCun-normal weights, the constants keep activations near mean 0 and variance 1 through
    many layers (self-normalising networks). Derivative λ, or ``λ α e^x`` for x ≤ 0.
    """

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.selu(x, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.selu_backward(dy, self._take_cache(), xp=self.xp)


class Softplus(Layer):
    """Softplus ``y = (1/β) log(1 + e^(βx))``, a smooth ReLU; derivative ``sigmoid(βx)``.

    Computed in a stable form that never overflows. Unlike ``torch.nn.Softplus`` there is no
    ``threshold`` switch to the identity: the stable form already equals x to within rounding for
    large βx.

    Parameters
    ----------
    beta
        Sharpness (> 0), 1.0 by default.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_finite(beta, argument="beta", what=_REAL, positive=True)

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.softplus(x, self.beta, xp=self.xp)
        self._cache = y if training else None  # sigmoid(βx) = −expm1(−βy): cheaper than from x
        return y

    def backward(self, dy: Array) -> Array:
        return act.softplus_backward_from_output(dy, self._take_cache(), self.beta, xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        return {"beta": self.beta}

    def __repr__(self) -> str:
        return f"Softplus(beta={self.beta})"


# ----------------------------------------------------------------------------------------------
# GELU, SiLU
# ----------------------------------------------------------------------------------------------


class GELU(Layer):
    """Gaussian error linear unit ``y = x Φ(x)``, Φ the standard normal CDF.

    Parameters
    ----------
    approximate
        ``"none"`` (default, as ``torch.nn.GELU``): exact, through nnxp's own normal CDF (the
        array API standard has no erf; float64 to 1e-13 relative, float32 within 1.25e-7
        absolute); ``"tanh"``: ``Φ(x) ≈ ½ (1 + tanh(√(2/π)(x + 0.044715 x³)))``.

    Derivative ``Φ(x) + x φ(x)`` (exact) or that of the tanh form; see
    :func:`nnxp.kernels.activations.gelu_backward`. A training forward pass computes it
    alongside the output and keeps only it; the backward pass multiplies ``dy`` by it.
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = check_choice(approximate, ("none", "tanh"), argument="approximate")

    def forward(self, x: Array, *, training: bool = True) -> Array:
        if not training:
            self._cache = None
            return act.gelu(x, self.approximate, xp=self.xp)
        # the derivative, finished from the forward pass's intermediates: the only array kept
        y, self._cache = act.gelu_forward(x, self.approximate, xp=self.xp)
        return y

    def backward(self, dy: Array) -> Array:
        # the cache is dropped here, so the product is written into it
        return act.gelu_backward_cached(dy, self._take_cache(), xp=self.xp, overwrite=True)

    def get_config(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def __repr__(self) -> str:
        return f"GELU(approximate={self.approximate!r})"


class SiLU(Layer):
    """SiLU / swish ``y = x · sigmoid(x)``; derivative ``σ(x) (1 + x (1 − σ(x)))``."""

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y, s = act.silu_forward(x, xp=self.xp)
        self._cache = (y, s) if training else None  # dx = dy (s + y (1 − s)): four passes
        return y

    def backward(self, dy: Array) -> Array:
        y, s = self._take_cache()
        return act.silu_backward_cached(dy, y, s, xp=self.xp)


# ----------------------------------------------------------------------------------------------
# Softmax
# ----------------------------------------------------------------------------------------------


class Softmax(Layer):
    """Softmax ``y_i = e^(x_i) / Σ_j e^(x_j)`` along ``dim`` (the last axis by default).

    ``backward`` is the Jacobian-vector product ``dx = y ⊙ (dy − Σ_j dy_j y_j)``. For training a
    classifier, prefer no softmax layer and the fused ``"softmax_cross_entropy"`` loss on the
    logits: cheaper, and exact where the probabilities underflow.

    Parameters
    ----------
    dim
        The axis that sums to 1, ``-1`` by default (torch's argument name).
    """

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_int(dim, argument="dim")

    def forward(self, x: Array, *, training: bool = True) -> Array:
        y = act.softmax(x, self.dim, xp=self.xp)
        self._cache = y if training else None
        return y

    def backward(self, dy: Array) -> Array:
        return act.softmax_backward(dy, self._take_cache(), self.dim, xp=self.xp)

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim}

    def __repr__(self) -> str:
        return f"Softmax(dim={self.dim})"


# ----------------------------------------------------------------------------------------------
# Maxout
# ----------------------------------------------------------------------------------------------


class Maxout(Layer):
    """Maxout layer ``y_j = max_p (x W[:, j, p] + b[j, p])``: ``k`` affine pieces per unit.

    ``W`` has shape ``(in_features, out_features, k)`` and ``b`` shape ``(out_features, k)``.
    The gradient of each unit flows only to its winning piece (see
    :func:`nnxp.kernels.activations.maxout_backward`). A maxout unit is a learned convex
    piecewise-linear activation; with k = 2 it can represent ReLU, leaky ReLU or |x|.

    Parameters
    ----------
    in_features, out_features
        Input and output widths.
    k
        Pieces per unit (≥ 1; k = 1 is a plain Dense layer).
    init
        Weight initialiser, by name or callable, ``"he_normal"`` by default as for Dense. Each
        piece ``W[:, :, p]`` is drawn as its own ``(in_features, out_features)`` matrix, so
        its fans (and hence its scale) are those of a Dense layer of the same widths.
    bias
        Whether to learn ``b`` (initialised to zeros).
    dtype
        Parameter dtype, ``"float32"`` by default.
    seed
        Seed for the initial weights (``Sequential(seed=...)`` redraws them from its own).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        k: int = 2,
        *,
        init: str | Initializer = "he_normal",
        bias: bool = True,
        dtype: Any = "float32",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_count(in_features, argument="in_features")
        self.out_features = check_count(out_features, argument="out_features")
        self.k = check_count(k, argument="k")
        self.init = get_initializer(init)
        self.use_bias = check_flag(bias, argument="bias")
        self.dtype = check_float_dtype(dtype, self.xp)
        self.reset_parameters(Generator(seed))

    def reset_parameters(self, rng: Generator) -> None:
        kw = {"dtype": self.dtype, "xp": self.xp, "device": self.device}
        shape = (self.in_features, self.out_features)
        pieces = [self.init(shape, rng=rng, **kw) for _ in range(self.k)]
        self.params["W"] = self.xp.stack(pieces, axis=-1)
        if self.use_bias:
            self.params["b"] = self.xp.zeros(
                (self.out_features, self.k), dtype=self.dtype, device=self.device
            )
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        try:  # no check on the way in (the hot path); a failure is explained on the way out
            y, cache = act.maxout_forward(x, self.params["W"], self.params.get("b"), xp=self.xp)
        except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise input_error(self, x, self.in_features, exc) from exc
        self._cache = cache if training else None
        return y

    def backward(self, dy: Array) -> Array:
        dx, dW, db = act.maxout_backward(dy, self._take_cache(), xp=self.xp)
        self.grads["W"] = dW
        if self.use_bias:
            self.grads["b"] = db
        return dx

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"in_features": self.in_features,
                                  "out_features": self.out_features, "k": self.k,
                                  "bias": self.use_bias, "dtype": backend.dtype_name(self.dtype)}
        names = [name for name, fn in INITIALIZERS.items() if fn is self.init]
        if names:  # a user's callable initialiser cannot be stored; the default stands in
            config["init"] = names[0]
        return config

    def __repr__(self) -> str:
        return f"Maxout({self.in_features}, {self.out_features}, k={self.k})"


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------

ActivationFactory = Callable[..., Layer]

ACTIVATIONS: dict[str, ActivationFactory] = {
    "identity": Identity,
    "linear": Identity,
    "step": Step,
    "sign": Sign,
    "piecewise_linear": PiecewiseLinear,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "prelu": PReLU,
    "rrelu": RReLU,
    "elu": ELU,
    "selu": SELU,
    "softplus": Softplus,
    "gelu": GELU,
    "gelu_exact": GELU,
    "gelu_tanh": functools.partial(GELU, approximate="tanh"),
    "silu": SiLU,
    "swish": SiLU,
    "softmax": Softmax,
}
"""Activation layers by name: each value is a layer class, or (``"gelu_tanh"``) a
``functools.partial`` of one, called with keyword hyperparameters to make a layer.
``"gelu"`` is the exact GELU, as torch's default. Maxout is not here: it is an affine layer of
its own, not an activation to put after one."""


def get_activation(
    activation: str | Layer | dict[str, Any] | None, *, dtype: Any = None
) -> Layer | None:
    """Resolve ``activation`` to a layer.

    Accepts a name from :data:`ACTIVATIONS` (case-insensitive, ``-`` read as ``_``), a layer
    instance (returned as it is), the ``{"class": ..., "config": ...}`` dict that
    :func:`activation_config` writes (what a saved ``Dense`` stores), or ``None`` (no activation).
    ``dtype``, when given, is passed to a named activation that has parameters (PReLU).
    """
    if activation is None or isinstance(activation, Layer):
        return activation
    if isinstance(activation, str):
        key = activation.strip().lower().replace("-", "_")
        if key in ACTIVATIONS:
            factory = ACTIVATIONS[key]
            if dtype is not None and "dtype" in inspect.signature(factory).parameters:
                return factory(dtype=dtype)
            return factory()
        raise ValueError(
            f"activation={activation!r} is not a known activation; valid names are "
            f"{', '.join(sorted(ACTIVATIONS))}"
        )
    if isinstance(activation, dict) and set(activation) == {"class", "config"}:
        cls = LAYERS.get(activation["class"])
        if cls is None:
            raise ValueError(f"activation class {activation['class']!r} is not a known layer; "
                             f"known layers are {', '.join(sorted(LAYERS))}")
        return cls.from_config(activation["config"])
    raise TypeError(
        "activation must be a name from nnxp.layers.ACTIVATIONS, a layer instance or None, got "
        f"{type(activation).__name__} {activation!r}"
    )


def get_elementwise_activation(
    activation: str | Layer | dict[str, Any] | None, *, dtype: Any = None
) -> Layer | None:
    """Resolve the ``activation=`` of a layer with a ``(batch, out_features)`` output (Dense).

    As :func:`get_activation`, and the activation must keep the width: an element-wise layer,
    or a softmax over the features.

    Raises
    ------
    TypeError
        for a layer that changes the width (it has ``in_features`` or ``out_features``).
    ValueError
        for a ``Softmax`` along an axis other than the features' (``dim`` not 1 or -1).
    """
    layer = get_activation(activation, dtype=dtype)
    if layer is not None and (hasattr(layer, "in_features") or hasattr(layer, "out_features")):
        raise TypeError(f"activation must be an element-wise activation layer, got {layer!r}, "
                        "which changes the width; put it after this layer in the model instead")
    if isinstance(layer, Softmax) and layer.dim not in (1, -1):
        raise ValueError(f"activation is Softmax(dim={layer.dim}), but this layer's output has "
                         "shape (batch, out_features): use dim=-1")
    return layer


def activation_config(layer: Layer) -> dict[str, Any]:
    """``{"class": ..., "config": ...}``: a JSON-serialisable description of an activation layer
    that :func:`get_activation` turns back into an equivalent layer."""
    return {"class": layer_class_name(type(layer)), "config": layer.get_config()}
