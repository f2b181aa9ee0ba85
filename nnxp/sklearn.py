"""scikit-learn estimators backed by nnxp: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for :class:`sklearn.neural_network.MLPClassifier` and
:class:`~sklearn.neural_network.MLPRegressor`: the same constructor parameters with the same
defaults and meaning, the same fitted attributes (NumPy arrays and Python numbers), the same
training algorithm, plus ``backend`` and ``device`` to train on any nnxp backend (a GPU too).

"The same algorithm" means, formula for formula (``docs/sklearn.md`` lists what differs):

* weights and biases drawn from ``U(−b, b)``, ``b = sqrt(f / (fan_in + fan_out))`` with
  ``f = 6`` (``f = 2`` for the logistic activation), from ``check_random_state(random_state)``
  in scikit-learn's order, so a given ``random_state`` starts from the very same network;
* the loss: ``½ mean (o − y)²`` (regression), the half Poisson deviance with an ``exp`` output,
  the cross-entropy of a softmax output (multiclass) or of logistic outputs (two classes: one
  unit; multi-label), averaged over the samples (weighted by ``sample_weight``), plus
  ``alpha / (2 Σw) · Σ ‖W‖²`` over the weight matrices (not the biases);
* the output delta ``o − y`` (the canonical link of each loss), gradients ``(aᵀδ + αW) / Σw``;
* scikit-learn's SGD (momentum ``v ← μv − ηg``, Nesterov step ``μv − ηg``; "constant",
  "invscaling" ``η_t = η₀ / (t + 1)^power_t`` with ``t`` the samples seen, "adaptive": divide
  by 5 after ``n_iter_no_change`` epochs without progress) and Adam (Kingma & Ba 2015, with the
  bias corrections folded into the step, ``η_t = η₀ √(1 − β₂ᵗ) / (1 − β₁ᵗ)``, ``ε`` outside
  the square root of the uncorrected ``v``), or L-BFGS through ``scipy.optimize.minimize``;
* epochs over mini-batches shuffled with the same random stream, early stopping on a held-out
  ``validation_fraction`` (drawn with the same stream), ``ConvergenceWarning`` at ``max_iter``.

The arithmetic runs on the backend's arrays; a training step issues device work only (the loss
reaches the host once per epoch, the shuffled order is drawn on the host once per epoch).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

try:
    import scipy.optimize
    import scipy.sparse
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, gen_batches, shuffle
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import (
        _check_partial_fit_first_call,
        type_of_target,
        unique_labels,
    )
    from sklearn.utils.optimize import _check_optimize_result
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("nnxp.sklearn needs scikit-learn, an optional extra: pip install "
                      f"'nnxp[demo]' (or pip install scikit-learn) ({exc})") from None

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


from . import backend as _backend
from .kernels import activations as _act
from .kernels.scalars import constant

__all__ = ["MLPClassifier", "MLPRegressor"]

_STOCHASTIC = ("sgd", "adam")
_FLOATS = ("float64", "float32")


# --- the network's arithmetic: pure functions of backend arrays --------------------------------

def _hidden(name: str, z: Any, xp: Any) -> Any:
    """The hidden activation ``g(z)``."""
    if name == "relu":
        return _act.relu(z, xp=xp)
    if name == "tanh":
        return _act.tanh(z, xp=xp)
    if name == "logistic":
        return _act.sigmoid(z, xp=xp)
    return z


def _hidden_backward(name: str, delta: Any, a: Any, xp: Any) -> Any:
    """``δ · g'(z)`` computed from the activation ``a = g(z)``."""
    if name == "relu":
        return _act.relu_backward(delta, a, xp=xp)
    if name == "tanh":
        return _act.tanh_backward(delta, a, xp=xp)
    if name == "logistic":
        return _act.sigmoid_backward(delta, a, xp=xp)
    return delta


def _output(name: str, z: Any, xp: Any) -> Any:
    """The output activation: identity, exp (Poisson), logistic or softmax (over axis 1)."""
    if name == "softmax":
        return _act.softmax(z, axis=1, xp=xp)
    if name == "logistic":
        return _act.sigmoid(z, xp=xp)
    if name == "exp":
        return xp.exp(z)
    return z


