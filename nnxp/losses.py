"""Loss objects: a kernel pair plus what the model needs to know about the task.

A loss object offers

* ``forward(outputs, targets, *, xp, sample_weight=None) -> (0-d loss, cache)`` and
  ``backward(cache, *, xp) -> ∂L/∂outputs`` (the kernels of :mod:`nnxp.kernels.losses`; every
  loss is the mean over the batch, see there for the weighted mean ``(1/N) Σ w_i l_i``);
* ``check_targets(y, n_outputs, *, xp, device, n_samples=None, dtype=None)``: the targets,
  validated once per ``fit``/``evaluate`` call, in the form the kernel expects, or an error that
  names the argument, the expected and the received value;
* ``is_classifier``; for classifiers ``predict_proba(outputs)`` (the probabilities behind the
  outputs), and for every loss ``predict(outputs)`` (class labels for classifiers, the raw
  outputs for regression) and ``n_correct(outputs, targets)`` (samples classified correctly).

Options are constructor arguments: ``fit(loss=Huber(delta=2.0))``,
``SoftmaxCrossEntropy(label_smoothing=0.1)``. Names in :data:`LOSSES` give the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import backend, validation
from .kernels import activations as act
from .kernels import losses as k
from .typing import Array

_SPARSE_HINT = (" (integer class labels need loss='sparse_categorical_cross_entropy' on "
                "probabilities or 'softmax_cross_entropy' on logits)")


class Loss:
    """Base class of the loss objects in :data:`LOSSES`.

    Subclasses set ``name``, ``is_classifier``, the kernel pair ``_kernel``/``_kernel_backward``
    and ``check_targets``; keyword options for the kernel come from :meth:`_options`.
    """

    name = "loss"
    is_classifier = False
    target_type = "real"
    """What ``check_targets`` accepts: ``"real"`` (regression values), ``"binary"``
    (probabilities in [0, 1], one column per output), ``"distribution"`` (one-hot or probability
    rows over the classes) or ``"class_labels"`` (integers in [0, n_classes))."""
    _kernel: Callable[..., tuple[Array, Any]]
    _kernel_backward: Callable[..., Array]

    def _options(self) -> dict[str, Any]:
        return {}

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments: ``type(loss)(**loss.get_config())`` rebuilds the loss."""
        return self._options()

    def _align(self, targets: Array, outputs: Array, xp: Any) -> Array:
        """Float targets in the outputs' dtype, ``(N,)`` reshaped to ``(N, 1)`` for 1 output."""
        if targets.ndim == 1 and outputs.ndim == 2 and outputs.shape[1] == 1:
            targets = xp.reshape(targets, (targets.shape[0], 1))
        if targets.dtype != outputs.dtype:
            targets = xp.astype(targets, outputs.dtype)
        return targets

    def forward(self, outputs: Array, targets: Array, *, xp: Any, sample_weight: Any = None,
                validate_sample_weight: bool = True) -> tuple[Array, Any]:
        """``(L, cache)``: the 0-d mean loss in the outputs' dtype and what backward needs.

        ``sample_weight`` (optional, ``(N,)``, non-negative) weights each sample's loss:
        ``L = (1/N) Σ_i w_i l_i``. It is validated here (two small device-to-host transfers)
        unless ``validate_sample_weight=False``, for a training loop that checked the weights
        once with :func:`nnxp.validation.check_sample_weight` and passes slices of them.
        """
        w = sample_weight
        if sample_weight is not None and validate_sample_weight:
            w = validation.check_sample_weight(sample_weight, outputs.shape[0],
                                               dtype=outputs.dtype, xp=xp,
                                               device=backend.device_of(outputs))
        targets = self._align(targets, outputs, xp)
        kernel = type(self)._kernel
        return kernel(outputs, targets, xp=xp, sample_weight=w, **self._options())

    def backward(self, cache: Any, *, xp: Any) -> Array:
        """``∂L/∂outputs`` from the cache of :meth:`forward` (includes ``1/N`` and weights)."""
        return type(self)._kernel_backward(cache, xp=xp)

    def __call__(self, outputs: Array, targets: Any, *, sample_weight: Any = None) -> Array:
        """The loss value alone: ``loss(outputs, targets)``, a 0-d array."""
        xp = backend.namespace_of(outputs)
        if not backend.is_array(targets):
            targets = backend.asarray(targets, xp=xp, device=backend.device_of(outputs))
        if outputs.ndim == 2:  # the checks fit() makes: label range, shapes, NaN, [0, 1]
            try:
                targets = self.check_targets(targets, outputs.shape[1], xp=xp,
                                             device=backend.device_of(outputs),
                                             n_samples=outputs.shape[0], dtype=outputs.dtype)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{type(self).__name__}(outputs, targets) with outputs of shape "
                                f"{tuple(outputs.shape)}: {exc}") from None
        return self.forward(outputs, targets, xp=xp, sample_weight=sample_weight)[0]

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
        dtype: Any = None,
    ) -> Array:
        """Validate ``y`` and return it on the backend in the form the kernel expects."""
        raise NotImplementedError

    def predict(self, outputs: Array, *, xp: Any) -> Array:
        """Class labels (int64, ``argmax``) for classifiers; the raw outputs for regression."""
        if self.is_classifier:
            return xp.argmax(outputs, axis=1)
        return outputs

    def n_correct(self, outputs: Array, targets: Array, *, xp: Any) -> Array:
        """How many samples are classified correctly, as a 0-d array of the default integer
        dtype (int64): ``count_nonzero`` of the hits, one operation where a cast and a sum
        were two (one kernel launch less per metric and step on a GPU)."""
        return xp.count_nonzero(self.predict(outputs, xp=xp) == targets)

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------


