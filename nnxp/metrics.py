"""Metrics by name, computed on the device and accumulated over the batches of an epoch.

A metric object works in two steps so that ``fit`` can evaluate it on every mini-batch without a
device-to-host transfer:

* ``state = metric.update(state, outputs, targets, xp=xp)`` folds one batch into a running
  state (a tuple of device arrays and Python ints; ``state=None`` starts afresh);
* ``metric.result(state, xp=xp)`` turns the state into a 0-d float64 array on the device.

``fit`` stacks every metric's result with the losses into one vector and moves it to the host
once per epoch. Calling a metric, ``metric(outputs, targets)``, does both steps for one batch.

Names in :data:`METRICS` (and :func:`get_metric`):

================== =====================================================================
``accuracy``        fraction of samples whose predicted class is the label (alias ``acc``)
``top_k_accuracy``  fraction whose label is among the ``k = 5`` highest scores; ``top_3_accuracy``
                    and the like choose ``k``
``mse``             mean squared error over every output (alias ``mean_squared_error``)
``mae``             mean absolute error (alias ``mean_absolute_error``)
``r2``              coefficient of determination, averaged over outputs (alias ``r2_score``)
================== =====================================================================

Shapes: ``outputs`` is the model's ``(n, k)`` output (logits for classifiers). Classification
targets are integer labels ``(n,)`` (one-hot rows ``(n, k)`` are also accepted); with a single
output column the prediction is ``outputs[:, 0] > 0`` (a logit threshold). Regression targets
have the outputs' shape, or ``(n,)`` when ``k = 1``.
"""

from __future__ import annotations

import re
from typing import Any

from . import backend
from .typing import Array
from .validation import check_count

State = Any

__all__ = [
    "METRICS",
    "Accuracy",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Metric",
    "R2Score",
    "TopKAccuracy",
    "get_metric",
    "get_metrics",
]


