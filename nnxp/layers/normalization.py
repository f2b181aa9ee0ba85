"""Normalisation layers: ``BatchNorm1d`` and ``LayerNorm``, with torch.nn's conventions.

Parameter names follow torch: ``params["weight"]`` is γ and ``params["bias"]`` is β;
batch norm's running statistics are ``buffers["running_mean"]`` and ``buffers["running_var"]``.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..kernels import normalization as k
from ..random import Generator
from ..typing import Array
from ..validation import (
    check_count,
    check_flag,
    check_float_dtype,
    check_layer_input,
    check_positive,
)
from .base import Layer


class BatchNorm1d(Layer):
    """Batch normalisation over a ``(batch, num_features)`` input (torch.nn.BatchNorm1d).

    Training: ``y = γ · (x − μ_B) / √(σ²_B + eps) + β`` with the batch mean ``μ_B`` and *biased*
    batch variance ``σ²_B`` (two-pass), and the running statistics move towards the batch's:
    ``running_mean ← (1 − momentum) · running_mean + momentum · μ_B``,
    ``running_var ← (1 − momentum) · running_var + momentum · σ²_B · N/(N − 1)``.
    Evaluation: the same map with ``running_mean`` and ``running_var`` in place of the batch's.
    Gradients (see :func:`nnxp.kernels.normalization.batch_norm_backward`) run through the batch
    statistics.

    Parameters
    ----------
    num_features
        C, the width of the input (and output).
    eps
        Added to the variance inside the square root (1e-5).
    momentum
        Weight of the new batch statistic in the running averages (0.1, torch's convention;
        Keras' ``momentum=0.99`` is ``1 − 0.01``). ``None`` gives the cumulative average over all
        batches seen, as in torch.
    affine
        Learn γ (``params["weight"]``, initially 1) and β (``params["bias"]``, initially 0).
    track_running_stats
        Keep running statistics; without them evaluation also uses the batch's statistics.
    dtype
        Dtype of parameters and buffers, ``"float32"`` by default.

    Raises
    ------
    ValueError
        in training mode for a batch of one sample (no variance to estimate, as torch refuses),
        and for an input whose shape is not ``(batch, num_features)``.
    """

    min_training_batch = 2
    """fit refuses, before its first step, a batch size that would give a batch of one."""

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.num_features = check_count(num_features, argument="num_features")
        self.in_features = self.out_features = num_features
        self.eps = float(check_positive(eps, argument="eps"))
        if momentum is not None:
            check_positive(momentum, argument="momentum", allow_zero=True)
            if momentum > 1:
                raise ValueError(f"momentum must lie in [0, 1] (or be None), got {momentum!r}")
            momentum = float(momentum)
        self.momentum = momentum
        self.affine = check_flag(affine, argument="affine")
        self.track_running_stats = check_flag(track_running_stats, argument="track_running_stats")
        self.dtype = check_float_dtype(dtype, self.xp)
        self.num_batches_tracked = 0
        self.reset_parameters(Generator(0))

    def reset_parameters(self, rng: Generator) -> None:
        """γ = 1, β = 0, running_mean = 0, running_var = 1 (nothing random is drawn)."""
        xp, kw = self.xp, {"dtype": self.dtype, "device": self.device}
        shape = (self.num_features,)
        if self.affine:
            self.params["weight"] = xp.ones(shape, **kw)
            self.params["bias"] = xp.zeros(shape, **kw)
        if self.track_running_stats:
            self.buffers["running_mean"] = xp.zeros(shape, **kw)
            self.buffers["running_var"] = xp.ones(shape, **kw)
        self.num_batches_tracked = 0
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        check_layer_input(x, self.num_features, layer="BatchNorm1d")
        gamma, beta = self.params.get("weight"), self.params.get("bias")
        if not training and self.track_running_stats:
            self._cache = None
            return k.batch_norm_forward_eval(
                x, gamma, beta, self.buffers["running_mean"], self.buffers["running_var"],
                eps=self.eps, xp=self.xp)
        n = x.shape[0]
        if n < 2 and training:
            raise ValueError(f"BatchNorm1d needs more than 1 sample per feature to estimate a "
                             f"variance in training mode, got input of shape {tuple(x.shape)}; "
                             "use batches of at least 2 (or evaluation mode)")
        y, cache, mean, var = k.batch_norm_forward_train(x, gamma, beta, eps=self.eps, xp=self.xp)
        if training and self.track_running_stats:
            self.num_batches_tracked += 1
            m = (1.0 / self.num_batches_tracked) if self.momentum is None else self.momentum
            buffers = self.buffers
            new_mean, new_var = k.update_running_stats(
                buffers["running_mean"], buffers["running_var"], mean, var, n=n, momentum=m)
            if self.buffers_in_place:  # the arrays outlive the step (a recorded step, views)
                buffers["running_mean"][...] = new_mean
                buffers["running_var"][...] = new_var
            else:
                buffers["running_mean"], buffers["running_var"] = new_mean, new_var
        self._cache = cache if training else None
        return y

    @property
    def buffers_in_place(self) -> bool:
        """Whether training writes the running statistics into the arrays of ``buffers``
        (numpy, cupy, torch: :func:`nnxp.backend.supports_inplace`) rather than replacing
        them (array-api-strict). The values are the same bit for bit; in place, the arrays
        outlive the steps, which a recorded step (``fit(capture=True)``) needs."""
        return self.track_running_stats and backend.supports_inplace(self.xp)

    @property
    def reads_host_state(self) -> bool:
        """Whether a training step reads a host value that changes from step to step:
        ``num_batches_tracked`` with ``momentum=None`` (the cumulative average weights the
        batch by ``1/num_batches_tracked``). Otherwise the count is bookkeeping that a
        replayed step advances by hand (:meth:`advance_host_state`)."""
        return self.track_running_stats and self.momentum is None

    def advance_host_state(self, steps: int = 1) -> None:
        """Count ``steps`` training batches as their forward passes would have."""
        if self.track_running_stats:
            self.num_batches_tracked += steps

    def backward(self, dy: Array) -> Array:
        dx, dgamma, dbeta = k.batch_norm_backward(dy, self._take_cache(), xp=self.xp)
        if self.affine:
            self.grads["weight"] = dgamma
            self.grads["bias"] = dbeta
        return dx

    def get_extra_state(self) -> dict[str, Any]:
        """``{"num_batches_tracked": int}``: the batch count that ``momentum=None`` (the
        cumulative average) weights the next batch by; saved in files and checkpoints."""
        return {"num_batches_tracked": int(self.num_batches_tracked)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`'s record (a missing key leaves the count as is)."""
        count = state.get("num_batches_tracked", self.num_batches_tracked) \
            if isinstance(state, dict) else self.num_batches_tracked
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"BatchNorm1d: num_batches_tracked must be an int >= 0, got "
                             f"{count!r}")
        self.num_batches_tracked = count

    def get_config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "dtype": backend.dtype_name(self.dtype)}

    def __repr__(self) -> str:
        return (f"BatchNorm1d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine})")