class _Regression(Loss):
    is_classifier = False

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
        dtype: Any = None,
    ) -> Array:
        return validation.check_float_targets(y, n_outputs, xp=xp, device=device,
                                              n_samples=n_samples, dtype=dtype)


class MSE(_Regression):
    """Mean squared error ``L = (1/N) Σ_i w_i (1/D) Σ_j (o_ij − t_ij)²``.

    Gradient ``2 w_i (o − t) / (N D)``. The default for regression; equals
    ``torch.nn.functional.mse_loss``.
    """

    name = "mse"
    _kernel = staticmethod(k.mse)
    _kernel_backward = staticmethod(k.mse_backward)


class HalfMSE(_Regression):
    """Half the mean squared error, ``½ MSE``: the classic backpropagation form.

    ``L = (1/N) Σ_i w_i (1/D) Σ_j ½ (o_ij − t_ij)²``, gradient ``w_i (o − t) / (N D)``.
    """

    name = "half_mse"
    _kernel = staticmethod(k.half_mse)
    _kernel_backward = staticmethod(k.half_mse_backward)


class MAE(_Regression):
    """Mean absolute error ``L = (1/N) Σ_i w_i (1/D) Σ_j |o_ij − t_ij|``.

    Gradient ``w_i sign(o − t) / (N D)``; robust to outliers, fits the conditional median.
    Equals ``torch.nn.functional.l1_loss``.
    """

    name = "mae"
    _kernel = staticmethod(k.mae)
    _kernel_backward = staticmethod(k.mae_backward)


class Huber(_Regression):
    """Huber loss: ``½ d²`` for ``|d| ≤ δ``, ``δ (|d| − ½ δ)`` beyond; mean over the batch.

    Gradient ``w_i clip(d, −δ, δ) / (N D)``. Equals ``torch.nn.functional.huber_loss``.

    Parameters
    ----------
    delta : float, > 0
        Where the loss turns from quadratic to linear (default 1.0).
    """

    name = "huber"
    _kernel = staticmethod(k.huber)
    _kernel_backward = staticmethod(k.huber_backward)

    def __init__(self, delta: float = 1.0) -> None:
        self.delta = float(validation.check_positive(delta, argument="delta"))
        if math.isinf(self.delta):
            raise ValueError(f"delta must be finite, got {delta!r}")

    def _options(self) -> dict[str, Any]:
        return {"delta": self.delta}


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------