class Metric:
    """Base class: a named quantity computed from model outputs and targets.

    Subclasses implement :meth:`update` and :meth:`result`; ``greater_is_better`` tells
    ``EarlyStopping(mode="auto")`` which way is an improvement.
    """

    name = "metric"
    greater_is_better = True
    task = "any"  # "classification", "regression" or "any"
    holds_batch_arrays = True
    """Whether :meth:`update` may keep references to the ``outputs`` and ``targets`` it is
    given (to reduce them at :meth:`result`, e.g. an AUC). ``fit(capture=True)`` then hands it
    copies: there the batch arrays are static buffers that the next step overwrites. The
    metrics here reduce every batch on the spot and say False (no copies). A declaration
    holds for the ``update`` of the class that makes it (:func:`may_hold_batch_arrays`): a
    subclass that overrides ``update`` declares again or counts as True."""

    def update(self, state: State | None, outputs: Array, targets: Array, *, xp: Any) -> State:
        """Fold one batch into ``state`` (``None`` at the start of an epoch)."""
        raise NotImplementedError

    def result(self, state: State, *, xp: Any) -> Array:
        """The metric value over everything folded into ``state``, as a 0-d float64 array."""
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        """Two states folded over disjoint samples as one (data-parallel ranks' states, on
        the host); the default adds them component by component (sums and counts)."""
        return tuple(x + y for x, y in zip(a, b))

    def __call__(self, outputs: Array, targets: Array, *, xp: Any = None) -> Array:
        """The metric on a single batch (a 0-d float64 array on the outputs' device)."""
        if xp is None:
            xp = backend.namespace_of(outputs)
        return self.result(self.update(None, outputs, targets, xp=xp), xp=xp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _float64(x: Array, xp: Any) -> Array:
    return xp.astype(x, xp.float64)


def _shape_error(metric: Metric, outputs: Array, targets: Array, expected: str) -> ValueError:
    return ValueError(f"metric {metric.name!r} expects {expected}; got outputs of shape "
                      f"{tuple(outputs.shape)} and targets of shape {tuple(targets.shape)}")


def _class_predictions(metric: Metric, outputs: Array, targets: Array, xp: Any
                       ) -> tuple[Array, Array]:
    """(predicted labels, true labels), both int64 of shape (n,)."""
    if outputs.ndim != 2:
        raise _shape_error(metric, outputs, targets, "2-D outputs (n, n_classes)")
    n = outputs.shape[0]
    if targets.ndim == 2 and targets.shape == outputs.shape and outputs.shape[1] > 1:
        targets = xp.argmax(targets, axis=1)  # one-hot or probability rows
    elif targets.ndim == 2 and targets.shape == (n, 1):
        targets = targets[:, 0]
    if targets.ndim != 1 or targets.shape[0] != n:
        raise _shape_error(metric, outputs, targets, "integer labels of shape (n,)")
    if outputs.shape[1] == 1:  # one logit per sample: class 1 when it is positive
        pred = xp.astype(outputs[:, 0] > 0, xp.int64)
    else:
        pred = xp.argmax(outputs, axis=1)
    if not xp.isdtype(targets.dtype, "integral"):
        targets = xp.astype(targets, xp.int64)
    return xp.astype(pred, xp.int64), xp.astype(targets, xp.int64)


def may_hold_batch_arrays(metric: Any) -> bool:
    """Whether ``metric.update`` may keep references to the arrays it is given.

    The metric's ``holds_batch_arrays`` (set on the object, or declared by its class), where
    the class that declares it is the one whose ``update`` runs, or a subclass of it; True
    otherwise: a subclass of :class:`Accuracy` that overrides ``update`` (to keep the batches
    for a confusion matrix, say) has not declared what the shipped ``update`` declared."""
    if "holds_batch_arrays" in getattr(metric, "__dict__", {}):
        return bool(metric.holds_batch_arrays)
    mro = type(metric).__mro__
    declared = next((c for c in mro if "holds_batch_arrays" in vars(c)), None)
    updating = next((c for c in mro if "update" in vars(c)), None)
    if declared is None or updating is None or mro.index(declared) > mro.index(updating):
        return True
    return bool(vars(declared)["holds_batch_arrays"])


class Accuracy(Metric):
    """``(1/n) Σ_i [argmax_j outputs_ij = y_i]``; state: (hits as 0-d int64, n).

    Parameters
    ----------
    loss
        When given (``fit`` passes the model's loss), the loss object's ``n_correct`` decides
        what a correct prediction is — e.g. a 0.5 threshold on probabilities for
        ``binary_cross_entropy``, every label right for a multi-label model. Without it, the
        rule of the module docstring applies (argmax, or a logit threshold at 0).
    """

    name = "accuracy"
    holds_batch_arrays = False  # reduced on the spot
    task = "classification"

    def __init__(self, *, loss: Any = None) -> None:
        self.loss = loss

    def update(self, state: State | None, outputs: Array, targets: Array, *, xp: Any) -> State:
        if self.loss is not None and hasattr(self.loss, "n_correct"):
            hits = self.loss.n_correct(outputs, targets, xp=xp)
        else:
            pred, true = _class_predictions(self, outputs, targets, xp)
            hits = xp.count_nonzero(pred == true)
        if state is None:
            return hits, outputs.shape[0]
        return state[0] + hits, state[1] + outputs.shape[0]

    def result(self, state: State, *, xp: Any) -> Array:
        return _float64(state[0], xp) / max(state[1], 1)


class TopKAccuracy(Metric):
    """Fraction of samples whose label is among the ``k`` highest outputs.

    Computed without sorting: the label is in the top ``k`` when fewer than ``k`` classes score
    strictly higher than it, ``Σ_j [outputs_ij > outputs_{i,y_i}] < k`` (ties count in the
    label's favour). With ``k >= n_classes`` every sample counts as a hit.
    """

    holds_batch_arrays = False  # reduced on the spot

    task = "classification"

    def __init__(self, k: int = 5, *, name: str | None = None) -> None:
        self.k = check_count(k, argument="k")
        self.name = name if name is not None else f"top_{self.k}_accuracy"

    def update(self, state: State | None, outputs: Array, targets: Array, *, xp: Any) -> State:
        if outputs.ndim != 2 or outputs.shape[1] < 2:
            raise _shape_error(self, outputs, targets, "outputs (n, n_classes >= 2)")
        _, true = _class_predictions(self, outputs, targets, xp)
        classes = xp.arange(outputs.shape[1], dtype=xp.int64, device=_device(outputs))
        is_true = true[:, None] == classes[None, :]
        zero = xp.zeros((), dtype=outputs.dtype, device=_device(outputs))
        true_score = xp.sum(xp.where(is_true, outputs, zero), axis=1)
        rank = xp.sum(xp.astype(outputs > true_score[:, None], xp.int64), axis=1)
        hits = xp.count_nonzero(rank < self.k)
        if state is None:
            return hits, outputs.shape[0]
        return state[0] + hits, state[1] + outputs.shape[0]

    def result(self, state: State, *, xp: Any) -> Array:
        return _float64(state[0], xp) / max(state[1], 1)

    def __repr__(self) -> str:
        return f"TopKAccuracy(k={self.k})"


def _device(x: Array) -> Any:
    return backend.device_of(x)


def _regression_pair(metric: Metric, outputs: Array, targets: Array, xp: Any
                     ) -> tuple[Array, Array]:
    """Outputs and targets as matching 2-D arrays of the outputs' float dtype."""
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if targets.ndim == 1 and outputs.shape[1] == 1:
        targets = targets[:, None]
    if targets.shape != outputs.shape:
        raise _shape_error(metric, outputs, targets, "targets of the outputs' shape")
    if targets.dtype != outputs.dtype:
        targets = xp.astype(targets, outputs.dtype)
    return outputs, targets


class _MeanElementwiseError(Metric):
    """``(1/(n k)) Σ_ij e(outputs_ij − y_ij)``; state: (sum of the errors, count)."""

    holds_batch_arrays = False  # reduced on the spot

    greater_is_better = False
    task = "regression"

    @staticmethod
    def _error(diff: Array, xp: Any) -> Array:
        raise NotImplementedError

    def update(self, state: State | None, outputs: Array, targets: Array, *, xp: Any) -> State:
        out, y = _regression_pair(self, outputs, targets, xp)
        total = xp.sum(self._error(out - y, xp))
        count = out.shape[0] * out.shape[1]
        if state is None:
            return total, count
        return state[0] + total, state[1] + count

    def result(self, state: State, *, xp: Any) -> Array:
        return _float64(state[0], xp) / max(state[1], 1)


class MeanSquaredError(_MeanElementwiseError):
    """``(1/(n k)) Σ_ij (outputs_ij − y_ij)²``; state: (sum of squares, count)."""

    name = "mse"

    @staticmethod
    def _error(diff: Array, xp: Any) -> Array:
        return diff * diff


class MeanAbsoluteError(_MeanElementwiseError):
    """``(1/(n k)) Σ_ij |outputs_ij − y_ij|``; state: (sum of absolute errors, count)."""

    name = "mae"

    @staticmethod
    def _error(diff: Array, xp: Any) -> Array:
        return xp.abs(diff)


class R2Score(Metric):
    """Coefficient of determination, averaged uniformly over the ``k`` outputs.

    ``R²_j = 1 − SS_res,j / SS_tot,j`` with ``SS_res,j = Σ_i (y_ij − outputs_ij)²`` and
    ``SS_tot,j = Σ_i (y_ij − ȳ_j)²``; a constant target column scores 1 when it is predicted
    exactly and 0 otherwise (scikit-learn's ``force_finite``). The per-batch statistics
    ``(n, ȳ, SS_tot, SS_res)`` are merged with Chan et al.'s pairwise update
    ``ȳ = ȳ_a + δ n_b/n``, ``SS_tot = SS_a + SS_b + δ² n_a n_b / n`` (``δ = ȳ_b − ȳ_a``), which
    avoids the cancellation of ``Σy² − (Σy)²/n`` in float32. The statistics are kept in float64.
    """

    name = "r2"
    holds_batch_arrays = False  # reduced on the spot
    task = "regression"

    def update(self, state: State | None, outputs: Array, targets: Array, *, xp: Any) -> State:
        out, y = _regression_pair(self, outputs, targets, xp)
        out, y = _float64(out, xp), _float64(y, xp)
        n_b = out.shape[0]
        mean_b = xp.mean(y, axis=0)
        centred = y - mean_b[None, :]
        ss_b = xp.sum(centred * centred, axis=0)
        res = y - out
        res_b = xp.sum(res * res, axis=0)
        if state is None:
            return n_b, mean_b, ss_b, res_b
        n_a, mean_a, ss_a, res_a = state
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        ss = ss_a + ss_b + delta * delta * (n_a * n_b / n)
        return n, mean, ss, res_a + res_b

    def merge(self, a: State, b: State) -> State:
        """Chan's pairwise update of the count, mean and centred sum of squares."""
        n_a, mean_a, ss_a, res_a = a
        n_b, mean_b, ss_b, res_b = b
        n = n_a + n_b
        delta = mean_b - mean_a
        return (n, mean_a + delta * (n_b / n), ss_a + ss_b + delta * delta * (n_a * n_b / n),
                res_a + res_b)

    def result(self, state: State, *, xp: Any) -> Array:
        _, _, ss_tot, ss_res = state
        constant = ss_tot == 0
        safe_tot = xp.where(constant, xp.ones_like(ss_tot), ss_tot)
        score = 1.0 - ss_res / safe_tot
        exact = xp.astype(ss_res == 0, ss_tot.dtype)
        score = xp.where(constant, exact, score)
        return xp.mean(score)


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "mse": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "r2": R2Score,
}
"""Metric classes by name; :func:`get_metric` also understands the aliases and ``top_<k>_...``."""