class LayerNorm(Layer):
    """Layer normalisation over the features of each sample (torch.nn.LayerNorm).

    ``y_i = γ · (x_i − μ_i) / √(σ²_i + eps) + β`` with ``μ_i`` and the biased ``σ²_i`` taken over
    sample ``i``'s features. No running statistics: training and evaluation compute the same.

    Parameters
    ----------
    normalized_shape
        D, the number of features (the last axis of the input).
    eps
        Added to the variance (1e-5).
    elementwise_affine
        Learn γ (``params["weight"]``, initially 1) and, with ``bias``, β (``params["bias"]``,
        initially 0), one per feature.
    bias
        Learn β (only with ``elementwise_affine``).
    dtype
        Parameter dtype, ``"float32"`` by default.
    """

    def __init__(
        self,
        normalized_shape: int,
        *,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        dtype: Any = "float32",
    ) -> None:
        super().__init__()
        self.normalized_shape = check_count(normalized_shape, argument="normalized_shape")
        self.in_features = self.out_features = normalized_shape
        self.eps = float(check_positive(eps, argument="eps"))
        self.elementwise_affine = check_flag(elementwise_affine, argument="elementwise_affine")
        self.use_bias = check_flag(bias, argument="bias") and elementwise_affine
        self.dtype = check_float_dtype(dtype, self.xp)
        self.reset_parameters(Generator(0))

    def reset_parameters(self, rng: Generator) -> None:
        """γ = 1, β = 0 (nothing random is drawn)."""
        kw = {"dtype": self.dtype, "device": self.device}
        if self.elementwise_affine:
            self.params["weight"] = self.xp.ones((self.normalized_shape,), **kw)
        if self.use_bias:
            self.params["bias"] = self.xp.zeros((self.normalized_shape,), **kw)
        self.grads.clear()

    def forward(self, x: Array, *, training: bool = True) -> Array:
        check_layer_input(x, self.normalized_shape, layer="LayerNorm")
        y, cache = k.layer_norm_forward(x, self.params.get("weight"), self.params.get("bias"),
                                        eps=self.eps, xp=self.xp)
        self._cache = cache if training else None
        return y

    def backward(self, dy: Array) -> Array:
        dx, dgamma, dbeta = k.layer_norm_backward(dy, self._take_cache(), xp=self.xp)
        if self.elementwise_affine:
            self.grads["weight"] = dgamma
        if self.use_bias:
            self.grads["bias"] = dbeta
        return dx

    def get_config(self) -> dict[str, Any]:
        return {"normalized_shape": self.normalized_shape, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.use_bias,
                "dtype": backend.dtype_name(self.dtype)}

    def __repr__(self) -> str:
        return f"LayerNorm({self.normalized_shape}, eps={self.eps})"