class _Smoothed(Loss):
    is_classifier = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = validation.check_interval(label_smoothing,
                                                         argument="label_smoothing",
                                                         low=0.0, high=1.0)

    def _options(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing}


class _OnProbabilities(_Smoothed):
    """Losses on probabilities: ``eps`` is the clip bound, ``predict_proba`` the identity."""

    def __init__(self, label_smoothing: float = 0.0, eps: float = k.DEFAULT_EPS) -> None:
        super().__init__(label_smoothing)
        self.eps = validation.check_interval(eps, argument="eps", low=0.0, high=0.5,
                                             open_interval=True)

    def _options(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing, "eps": self.eps}

    def predict_proba(self, outputs: Array, *, xp: Any) -> Array:
        return outputs


class _Binary(_Smoothed):
    target_type = "binary"
    _threshold = 0.5

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
        dtype: Any = None,
    ) -> Array:
        return validation.check_float_targets(y, n_outputs, xp=xp, device=device,
                                              n_samples=n_samples, dtype=dtype,
                                              probabilities=True)

    def predict(self, outputs: Array, *, xp: Any) -> Array:
        """``1`` where the predicted probability is ≥ 0.5: ``(N,)`` for one output, else
        ``(N, D)`` (one label per output of a multi-label model), int64."""
        labels = xp.astype(outputs >= self._threshold, xp.int64)
        return labels[:, 0] if outputs.ndim == 2 and outputs.shape[1] == 1 else labels

    def n_correct(self, outputs: Array, targets: Array, *, xp: Any) -> Array:
        """Samples whose every output lands on the right side of 0.5 (exact match)."""
        targets = self._align(targets, outputs, xp)
        hit = (outputs >= self._threshold) == (targets >= 0.5)
        if hit.ndim > 1:
            hit = xp.all(hit, axis=tuple(range(1, hit.ndim)))
        return xp.count_nonzero(hit)


class BinaryCrossEntropy(_Binary, _OnProbabilities):
    """Binary cross-entropy on probabilities (e.g. after a sigmoid), clipped to ``[eps, 1−eps]``.

    ``L = −(1/N) Σ_i w_i (1/D) Σ_j [t log p + (1 − t) log(1 − p)]``, gradient
    ``w_i (p − t) / (p (1 − p)) / (N D)``. Prefer :class:`BinaryCrossEntropyWithLogits`, which
    is exact where this one must clip. Targets in ``[0, 1]``, shape ``(N, D)`` (or ``(N,)`` for
    one output); label smoothing ``t(1 − ε) + ε/2``.
    """

    name = "binary_cross_entropy"
    _kernel = staticmethod(k.binary_cross_entropy)
    _kernel_backward = staticmethod(k.binary_cross_entropy_backward)


class BinaryCrossEntropyWithLogits(_Binary):
    """Sigmoid + binary cross-entropy fused: ``max(x, 0) − x t + log1p(exp(−|x|))``.

    Gradient ``w_i (σ(x) − t) / (N D)``; finite for logits of any size. ``predict_proba`` is the
    sigmoid of the outputs. Equals ``torch.nn.functional.binary_cross_entropy_with_logits``.
    """

    name = "binary_cross_entropy_with_logits"
    _threshold = 0.0  # σ(x) ≥ 0.5  ⇔  x ≥ 0
    _kernel = staticmethod(k.binary_cross_entropy_with_logits)
    _kernel_backward = staticmethod(k.binary_cross_entropy_with_logits_backward)

    def predict_proba(self, outputs: Array, *, xp: Any) -> Array:
        return act.sigmoid(outputs, xp=xp)