_ALIASES = {
    "acc": "accuracy",
    "mean_squared_error": "mse",
    "mean_absolute_error": "mae",
    "r2_score": "r2",
}

_TOP_K = re.compile(r"top_(\d+)_accuracy")


def get_metric(metric: str | Metric, *, loss: Any = None) -> Metric:
    """A metric object from a name (see :data:`METRICS`) or an instance.

    ``"top_k_accuracy"`` is top-5 accuracy, logged as ``"top_k_accuracy"``; ``"top_3_accuracy"``
    is top-3 accuracy, logged under that name. Aliases log under their canonical name.
    ``loss`` is handed to :class:`Accuracy` (see there).
    """
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str):
        raise TypeError(f"metrics must be names (str) or nnxp.metrics.Metric objects, got "
                        f"{metric!r}")
    key = metric.strip().lower()
    key = _ALIASES.get(key, key)
    if key == "accuracy":
        return Accuracy(loss=loss)
    if key == "top_k_accuracy":
        return TopKAccuracy(5, name="top_k_accuracy")
    match = _TOP_K.fullmatch(key)
    if match:
        return TopKAccuracy(int(match.group(1)))
    try:
        return METRICS[key]()
    except KeyError:
        valid = sorted([*METRICS, *_ALIASES, "top_<k>_accuracy"])
        raise ValueError(f"metric {metric!r} is not known; valid names are "
                         f"{', '.join(valid)}") from None


def get_metrics(metrics: Any, *, is_classifier: bool, loss: Any = None) -> list[Metric]:
    """The metric list for ``fit``: ``None`` gives ``["accuracy"]`` for classifiers and nothing
    for regression; a single name or object is wrapped in a list. Duplicate names are an error.
    """
    if metrics is None:
        return [Accuracy(loss=loss)] if is_classifier else []
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    try:
        resolved = [get_metric(m, loss=loss) for m in metrics]
    except TypeError:
        if not hasattr(metrics, "__iter__"):
            raise TypeError(f"metrics must be a list of names or Metric objects, got "
                            f"{metrics!r}") from None
        raise
    names = [m.name for m in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"metrics lists {', '.join(dupes)} more than once: {names}")
    reserved = {"loss", "lr", "epoch_time"}
    clash = [n for n in names if n in reserved or n.startswith("val_")]
    if clash:
        raise ValueError(f"metric names may not be {', '.join(clash)}: these log keys are "
                         "reserved for the training loop")
    return resolved