def _forward(X: Any, coefs: list[Any], intercepts: list[Any], hidden: str, out: str,
             xp: Any) -> list[Any]:
    """Every layer's activation ``a₀ = X, a_{i+1} = g(a_i W_i + b_i)``, output ``out(·)`` last."""
    acts = [X]
    last = len(coefs) - 1
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        z = acts[-1] @ W + b
        acts.append(_output(out, z, xp) if i == last else _hidden(hidden, z, xp))
    return acts


def _data_loss(loss: str, y: Any, p: Any, w: Any, sw_sum: float, xp: Any) -> Any:
    """The data term of the loss as a 0-d array, averaged over samples with weights ``w``.

    squared_error: ``½ Σ_i w_i Σ_k (p_ik − y_ik)² / (Σw · K)``;
    poisson: ``Σ_i w_i Σ_k (y log(y/p) − y + p)_ik / Σw``;
    log_loss: ``−Σ_i w_i Σ_k y_ik log p_ik / Σw`` (softmax outputs);
    binary_log_loss: ``−Σ_i w_i Σ_k (y log p + (1−y) log(1−p))_ik / Σw`` (logistic outputs);
    probabilities clipped to ``[eps, 1 − eps]`` of their dtype.
    """
    if loss == "squared_error":
        d = p - y
        per = d * d * 0.5 / y.shape[1]
    elif loss == "poisson":
        ratio = xp.where(y > 0, y, constant(1.0, y, xp=xp)) / p
        per = y * xp.log(ratio) - y + p
    else:
        eps = xp.finfo(p.dtype).eps
        p = xp.minimum(xp.maximum(p, constant(eps, p, xp=xp)), constant(1.0 - eps, p, xp=xp))
        per = -(y * xp.log(p))
        if loss == "binary_log_loss":
            per = per - (1.0 - y) * xp.log(1.0 - p)
    if w is not None:
        per = per * w
    return xp.sum(per) / sw_sum


def _loss_and_grads(X: Any, y: Any, w: Any, sw_sum: float, coefs: list[Any],
                    intercepts: list[Any], hidden: str, out: str, loss: str, alpha: float,
                    xp: Any) -> tuple[Any, list[Any], list[Any]]:
    """Loss (0-d array) and its gradients ``∂L/∂W_i = (a_iᵀ δ_i + α W_i) / Σw``,
    ``∂L/∂b_i = Σ_rows δ_i / Σw``, with ``δ_last = (o − y)·w`` and
    ``δ_{i−1} = δ_i W_iᵀ · g'(z_{i−1})``."""
    acts = _forward(X, coefs, intercepts, hidden, out, xp)
    value = _data_loss(loss, y, acts[-1], w, sw_sum, xp)
    if alpha:
        value = value + (0.5 * alpha / sw_sum) * sum(xp.sum(W * W) for W in coefs)
    delta = acts[-1] - y
    if w is not None:
        delta = delta * w
    n = len(coefs)
    gW: list[Any] = [None] * n
    gb: list[Any] = [None] * n
    for i in range(n - 1, -1, -1):
        g = acts[i].T @ delta
        gW[i] = (g + alpha * coefs[i]) / sw_sum if alpha else g / sw_sum
        gb[i] = xp.sum(delta, axis=0) / sw_sum
        if i:
            delta = _hidden_backward(hidden, delta @ coefs[i].T, acts[i], xp)
    return value, gW, gb


# --- scikit-learn's stochastic update rules, on backend arrays ---------------------------------

class _SGD:
    """``v ← μ v − η g``; the step is ``v`` (or ``μ v − η g`` with Nesterov's momentum).

    ``learning_rate`` is η now; the schedule moves it once per epoch (``iteration_ends``) and
    when progress stalls (``trigger_stopping``), as scikit-learn's ``SGDOptimizer`` does.
    """

    def __init__(self, params: list[Any], lr: float, schedule: str, momentum: float,
                 nesterov: bool, power_t: float, xp: Any) -> None:
        self.learning_rate_init = float(lr)
        self.learning_rate = float(lr)
        self.lr_schedule = schedule
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.power_t = float(power_t)
        self.state = [xp.zeros_like(p) for p in params]

    def update(self, params: list[Any], grads: list[Any]) -> list[Any]:
        mu, lr = self.momentum, self.learning_rate
        self.state = [mu * v - lr * g for v, g in zip(self.state, grads)]
        if self.nesterov:
            return [p + (mu * v - lr * g) for p, v, g in zip(params, self.state, grads)]
        return [p + v for p, v in zip(params, self.state)]

    def iteration_ends(self, samples_seen: int) -> None:
        if self.lr_schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (samples_seen + 1) ** self.power_t

    def trigger_stopping(self, msg: str, verbose: Any) -> bool:
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + f" Setting learning rate to {self.learning_rate:f}")
        return False


