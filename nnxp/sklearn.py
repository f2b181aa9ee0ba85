"""scikit-learn estimators backed by nnxp: :class:`MLPClassifier` and :class:`MLPRegressor`.

scikit-learn is an optional extra (``pip install 'nnxp[demo]'``): ``import nnxp`` never imports
it, ``import nnxp.sklearn`` does. The estimators follow scikit-learn's conventions —
hyperparameters in ``__init__`` stored as given and validated in ``fit``, fitted attributes with
a trailing underscore, ``get_params``/``set_params`` from ``BaseEstimator`` — so they work in
``Pipeline``, ``GridSearchCV``, ``clone`` and pickle, and pass ``check_estimator``.

The network trains on the backend named by ``backend`` (default: the active nnxp backend); its
inputs may be anything scikit-learn accepts, and every output (``predict``, ``predict_proba``,
``loss_curve_``, ...) is NumPy or a Python number, as scikit-learn expects.

Training follows :class:`sklearn.neural_network.MLPClassifier`'s schedule: ``max_iter`` epochs of
shuffled mini-batches, stopping early when the training loss (or, with ``early_stopping``, the
validation score) has not improved by ``tol`` for ``n_iter_no_change`` epochs in a row. Unlike
scikit-learn, no ``ConvergenceWarning`` is emitted when ``max_iter`` is reached: ``n_iter_ ==
max_iter`` says so. The loss is softmax cross-entropy (also for two classes) for the classifier
and the mean squared error for the regressor; there is no L2 ``alpha`` term (use
``weight_decay`` of the optimizer through ``solver_options``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import (
        _check_partial_fit_first_call,
        check_classification_targets,
    )
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("nnxp.sklearn needs scikit-learn, an optional extra: pip install "
                      f"'nnxp[demo]' (or pip install scikit-learn) ({exc})") from None

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


from . import backend as _backend
from . import io as _io
from .layers import Dense, get_activation
from .losses import get_loss
from .model import Sequential
from .optim import OPTIMIZERS
from .random import Generator
from .validation import check_features, check_int

__all__ = ["MLPClassifier", "MLPRegressor"]

_FLOATS = ("float64", "float32")


class _BaseMLP(BaseEstimator):
    """Shared fitting code; see :class:`MLPClassifier` for the parameters."""

    _loss_name = "mse"

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        learning_rate_init: float = 0.001,
        batch_size: Any = "auto",
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        solver_options: dict[str, Any] | None = None,
        backend: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.solver_options = solver_options
        self.backend = backend
        self.verbose = verbose

    # --- validation of the hyperparameters (in fit, as scikit-learn requires) --------------

    def _check_params(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ValueError("hidden_layer_sizes must be an int or a sequence of ints, got "
                             f"{self.hidden_layer_sizes!r}") from None
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) > 0
                   for s in sizes):
            raise ValueError(f"hidden_layer_sizes must hold positive ints, got {sizes!r}")
        for name in ("max_iter", "n_iter_no_change"):
            check_int(getattr(self, name), argument=name, low=1)
        if not isinstance(self.learning_rate_init, numbers.Real) or \
                not self.learning_rate_init > 0:
            raise ValueError(f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"tol must be >= 0, got {self.tol!r}")
        if self.early_stopping and not (isinstance(self.validation_fraction, numbers.Real)
                                        and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must lie in (0, 1), got "
                             f"{self.validation_fraction!r}")
        bs = self.batch_size
        if bs != "auto" and (isinstance(bs, bool) or not isinstance(bs, numbers.Integral)
                             or bs < 1):
            raise ValueError(f"batch_size must be 'auto' or a positive int, got {bs!r}")
        solver = str(self.solver).lower()
        if solver not in OPTIMIZERS or solver == "lbfgs":
            valid = sorted(name for name in OPTIMIZERS if name != "lbfgs")
            raise ValueError(f"solver={self.solver!r} is not supported; valid names are "
                             f"{', '.join(valid)}")
        for name in ("shuffle", "early_stopping"):  # "no" would be truthy
            value = getattr(self, name)
            if not (isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")):
                raise ValueError(f"{name} must be True or False, got {value!r}")
        options = self.solver_options
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"solver_options must be a dict of optimizer keyword arguments or "
                             f"None, got {type(options).__name__} {options!r}")
        if options and "lr" in options:
            raise ValueError("solver_options must not hold 'lr'; set learning_rate_init instead")
        return tuple(int(s) for s in sizes)

    def _backend_context(self) -> Any:
        return _backend.use_backend(self.backend) if self.backend else _NullContext()

    # --- building the network ---------------------------------------------------------------

    def _build(self, n_features: int, n_outputs: int, dtype: str) -> None:
        sizes = self._check_params()
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        widths = [n_features, *sizes, n_outputs]
        with self._backend_context():
            layers: list[Any] = []
            for i in range(len(widths) - 1):
                layers.append(Dense(widths[i], widths[i + 1], dtype=dtype,
                                    init="he_normal" if self.activation == "relu"
                                    else "glorot_uniform"))
                if i < len(widths) - 2:
                    act = get_activation(self.activation)
                    if act is None:
                        raise ValueError(f"activation={self.activation!r} gives no layer")
                    layers.append(act)
            model = Sequential(layers, seed=seed)
        model.loss = get_loss(self._loss_name)
        options = dict(self.solver_options or {})
        make: Any = OPTIMIZERS[str(self.solver).lower()]
        try:
            optimizer = make(lr=float(self.learning_rate_init), **options)
        except TypeError as exc:
            raise ValueError(f"solver_options={options!r} does not fit solver="
                             f"{self.solver!r}: {exc}") from None
        optimizer.bind(model.parameters())
        model.optimizer = optimizer
        self.model_ = model
        self._shuffle_rng = Generator(seed)
        self.n_iter_ = 0
        self.t_ = 0
        self.loss_curve_: list[float] = []
        self.best_loss_ = math.inf
        self._no_improvement = 0
        self.validation_scores_: list[float] | None = [] if self.early_stopping else None
        self.best_validation_score_: float | None = -math.inf if self.early_stopping else None
        self._best_params: list[Any] | None = None

    # --- one epoch --------------------------------------------------------------------------

    def _epoch(self, X: Any, y: Any) -> float:
        model, opt = self.model_, self.model_.optimizer
        xp, n = model.xp, X.shape[0]
        bs = n if self.batch_size == "auto" and n <= 200 else (
            200 if self.batch_size == "auto" else min(int(self.batch_size), n))
        if self.shuffle:
            order = self._shuffle_rng.permutation(n, xp=xp, device=model.device)
            X, y = xp.take(X, order, axis=0), xp.take(y, order, axis=0)
        total = xp.zeros((), dtype=model.dtype, device=model.device)
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            yb = y[start:stop, ...] if y.ndim == 2 else y[start:stop]
            value = model.loss_and_grads(X[start:stop, ...], yb)
            opt.step()
            total = total + value * (stop - start)
        loss = _backend.to_float(total) / n
        if not math.isfinite(loss):
            raise ValueError(f"the training loss became {loss} in iteration {self.n_iter_ + 1}; "
                             "lower learning_rate_init or scale the inputs")
        self.n_iter_ += 1
        self.t_ += n
        self.loss_curve_.append(loss)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
        return loss

    def _on_device(self, X: Any, y: Any) -> tuple[Any, Any]:
        model = self.model_
        Xd = check_features(X, n_features=model.n_features, dtype=model.dtype, xp=model.xp,
                            device=model.device)
        yd = model.loss.check_targets(y, model.n_outputs or 1, xp=model.xp, device=model.device,
                                      n_samples=Xd.shape[0], dtype=model.dtype)
        return Xd, yd

    def _train(self, X: Any, y: Any, y_original: Any, epochs: int, incremental: bool) -> None:
        X_val = y_val = None
        if self.early_stopping and not incremental:
            stratify = y_original if isinstance(self, ClassifierMixin) else None
            seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
            try:
                X, X_val, y, _, _, y_val = train_test_split(
                    X, y, y_original, test_size=self.validation_fraction, random_state=seed,
                    stratify=stratify)
            except ValueError:  # a class too small to stratify: split without
                X, X_val, y, _, _, y_val = train_test_split(
                    X, y, y_original, test_size=self.validation_fraction, random_state=seed)
        Xd, yd = self._on_device(X, y)
        for _ in range(epochs):
            loss = self._epoch(Xd, yd)
            if incremental:
                continue
            if X_val is not None:
                score = float(self.score(X_val, y_val))
                assert self.validation_scores_ is not None
                self.validation_scores_.append(score)
                best = self.best_validation_score_
                assert best is not None
                self._no_improvement = self._no_improvement + 1 \
                    if score < best + self.tol else 0
                if score > best:
                    self.best_validation_score_ = score
                    self._best_params = self._copy_params()
            else:
                self._no_improvement = self._no_improvement + 1 \
                    if loss > self.best_loss_ - self.tol else 0
                self.best_loss_ = min(self.best_loss_, loss)
            if self._no_improvement > self.n_iter_no_change:
                break
        if X_val is not None and self._best_params is not None:
            self._restore_params(self._best_params)

    def _copy_params(self) -> list[Any]:
        xp = self.model_.xp
        return [xp.asarray(layer.params[k], copy=True) for layer, k in
                self.model_.parameters()]

    def _restore_params(self, values: list[Any]) -> None:
        for (layer, key), value in zip(self.model_.parameters(), values):
            layer.params[key] = value

    # --- pickling: through nnxp's own format (modules and devices do not pickle) -----------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        model = state.pop("model_", None)
        if model is not None:
            state["_model_record"] = _io.model_record(model)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        record = state.pop("_model_record", None)
        self.__dict__.update(state)
        if record is not None:
            with self._backend_context():
                self.model_ = _io.from_record(*record)

class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by nnxp, with scikit-learn's interface.

    The network is ``Dense → activation`` for every entry of ``hidden_layer_sizes``, then a
    ``Dense`` layer with one output per class, trained with the softmax cross-entropy
    ``L = −(1/N) Σ_i log softmax(z_i)_{y_i}``.

    Parameters
    ----------
    hidden_layer_sizes : int or tuple of int, default (100,)
        Width of each hidden layer.
    activation : str, default "relu"
        A name from ``nnxp.layers.ACTIVATIONS`` ("relu", "tanh", "sigmoid", "gelu", ...).
    solver : str, default "adam"
        An optimizer name from ``nnxp.optim.OPTIMIZERS`` (not "lbfgs").
    learning_rate_init : float, default 0.001
        The optimizer's learning rate.
    batch_size : int or "auto", default "auto"
        Samples per update; "auto" is ``min(200, n_samples)``; larger values are clipped.
    max_iter : int, default 200
        Epochs (passes over the training data) at most.
    shuffle : bool, default True
        Reshuffle the samples every epoch.
    random_state : int, RandomState or None
        Seeds the initial weights, the shuffling and the validation split.
    tol : float, default 1e-4
        Improvement below which an epoch counts as "no improvement".
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the data (stratified) and stop when the validation
        accuracy has not improved by ``tol`` for ``n_iter_no_change`` epochs; the parameters of
        the best epoch are kept. Without it, the training loss is watched instead.
    validation_fraction : float, default 0.1
    n_iter_no_change : int, default 10
    solver_options : dict or None
        Further keyword arguments of the optimizer (``{"weight_decay": 1e-4}``, ...).
    backend : str or None
        nnxp backend to train on ("numpy", "torch", "torch:cuda", "cupy", ...); ``None`` is the
        active one.
    verbose : bool, default False
        Print the loss after every epoch.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted class labels (any type scikit-learn accepts: ints, strings, ...); class
        ``classes_[k]`` is the network's output ``k``.
    loss_curve_ : list of float
        Mean training loss per epoch.
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    best_loss_ : float
    validation_scores_, best_validation_score_ : with ``early_stopping`` only.
    model_ : nnxp.Sequential
        The trained network (with its optimizer in ``model_.optimizer``).
    n_features_in_ : int
    """

    _loss_name = "softmax_cross_entropy"

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train a new network on ``X`` (n_samples, n_features) and labels ``y``."""
        self._check_params()
        X, y = _validate_data(self, X, y, dtype=_FLOATS, reset=True)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        self._build(X.shape[1], len(self.classes_), _dtype_of(X))
        with self._backend_context():
            self._train(X, encoder.transform(y), y, int(self.max_iter), incremental=False)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over ``(X, y)``; ``classes`` (every label) is required on the first call."""
        first = _check_partial_fit_first_call(self, classes)
        X, y = _validate_data(self, X, y, dtype=_FLOATS, reset=first)
        check_classification_targets(y)
        encoder = LabelEncoder()
        encoder.classes_ = self.classes_
        try:
            codes = encoder.transform(y)
        except ValueError as exc:
            raise ValueError(f"y holds labels not in classes={list(self.classes_)}: "
                             f"{exc}") from None
        if first:
            self._build(X.shape[1], len(self.classes_), _dtype_of(X))
        with self._backend_context():
            self._train(X, codes, y, 1, incremental=True)
        return self

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, NumPy ``(n_samples, n_classes)``, columns in ``classes_`` order."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, reset=False, dtype=_FLOATS)
        return _backend.to_numpy(self.model_.predict_proba(X))

    def predict_log_proba(self, X: Any) -> Any:
        """``log(predict_proba(X))``, NumPy."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, reset=False, dtype=_FLOATS)
        model = self.model_
        return _backend.to_numpy(model.xp.log(model.predict_proba(X)))

    def predict(self, X: Any) -> Any:
        """The most probable class label of every sample (NumPy, labels from ``classes_``)."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, reset=False, dtype=_FLOATS)
        return self.classes_[_backend.to_numpy(self.model_.predict(X))]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by nnxp, with scikit-learn's interface.

    ``Dense → activation`` per hidden layer, then a linear ``Dense`` layer with one output per
    target, trained on the mean squared error ``L = (1/N) Σ_i (1/D) Σ_j (o_ij − y_ij)²``.
    Multi-output targets ``(n_samples, n_targets)`` are supported. Parameters and attributes
    are those of :class:`MLPClassifier` (without ``classes_``); with ``early_stopping`` the
    validation score is R².
    """

    _loss_name = "mse"

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        """Train a new network on ``X`` (n_samples, n_features) and targets ``y``."""
        self._check_params()
        X, y = _validate_data(self, X, y, dtype=_FLOATS, reset=True, multi_output=True,
                              y_numeric=True)
        self._build(X.shape[1], 1 if y.ndim == 1 else y.shape[1], _dtype_of(X))
        self._y_ndim = y.ndim
        with self._backend_context():
            self._train(X, y, y, int(self.max_iter), incremental=False)
        return self

    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over ``(X, y)`` (the first call builds the network)."""
        first = not hasattr(self, "model_")
        X, y = _validate_data(self, X, y, dtype=_FLOATS, reset=first, multi_output=True,
                              y_numeric=True)
        if first:
            self._build(X.shape[1], 1 if y.ndim == 1 else y.shape[1], _dtype_of(X))
            self._y_ndim = y.ndim
        with self._backend_context():
            self._train(X, y, y, 1, incremental=True)
        return self

    def predict(self, X: Any) -> Any:
        """Predicted targets, NumPy: ``(n_samples,)`` for a 1-D ``y``, else 2-D."""
        check_is_fitted(self, "model_")
        X = _validate_data(self, X, reset=False, dtype=_FLOATS)
        out = _backend.to_numpy(self.model_.predict(X))
        return out.reshape(-1) if self._y_ndim == 1 else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def _dtype_of(X: Any) -> str:
    name = _backend.dtype_name(X.dtype)
    return "float32" if name == "float32" else "float64"


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