class CategoricalCrossEntropy(_OnProbabilities):
    """Cross-entropy on probabilities (e.g. after a Softmax layer) with one-hot / probability
    targets ``(N, C)`` whose rows sum to 1.

    ``L = −(1/N) Σ_i w_i Σ_k t_ik log p_ik``, gradient ``−w_i t_ik / (N p_ik)``; label smoothing
    ``(1 − ε) t + ε/C``.
    """

    name = "categorical_cross_entropy"
    target_type = "distribution"
    _kernel = staticmethod(k.categorical_cross_entropy)
    _kernel_backward = staticmethod(k.categorical_cross_entropy_backward)

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
        dtype: Any = None,
    ) -> Array:
        y = validation.check_float_targets(y, n_outputs, xp=xp, device=device,
                                           n_samples=n_samples, dtype=dtype,
                                           probabilities=True, hint=_SPARSE_HINT)
        sums = xp.sum(xp.astype(y, xp.float64), axis=1)
        lo, hi = backend.to_float(xp.min(sums)), backend.to_float(xp.max(sums))
        if abs(lo - 1.0) > 1e-3 or abs(hi - 1.0) > 1e-3:
            raise ValueError(f"y must hold one-hot or probability rows that sum to 1, got row "
                             f"sums in [{lo:g}, {hi:g}]")
        return y

    def n_correct(self, outputs: Array, targets: Array, *, xp: Any) -> Array:
        hit = xp.argmax(outputs, axis=1) == xp.argmax(targets, axis=1)
        return xp.count_nonzero(hit)


class _Sparse(Loss):
    target_type = "class_labels"

    def check_targets(
        self, y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
        dtype: Any = None,
    ) -> Array:
        return validation.check_class_labels(y, n_outputs, xp=xp, device=device,
                                             n_samples=n_samples)

    def _align(self, targets: Array, outputs: Array, xp: Any) -> Array:
        return targets  # integer labels stay integers


class SparseCategoricalCrossEntropy(_Sparse, _OnProbabilities):
    """Cross-entropy on probabilities with integer labels ``(N,)`` in ``[0, C)``.

    ``L = −(1/N) Σ_i w_i log p_{i, y_i}``, gradient ``−w_i onehot(y)_ik / (N p_ik)``.
    """

    name = "sparse_categorical_cross_entropy"
    _kernel = staticmethod(k.sparse_categorical_cross_entropy)
    _kernel_backward = staticmethod(k.sparse_categorical_cross_entropy_backward)


class SoftmaxCrossEntropy(_Sparse, _Smoothed):
    """Softmax then cross-entropy on integer labels, fused; mean over the batch.

    ``L = −(1/N) Σ_i w_i log softmax(z_i)_{y_i}``, gradient ``w_i (softmax(z) − onehot(y)) / N``
    (with label smoothing, ``onehot`` becomes ``(1 − ε) onehot + ε/C``). Equals
    ``torch.nn.functional.cross_entropy(z, y, label_smoothing=ε)``.
    """

    name = "softmax_cross_entropy"
    _kernel = staticmethod(k.softmax_cross_entropy)
    _kernel_backward = staticmethod(k.softmax_cross_entropy_backward)

    def predict_proba(self, outputs: Array, *, xp: Any) -> Array:
        return act.softmax(outputs, xp=xp)


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (MSE, HalfMSE, MAE, Huber, BinaryCrossEntropy, BinaryCrossEntropyWithLogits,
                CategoricalCrossEntropy, SparseCategoricalCrossEntropy, SoftmaxCrossEntropy)
}
"""Losses by name; the name gives the loss with its default options."""


def get_loss(loss: str | Loss | type[Loss]) -> Loss:
    """A loss object from a name in :data:`LOSSES`, a loss class, or an instance."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, type) and issubclass(loss, Loss):
        return loss()
    try:
        return LOSSES[loss]()
    except (KeyError, TypeError):
        raise ValueError(
            f"loss={loss!r} is not a known loss; valid names are {', '.join(sorted(LOSSES))}"
        ) from None