class _Adam:
    """``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``, ``p ← p − η_t m / (√v + ε)`` with
    ``η_t = η₀ √(1−β₂ᵗ) / (1−β₁ᵗ)`` (Kingma & Ba 2015, section 2; scikit-learn's form)."""

    def __init__(self, params: list[Any], lr: float, beta_1: float, beta_2: float,
                 epsilon: float, xp: Any) -> None:
        self.learning_rate_init = float(lr)
        self.learning_rate = float(lr)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.t = 0
        self.state = [xp.zeros_like(p) for p in params] + [xp.zeros_like(p) for p in params]

    def update(self, params: list[Any], grads: list[Any], *, xp: Any) -> list[Any]:
        self.t += 1
        b1, b2, n = self.beta_1, self.beta_2, len(params)
        ms = [b1 * m + (1.0 - b1) * g for m, g in zip(self.state[:n], grads)]
        vs = [b2 * v + (1.0 - b2) * (g * g) for v, g in zip(self.state[n:], grads)]
        self.state = ms + vs
        self.learning_rate = (self.learning_rate_init * math.sqrt(1.0 - b2 ** self.t)
                              / (1.0 - b1 ** self.t))
        lr, eps = self.learning_rate, self.epsilon
        return [p - lr * m / (xp.sqrt(v) + eps) for p, m, v in zip(params, ms, vs)]

    def iteration_ends(self, samples_seen: int) -> None:
        return None

    def trigger_stopping(self, msg: str, verbose: Any) -> bool:
        if verbose:
            print(msg + " Stopping.")
        return True


# --- the estimators ---------------------------------------------------------------------------

# scikit-learn's declarations of the valid hyperparameters (checked in fit), plus nnxp's two
_CONSTRAINTS: dict[str, Any] = {
    "hidden_layer_sizes": ["array-like", Interval(numbers.Integral, 1, None, closed="left")],
    "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
    "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
    "alpha": [Interval(numbers.Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
    "learning_rate_init": [Interval(numbers.Real, 0, None, closed="neither")],
    "power_t": [Interval(numbers.Real, 0, None, closed="left")],
    "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [Interval(numbers.Real, 0, None, closed="left")],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="left")],
    "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
    "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
    "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left"),
                         Options(numbers.Real, {math.inf})],
    "max_fun": [Interval(numbers.Integral, 1, None, closed="left")],
    "backend": [str, None],
    "device": "no_validation",
}


def _stochastic_only(estimator: Any) -> bool:
    """``partial_fit`` exists for "sgd" and "adam" only (``hasattr`` is False for "lbfgs")."""
    if estimator.solver not in _STOCHASTIC:
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                             f"{estimator.solver} is not stochastic.")
    return True


class _BaseMLP(BaseEstimator):
    """Shared fitting code; see :class:`MLPClassifier` for the parameters."""

    _parameter_constraints = _CONSTRAINTS

    loss: str

    def __init__(self, hidden_layer_sizes: Any, activation: str, *, solver: str, alpha: float,
                 batch_size: Any, learning_rate: str, learning_rate_init: float, power_t: float,
                 max_iter: int, shuffle: bool, random_state: Any, tol: float, verbose: bool,
                 warm_start: bool, momentum: float, nesterovs_momentum: bool,
                 early_stopping: bool, validation_fraction: float, beta_1: float, beta_2: float,
                 epsilon: float, n_iter_no_change: int, max_fun: int, backend: str | None,
                 device: Any) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.device = device

    # --- the backend ------------------------------------------------------------------------

    def _namespace(self) -> tuple[Any, Any]:
        """``(xp, device)`` to train and predict on: ``backend``/``device``, else the active."""
        info = _backend.get_backend()
        if self.backend is None and self.device is None:
            return info.xp, info.device
        with _backend.use_backend(self.backend or info.xp, self.device):
            now = _backend.get_backend()
        return now.xp, now.device

    def _to_device(self, X: Any, xp: Any, device: Any) -> Any:
        """Host data onto the backend; a sparse matrix stays sparse on NumPy (``X @ W`` works)."""
        if scipy.sparse.issparse(X):
            if _backend.host_namespace() is xp or getattr(xp, "__name__", "").endswith("numpy"):
                return X
            X = X.toarray()
        return _backend.asarray(X, xp=xp, device=device)

    # --- fitting ----------------------------------------------------------------------------

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> Any:
        raise NotImplementedError

    def _initialize(self, y: Any, layer_units: list[int], dtype: Any) -> None:
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = int(y.shape[1])
        self.n_layers_ = len(layer_units)
        if not isinstance(self, ClassifierMixin):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_: list[Any] = []
        self.intercepts_: list[Any] = []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = math.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out))
                               .astype(dtype, copy=False))
            self.intercepts_.append(self._random_state.uniform(-bound, bound, fan_out)
                                    .astype(dtype, copy=False))
        if self.solver in _STOCHASTIC:
            self.loss_curve_: list[float] = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_: list[float] | None = []
                self.best_validation_score_: float | None = -math.inf
                self.best_loss_: float | None = None
            else:
                self.best_loss_ = math.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Any:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(int(s) <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = int(y.shape[1])
        layer_units = [X.shape[1], *(int(s) for s in sizes), self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, X.dtype)
        if self.solver in _STOCHASTIC:
            self._fit_stochastic(X, y, sample_weight, incremental)
        else:
            self._fit_lbfgs(X, y, sample_weight)
        hx = _backend.host_namespace()
        if not all(bool(hx.all(hx.isfinite(p))) for p in [*self.coefs_, *self.intercepts_]):
            raise ValueError("Solver produced non-finite parameter weights. The input data may"
                             " contain large values and need to be preprocessed.")
        return self

    def _device_params(self, xp: Any, device: Any) -> tuple[list[Any], list[Any]]:
        return ([_backend.asarray(c, xp=xp, device=device) for c in self.coefs_],
                [_backend.asarray(b, xp=xp, device=device) for b in self.intercepts_])

    def _set_host_params(self, coefs: list[Any], intercepts: list[Any]) -> None:
        self.coefs_ = [_backend.to_numpy(c) for c in coefs]
        self.intercepts_ = [_backend.to_numpy(b) for b in intercepts]

    def _loss_name(self) -> str:
        if self.loss == "log_loss" and self.out_activation_ == "logistic":
            return "binary_log_loss"
        return self.loss

    def _unpack(self, packed: Any, xp: Any, device: Any, dtype: Any) -> tuple[list[Any],
                                                                             list[Any]]:
        """A host vector ``[W₀.ravel(), W₁.ravel(), ..., b₀, b₁, ...]`` as device arrays shaped
        like ``coefs_`` and ``intercepts_`` (scikit-learn's packing order)."""
        hx = _backend.host_namespace()
        coefs, inter, start = [], [], 0
        for W in self.coefs_:
            stop = start + W.shape[0] * W.shape[1]
            coefs.append(_backend.asarray(hx.reshape(packed[start:stop], W.shape), dtype=dtype,
                                          xp=xp, device=device))
            start = stop
        for b in self.intercepts_:
            inter.append(_backend.asarray(packed[start:start + b.shape[0]], dtype=dtype, xp=xp,
                                          device=device))
            start += b.shape[0]
        return coefs, inter

    def _loss_grad_lbfgs(self, packed: Any, X: Any, y: Any, sample_weight: Any = None,
                         *workspace: Any) -> tuple[float, Any]:
        """The L-BFGS objective: the loss and its packed gradient (host) at ``packed``.

        ``X``, ``y`` (binarised labels or targets, 2-D) and ``sample_weight`` may be host or
        device arrays; ``workspace`` is accepted for scikit-learn's signature (its preallocated
        buffers) and unused.
        """
        xp, device = self._namespace()
        Xd = self._to_device(X, xp, device)
        dtype = self.coefs_[0].dtype
        yd = _backend.asarray(y, dtype=dtype, xp=xp, device=device)
        if yd.ndim == 1:
            yd = xp.reshape(yd, (-1, 1))
        wd = None if sample_weight is None else xp.reshape(
            _backend.asarray(sample_weight, dtype=dtype, xp=xp, device=device), (-1, 1))
        sw_sum = float(X.shape[0]) if wd is None else _backend.to_float(xp.sum(wd))
        coefs, inter = self._unpack(packed, xp, device, dtype)
        value, gW, gb = _loss_and_grads(Xd, yd, wd, sw_sum, coefs, inter, self.activation,
                                        self.out_activation_, self._loss_name(),
                                        float(self.alpha), xp)
        hx = _backend.host_namespace()
        grad = hx.concat([hx.reshape(_backend.to_numpy(g), (-1,)) for g in [*gW, *gb]])
        return _backend.to_float(value), grad

    def _fit_lbfgs(self, X: Any, y: Any, sample_weight: Any) -> None:
        """Full-batch L-BFGS-B (scipy) on the packed parameters; loss and gradient on the
        backend, the packed vector on the host (one transfer each way per evaluation)."""
        xp, device = self._namespace()
        dtype = self.coefs_[0].dtype
        Xd = self._to_device(X, xp, device)
        yd = _backend.asarray(y, dtype=dtype, xp=xp, device=device)
        hx = _backend.host_namespace()
        packed = hx.concat([hx.reshape(p, (-1,)) for p in [*self.coefs_, *self.intercepts_]])
        result = scipy.optimize.minimize(
            self._loss_grad_lbfgs, packed, args=(Xd, yd, sample_weight), method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = float(result.fun)
        self._set_host_params(*self._unpack(result.x, xp, device, dtype))

    def _make_optimizer(self, params: list[Any], xp: Any) -> Any:
        if self.solver == "sgd":
            return _SGD(params, self.learning_rate_init, self.learning_rate, self.momentum,
                        self.nesterovs_momentum, self.power_t, xp)
        return _Adam(params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon,
                     xp)

    def _fit_stochastic(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> None:
        xp, device = self._namespace()
        coefs, inter = self._device_params(xp, device)
        params = coefs + inter
        n_layers = len(coefs)
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._make_optimizer(params, xp)
        opt = self._optimizer
        opt.state = [_backend.asarray(s, xp=xp, device=device) for s in opt.state]
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_val = y_val = sw_val = None
        if early_stopping:
            stratify = y if isinstance(self, ClassifierMixin) and self.n_outputs_ == 1 else None
            arrays = [X, y] if sample_weight is None else [X, y, sample_weight]
            split = train_test_split(*arrays, random_state=self._random_state,
                                     test_size=self.validation_fraction, stratify=stratify)
            X, X_val, y, y_val = split[:4]
            if sample_weight is not None:
                sample_weight, sw_val = split[4], split[5]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            if isinstance(self, ClassifierMixin):
                y_val = self._label_binarizer.inverse_transform(y_val)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped", stacklevel=3)
            batch_size = max(1, min(int(self.batch_size), n))
        Xd = self._to_device(X, xp, device)
        dtype = coefs[0].dtype
        yd = _backend.asarray(y, dtype=dtype, xp=xp, device=device)
        wd = None if sample_weight is None else _backend.asarray(
            sample_weight.reshape(-1, 1), dtype=dtype, xp=xp, device=device)
        sparse = scipy.sparse.issparse(Xd)
        hidden, out, loss_name = self.activation, self.out_activation_, self._loss_name()
        alpha = float(self.alpha)
        hx = _backend.host_namespace()
        sample_idx = hx.arange(n)
        best = (coefs, inter)
        try:
            self.n_iter_ = 0
            for _ in range(int(self.max_iter)):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                    idx = sample_idx if sparse else _backend.asarray(sample_idx, xp=xp,
                                                                     device=device)
                total = xp.zeros((), dtype=dtype, device=device)
                for batch in gen_batches(n, batch_size):
                    if self.shuffle:
                        rows = idx[batch]
                        Xb = Xd[rows] if sparse else xp.take(Xd, rows, axis=0)
                        yb = xp.take(yd, rows, axis=0)
                        wb = None if wd is None else xp.take(wd, rows, axis=0)
                    else:
                        Xb, yb = Xd[batch], yd[batch, :]
                        wb = None if wd is None else wd[batch, :]
                    sw_sum = float(batch.stop - batch.start) if wb is None else xp.sum(wb)
                    value, gW, gb = _loss_and_grads(Xb, yb, wb, sw_sum, params[:n_layers],
                                                    params[n_layers:], hidden, out, loss_name,
                                                    alpha, xp)
                    total = total + value * float(batch.stop - batch.start)
                    params = (opt.update(params, gW + gb, xp=xp) if isinstance(opt, _Adam)
                              else opt.update(params, gW + gb))
                self.n_iter_ += 1
                self.loss_ = _backend.to_float(total) / n
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                if early_stopping:
                    score = self._validation_score(X_val, y_val, sw_val, params[:n_layers],
                                                   params[n_layers:], xp, device)
                    assert self.validation_scores_ is not None
                    self.validation_scores_.append(score)
                    if self.verbose:
                        print(f"Validation score: {score:f}")
                    best_score = self.best_validation_score_
                    assert best_score is not None
                    self._no_improvement_count = (
                        self._no_improvement_count + 1 if score < best_score + self.tol else 0)
                    if score > best_score:
                        self.best_validation_score_ = score
                        best = (params[:n_layers], params[n_layers:])
                else:
                    last, best_loss = self.loss_curve_[-1], self.best_loss_
                    assert best_loss is not None
                    self._no_improvement_count = (
                        self._no_improvement_count + 1 if last > best_loss - self.tol else 0)
                    self.best_loss_ = min(best_loss, last)
                opt.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if opt.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning, stacklevel=3)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if early_stopping:
            self._set_host_params(*best)
        else:
            self._set_host_params(params[:n_layers], params[n_layers:])
        opt.state = [_backend.to_numpy(s) for s in opt.state]  # host between calls: pickles

    def _validation_score(self, X: Any, y: Any, sample_weight: Any, coefs: list[Any],
                          inter: list[Any], xp: Any, device: Any) -> float:
        out = _forward(self._to_device(X, xp, device), coefs, inter, self.activation,
                       self.out_activation_, xp)[-1]
        pred = _backend.to_numpy(out)
        hx = _backend.host_namespace()
        if not bool(hx.all(hx.isfinite(pred))):
            return math.nan
        return float(self._score_predictions(y, pred, sample_weight))

    def _score_predictions(self, y: Any, raw: Any, sample_weight: Any) -> float:
        raise NotImplementedError

    def _forward_host(self, X: Any) -> Any:
        """The output layer's activation for validated ``X``, as NumPy."""
        xp, device = self._namespace()
        coefs, inter = self._device_params(xp, device)
        out = _forward(self._to_device(X, xp, device), coefs, inter, self.activation,
                       self.out_activation_, xp)[-1]
        return _backend.to_numpy(out)

    def _forward_pass_fast(self, X: Any, check_input: bool = True) -> Any:
        if check_input:
            X = _validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        return self._forward_host(X)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        """Fit the network to ``X`` (n_samples, n_features; dense or sparse) and ``y``."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


_COMMON_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : array-like of int, default (100,)
        Width of each hidden layer.
    activation : {"identity", "logistic", "tanh", "relu"}, default "relu"
        Activation of the hidden layers.
    solver : {"lbfgs", "sgd", "adam"}, default "adam"
        scikit-learn's L-BFGS (scipy), SGD with momentum, or Adam (see the module docstring).
    alpha : float, default 1e-4
        L2 penalty ``alpha / (2 Σw) · Σ ‖W‖²`` on the weights (not the biases).
    batch_size : int or "auto", default "auto"
        ``min(200, n_samples)`` for "auto"; larger ints are clipped with a warning.
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        SGD's schedule: fixed; ``η₀ / (t + 1)^power_t`` (t: samples seen); divided by 5 when
        ``n_iter_no_change`` epochs bring no progress (stops below 1e-6).
    learning_rate_init : float, default 1e-3
    power_t : float, default 0.5
    max_iter : int, default 200
        Epochs (sgd, adam) or iterations (lbfgs).
    shuffle : bool, default True
    random_state : int, RandomState or None
        Initial weights, shuffling, validation split: scikit-learn's draws, in its order.
    tol : float, default 1e-4
    verbose : bool, default False
    warm_start : bool, default False
        Continue from the previous fit's weights.
    momentum : float, default 0.9
    nesterovs_momentum : bool, default True
    early_stopping : bool, default False
        Hold out ``validation_fraction`` (stratified for a single-output classifier), stop when
        its score (accuracy or R²) gains less than ``tol`` for ``n_iter_no_change`` epochs, and
        keep the best epoch's weights.
    validation_fraction : float, default 0.1
    beta_1, beta_2, epsilon : float, default 0.9, 0.999, 1e-8
        Adam's.
    n_iter_no_change : int, default 10
    max_fun : int, default 15000
        L-BFGS's limit on loss evaluations.
    backend : str or None
        nnxp backend to train on ("numpy", "torch", "torch:cuda", "cupy", ...); None: the
        active one.
    device : any, default None
        The device on that backend (None: its default).

    Attributes
    ----------
    coefs_, intercepts_ : list of ndarray
        Weights ``(fan_in, fan_out)`` and biases per layer, NumPy, in the input's dtype.
    loss_, loss_curve_, best_loss_, validation_scores_, best_validation_score_
    n_iter_, t_, n_layers_, n_outputs_, out_activation_, n_features_in_
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's, trained by nnxp on any backend.

    Softmax output with cross-entropy for several classes; one logistic unit for two classes;
    one logistic unit per label for multi-label targets (an indicator matrix).
    """

    __doc__ = (__doc__ or "") + _COMMON_DOC

    loss = "log_loss"  # a class constant here; MLPRegressor's is a parameter

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: Any = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: str | None = None, device: Any = None) -> None:
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend,
            device=device)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> Any:
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              dtype=_FLOATS, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same "
                                     "classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif any(c not in set(self.classes_) for c in classes):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        return X, self._label_binarizer.transform(y).astype(bool)

    def _score_predictions(self, y: Any, raw: Any, sample_weight: Any) -> float:
        return float(accuracy_score(y, self._labels(raw), sample_weight=sample_weight))

    def _labels(self, raw: Any) -> Any:
        if self.n_outputs_ == 1:
            raw = raw.ravel()
        return self._label_binarizer.inverse_transform(raw)

    def predict(self, X: Any) -> Any:
        """The predicted class labels (NumPy), or an indicator matrix for multi-label ``y``."""
        check_is_fitted(self)
        return self._labels(self._forward_pass_fast(X))

    def _predict(self, X: Any, check_input: bool = True) -> Any:
        return self._labels(self._forward_pass_fast(X, check_input=check_input))

    @available_if(_stochastic_only)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None,
                    classes: Any = None) -> MLPClassifier:
        """One epoch over ``(X, y)``; ``classes`` (every label) is required on the first call."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n_samples, n_classes)``, NumPy, columns in ``classes_`` order."""
        check_is_fitted(self)
        p = self._forward_pass_fast(X)
        if self.n_outputs_ == 1:
            p = p.ravel()
            hx = _backend.host_namespace()
            return hx.stack([1 - p, p], axis=1)
        return p

    def predict_log_proba(self, X: Any) -> Any:
        """``log(predict_proba(X))``."""
        hx = _backend.host_namespace()
        return hx.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's, trained by nnxp on any backend.

    Linear output with half the squared error (``loss="squared_error"``), or an ``exp`` output
    with half the Poisson deviance (``loss="poisson"``); multi-output targets are supported.
    """

    __doc__ = (__doc__ or "") + _COMMON_DOC

    _parameter_constraints = {**_CONSTRAINTS, "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss: str = "squared_error", hidden_layer_sizes: Any = (100,),
                 activation: str = "relu", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: str | None = None, device: Any = None) -> None:
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend,
            device=device)
        self.loss = loss

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> Any:
        X, y = _validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                              y_numeric=True, dtype=_FLOATS, reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _score_predictions(self, y: Any, raw: Any, sample_weight: Any) -> float:
        pred = raw.ravel() if raw.shape[1] == 1 else raw
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def predict(self, X: Any) -> Any:
        """Predicted targets (NumPy): ``(n_samples,)`` for one output, else 2-D."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X: Any, check_input: bool = True) -> Any:
        out = self._forward_pass_fast(X, check_input=check_input)
        return out.ravel() if out.shape[1] == 1 else out

    @available_if(_stochastic_only)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over ``(X, y)`` (the first call builds the network)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)
